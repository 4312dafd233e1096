package l7

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"sluice/balancer"
)

// setCacheRecheck sets cacheRecheck for one test.
func setCacheRecheck(t *testing.T, d time.Duration) {
	old := cacheRecheck.Swap(int64(d))
	t.Cleanup(func() { cacheRecheck.Store(old) })
}

// The static file cache serves what the disk holds: a changed, replaced or
// removed file is seen on the next request once cacheRecheck has passed
// (here at once), and FileServer's semantics (Last-Modified, conditional
// requests, ranges, Content-Type) hold on hits.
func TestStaticCache(t *testing.T) {
	checkLeaks(t)
	setCacheRecheck(t, 0)
	web := t.TempDir()
	file := filepath.Join(web, "app.js")
	write := func(body string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(file, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	write("console.log(1)", t0)
	big := strings.Repeat("x", maxCachedFile+1)
	if err := os.WriteFile(filepath.Join(web, "big.js"), []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Locations: []Location{
		{Path: "/static/", Root: web},
	}})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	get := func(path string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", l.url(path), nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	for i := range 3 { // a miss, then hits
		resp, body := get("/static/app.js")
		if resp.StatusCode != 200 || body != "console.log(1)" ||
			resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8" ||
			resp.Header.Get("Last-Modified") != t0.Format(http.TimeFormat) {
			t.Fatalf("get %d: %d %q %v", i, resp.StatusCode, body, resp.Header)
		}
	}
	if resp, body := get("/static/app.js", "Range", "bytes=8-10"); resp.StatusCode != 206 || body != "log" {
		t.Fatalf("range: %d %q", resp.StatusCode, body)
	}
	if resp, _ := get("/static/app.js", "If-Modified-Since", t0.Format(http.TimeFormat)); resp.StatusCode != 304 {
		t.Fatalf("if-modified-since: %d", resp.StatusCode)
	}
	// Same size, new modification time.
	t1 := t0.Add(time.Hour)
	write("console.log(2)", t1)
	if resp, body := get("/static/app.js"); body != "console.log(2)" || resp.Header.Get("Last-Modified") != t1.Format(http.TimeFormat) {
		t.Fatalf("after a change: %q %v", body, resp.Header)
	}
	// Replaced by another file (rename over it) with the same size and time.
	tmp := filepath.Join(web, "new.tmp")
	if err := os.WriteFile(tmp, []byte("console.log(3)"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, t1, t1); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	if _, body := get("/static/app.js"); body != "console.log(3)" {
		t.Fatalf("after a rename: %q", body)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if resp, _ := get("/static/app.js"); resp.StatusCode != 404 {
		t.Fatalf("after a remove: %d", resp.StatusCode)
	}
	for range 2 { // over the size limit: from disk each time (and over maxHeld)
		if resp, body := get("/static/big.js"); resp.StatusCode != 200 || body != big {
			t.Fatalf("big: %d, %d bytes", resp.StatusCode, len(body))
		}
	}
	// A response held whole (vconn.hold) arrives whole, twice on one conn.
	mid := strings.Repeat("0123456789abcdef", 20<<10/16)
	if err := os.WriteFile(filepath.Join(web, "mid.js"), []byte(mid), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if resp, body := get("/static/mid.js"); resp.StatusCode != 200 || body != mid {
			t.Fatalf("mid: %d, %d bytes", resp.StatusCode, len(body))
		}
	}
}

// The cache keeps within its limits and holds only regular files.
// Within cacheRecheck a cached file is served without a look at the disk:
// a change made meanwhile is seen once it has passed, a removal too.
func TestStaticCacheRecheck(t *testing.T) {
	checkLeaks(t)
	setCacheRecheck(t, time.Hour)
	web := t.TempDir()
	file := filepath.Join(web, "app.js")
	if err := os.WriteFile(file, []byte("console.log(1)"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Locations: []Location{
		{Path: "/static/", Root: web},
	}})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	get := func() (int, string) {
		t.Helper()
		resp, err := hc.Get(l.url("/static/app.js"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != 200 || body != "console.log(1)" {
		t.Fatalf("first: %d %q", code, body)
	}
	t1 := time.Now().Add(time.Hour)
	if err := os.WriteFile(file, []byte("console.log(22)"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(file, t1, t1); err != nil {
		t.Fatal(err)
	}
	if code, body := get(); code != 200 || body != "console.log(1)" {
		t.Fatalf("within the recheck time: %d %q, want the cached copy", code, body)
	}
	setCacheRecheck(t, 0)
	if code, body := get(); code != 200 || body != "console.log(22)" {
		t.Fatalf("after the recheck time: %d %q, want the file on disk", code, body)
	}
	setCacheRecheck(t, time.Hour)
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if code, body := get(); code != 200 || body != "console.log(22)" {
		t.Fatalf("removed, within the recheck time: %d %q, want the cached copy", code, body)
	}
	setCacheRecheck(t, 0)
	if code, _ := get(); code != 404 {
		t.Fatalf("removed, after the recheck time: %d, want 404", code)
	}
}

func TestFileCacheLimits(t *testing.T) {
	web := t.TempDir()
	if err := os.WriteFile(filepath.Join(web, "a"), []byte("aaaa"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(web, "d"), 0o755)
	c := &fileCache{}
	dir := http.Dir(web)
	open := func(name string) http.File {
		t.Helper()
		f, err := dir.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	fa := open("/a")
	st, _ := fa.Stat()
	if m := c.fill(dir, "/a", fa, st); m == nil || c.bytes != 4 {
		t.Fatalf("fill: %v, %d bytes", m, c.bytes)
	}
	if c.open("/a") == nil {
		t.Fatal("no hit")
	}
	fd := open("/d")
	st, _ = fd.Stat()
	if c.fill(dir, "/d", fd, st) != nil {
		t.Fatal("a directory was cached")
	}
	c.bytes = maxCacheBytes - 3
	fa = open("/a")
	st, _ = fa.Stat()
	delete(c.files, "/a")
	if c.fill(dir, "/a", fa, st) != nil || c.files["/a"] != nil {
		t.Fatal("cached past maxCacheBytes")
	}
}

// io.Copy into a statusWriter (http.ServeContent does) records 200 and
// reaches the ResponseWriter, with or without its ReadFrom.
func TestStatusWriterReadFrom(t *testing.T) {
	rec := httptest.NewRecorder()
	sw := &statusWriter{ResponseWriter: rec}
	if n, err := io.Copy(sw, strings.NewReader("abc")); n != 3 || err != nil {
		t.Fatalf("copy: %d %v", n, err)
	}
	if sw.status != http.StatusOK || rec.Body.String() != "abc" {
		t.Fatalf("status %d, body %q", sw.status, rec.Body.String())
	}
}

// A location's headers reach its 2xx and 3xx responses (static, proxied,
// redirect; 304 included) and replace a backend's field, but not errors
// nor a WebSocket's 101.
func TestLocationHeaders(t *testing.T) {
	checkLeaks(t)
	web := t.TempDir()
	if err := os.WriteFile(filepath.Join(web, "app.js"), []byte("console.log(1)"), 0o644); err != nil {
		t.Fatal(err)
	}
	be := startWSBackend(t, nil)
	p := pool(t, balancer.ProxyNone, be.addr)
	cc := map[string]string{"cache-control": "max-age=3600", "X-Frame-Options": "DENY"}
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Locations: []Location{
		{Path: "/static/", Root: web, Headers: cc},
		{Path: "/api/", Pool: p, Headers: cc},
		{Path: "/ws", Pool: p, Headers: cc},
		{Path: "/old", Redirect: "https://example.com/", Headers: cc},
		{Path: "/bare/", Root: web},
	}})
	hc := rawClient(l)
	defer hc.CloseIdleConnections()
	for _, tc := range []struct {
		path, inm string
		status    int
		want      bool
	}{
		{"/static/app.js", "", 200, true},
		{"/static/nope.js", "", 404, false},
		{"/api/x", "", 200, true},
		{"/old", "", 302, true},
		{"/bare/app.js", "", 200, false},
	} {
		resp, _ := rawGet(t, hc, "GET", l.url(tc.path))
		got := resp.Header.Get("Cache-Control") == "max-age=3600" && resp.Header.Get("X-Frame-Options") == "DENY"
		if resp.StatusCode != tc.status || got != tc.want || len(resp.Header["Cache-Control"]) > 1 {
			t.Fatalf("%s: %d %v", tc.path, resp.StatusCode, resp.Header)
		}
		if tc.path == "/static/app.js" {
			r2, _ := rawGet(t, hc, "GET", l.url(tc.path), "If-None-Match", resp.Header.Get("Etag"))
			if r2.StatusCode != 304 || r2.Header.Get("Cache-Control") != "max-age=3600" {
				t.Fatalf("304: %d %v", r2.StatusCode, r2.Header)
			}
		}
	}
	// The backend's own Cache-Control is replaced; its 502 gets nothing.
	dead := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Locations: []Location{
		{Path: "/", Pool: pool(t, balancer.ProxyNone, "127.0.0.1:1"), Headers: cc},
	}})
	dc := rawClient(dead)
	defer dc.CloseIdleConnections()
	if resp, _ := rawGet(t, dc, "GET", dead.url("/x")); resp.StatusCode < 500 || resp.Header.Get("Cache-Control") != "" {
		t.Fatalf("error: %d %v", resp.StatusCode, resp.Header)
	}
	// The 101 of an upgrade carries none.
	c := l.dial(t)
	io.WriteString(c, upgradeHead(""))
	resp, _ := http.ReadResponse(bufio.NewReader(c), nil)
	if resp == nil || resp.StatusCode != 101 || resp.Header.Get("Cache-Control") != "" {
		t.Fatalf("upgrade: %v", resp)
	}
	if _, err := NewRoute(RouteConfig{Name: "x", Locations: []Location{{Path: "/", Root: web, Headers: map[string]string{"X-A": "a\nb"}}}}); err == nil {
		t.Fatal("a header value with LF accepted")
	}
}

// fallback serves a single-page app's index.html for paths with no file,
// as nginx's try_files $uri $uri/ /index.html does; files and directories
// with an index are served as they are.
func TestStaticFallback(t *testing.T) {
	checkLeaks(t)
	web := t.TempDir()
	for name, body := range map[string]string{"index.html": "<h1>spa</h1>", "app.js": "console.log(1)", "docs/index.html": "docs", "empty/x.txt": "x", ".env": "SECRET"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(web, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(web, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Locations: []Location{
		{Path: "/", Root: web, Fallback: "index.html"},
		{Path: "/nofb/", Root: web},
	}})
	hc := rawClient(l)
	defer hc.CloseIdleConnections()
	for path, want := range map[string]string{
		"/": "<h1>spa</h1>", "/app.js": "console.log(1)", "/rooms/7/lobby": "<h1>spa</h1>", "/missing.js": "<h1>spa</h1>",
		"/docs/": "docs", "/empty/": "<h1>spa</h1>", "/.env": "<h1>spa</h1>", "/app.js/x": "<h1>spa</h1>",
	} {
		resp, body := rawGet(t, hc, "GET", l.url(path))
		if resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, body)
		}
		if want == "<h1>spa</h1>" && resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Fatalf("%s: %v", path, resp.Header)
		}
	}
	if resp, _ := rawGet(t, hc, "GET", l.url("/nofb/rooms/7")); resp.StatusCode != 404 {
		t.Fatalf("no fallback: %d", resp.StatusCode)
	}
	if resp, body := rawGet(t, hc, "HEAD", l.url("/rooms/7")); resp.StatusCode != 200 || len(body) != 0 {
		t.Fatalf("head: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("POST", l.url("/rooms/7"), strings.NewReader("x"))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("post: %d %v", resp.StatusCode, resp.Header)
	}
	if _, err := NewRoute(RouteConfig{Name: "x", Locations: []Location{{Path: "/", Root: web, Fallback: "../secret"}}}); err == nil {
		t.Fatal("fallback with .. accepted")
	}
}

// A location "/static/" answers "/static" with 301 to "/static/" (query
// kept) unless a location "/static" exists; a directory without its slash
// is redirected the same way, as a relative reference.
func TestSlashRedirect(t *testing.T) {
	checkLeaks(t)
	web := t.TempDir()
	if err := os.MkdirAll(filepath.Join(web, "img"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(web, "img", "index.html"), []byte("img"), 0o644); err != nil {
		t.Fatal(err)
	}
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Locations: []Location{
		{Path: "/", Pool: pool(t, balancer.ProxyNone, be.addr)},
		{Path: "/static/", Root: web},
		{Path: "/api/", Pool: pool(t, balancer.ProxyNone, be.addr)},
		{Path: "/api", Pool: pool(t, balancer.ProxyNone, be.addr)},
	}})
	hc := rawClient(l)
	defer hc.CloseIdleConnections()
	for path, loc := range map[string]string{
		"/static":           "./static/",
		"/static?v=2&x=%20": "./static/?v=2&x=%20",
		"/static/img?v=1":   "./img/?v=1",
	} {
		resp, _ := rawGet(t, hc, "GET", l.url(path))
		if resp.StatusCode != 301 || resp.Header.Get("Location") != loc {
			t.Fatalf("%s: %d %v", path, resp.StatusCode, resp.Header)
		}
		u, _ := resp.Request.URL.Parse(loc)
		if r2, body := rawGet(t, hc, "GET", u.String()); u.Path == "/static/img/" && (r2.StatusCode != 200 || string(body) != "img") {
			t.Fatalf("%s → %s: %d %q", path, u, r2.StatusCode, body)
		}
	}
	if resp, body := rawGet(t, hc, "GET", l.url("/api")); resp.StatusCode != 200 || !strings.HasPrefix(string(body), "plain /api from") {
		t.Fatalf("/api: %d %q", resp.StatusCode, body)
	}
	if resp, _ := rawGet(t, hc, "GET", l.url("/stat")); resp.StatusCode != 200 {
		t.Fatalf("/stat: %d", resp.StatusCode)
	}
}

// redirect_https keeps a configured port (and drops the request's).
func TestRedirectHTTPSPort(t *testing.T) {
	parallelCheckLeaks(t)
	for port, want := range map[int]string{0: "https://game.example.com/play?room=7", 443: "https://game.example.com/play?room=7", 8443: "https://game.example.com:8443/play?room=7"} {
		l := startLB(t, RouteConfig{Name: "plain", RedirectHTTPS: true, RedirectHTTPSPort: port})
		c := l.dial(t)
		io.WriteString(c, "GET /play?room=7 HTTP/1.1\r\nHost: game.example.com:8080\r\nConnection: close\r\n\r\n")
		resp, _ := readResponse(t, bufio.NewReader(c))
		if resp.StatusCode != 308 || resp.Header.Get("Location") != want {
			t.Fatalf("port %d: %d %v", port, resp.StatusCode, resp.Header)
		}
	}
	l := startLB(t, RouteConfig{Name: "plain", RedirectHTTPS: true, RedirectHTTPSPort: 8443})
	c := l.dial(t)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n")
	if resp, _ := readResponse(t, bufio.NewReader(c)); resp.Header.Get("Location") != "https://[::1]:8443/" {
		t.Fatalf("ipv6: %v", resp.Header)
	}
}

// BenchmarkStatic: keep-alive GETs of a 20 KiB static file over loopback
// (cleartext: the TLS cost is the same either way), as issue 10's
// http-static row: /20k.bin (application/octet-stream: never compressed),
// /20k.js with gzip off and on (a cached gzipped copy), by a Go client that
// sends Accept-Encoding: gzip.
func BenchmarkStatic(b *testing.B) {
	web := b.TempDir()
	js := make([]byte, 0, 20<<10)
	for i := 0; len(js) < 20<<10; i++ {
		js = append(js, "var level"+strconv.Itoa(i)+" = ["+strconv.Itoa(i*7919%1000)+", 2, 3];\n"...)
	}
	bin := make([]byte, 20<<10)
	for i := range bin {
		bin[i] = byte(i * 2654435761 >> 13)
	}
	if err := os.WriteFile(filepath.Join(web, "20k.bin"), bin, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(web, "20k.js"), js[:20<<10], 0o644); err != nil {
		b.Fatal(err)
	}
	route, err := NewRoute(RouteConfig{Name: "bench", Locations: []Location{
		{Path: "/static/", Root: web},
		{Path: "/gz/", Root: web, Gzip: true},
	}})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				route.ServeConn(context.Background(), c.(*net.TCPConn), nil, time.Now())
			}()
		}
	}()
	defer func() {
		ln.Close()
		route.Close()
		wg.Wait()
	}()
	for _, path := range []string{"/static/20k.bin", "/gz/20k.bin", "/static/20k.js", "/gz/20k.js"} {
		b.Run(strings.ReplaceAll(path[1:], "/", "_"), func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr}
			url := "http://" + ln.Addr().String() + path
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 32<<10)
				for pb.Next() {
					resp, err := hc.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					n, _ := io.ReadFull(resp.Body, buf)
					resp.Body.Close()
					if resp.StatusCode != 200 || n != 20<<10 {
						b.Errorf("%d, %d bytes", resp.StatusCode, n)
						return
					}
				}
			})
		})
	}
}

// BenchmarkStaticHandler: the static handler alone, on one goroutine, for
// the files of BenchmarkStatic (a cached 20 KiB file): what a request
// costs sluice's CPU without the client and the sockets.
func BenchmarkStaticHandler(b *testing.B) {
	web := b.TempDir()
	js := make([]byte, 0, 20<<10)
	for i := 0; len(js) < 20<<10; i++ {
		js = append(js, "var level"+strconv.Itoa(i)+" = ["+strconv.Itoa(i*7919%1000)+", 2, 3];\n"...)
	}
	bin := make([]byte, 20<<10)
	for i := range bin {
		bin[i] = byte(i * 2654435761 >> 13)
	}
	if err := os.WriteFile(filepath.Join(web, "20k.bin"), bin, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(web, "20k.js"), js[:20<<10], 0o644); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name, file string
		gzip       bool
		hdr        []string
	}{
		{"bin", "20k.bin", false, nil},
		{"bin_gzipon", "20k.bin", true, []string{"gzip"}},
		{"js", "20k.js", false, []string{"gzip"}},
		{"js_gzipon_identity", "20k.js", true, nil},
		{"js_gzipon_gzip", "20k.js", true, []string{"gzip, deflate, br"}},
		{"js_gzipon_304", "20k.js", true, []string{"gzip, deflate, br"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := benchStatic("/static/", web, tc.gzip)
			req := httptest.NewRequest("GET", "/static/"+tc.file, nil)
			if tc.hdr != nil {
				req.Header["Accept-Encoding"] = tc.hdr
			}
			w := &discardWriter{h: http.Header{}}
			h.ServeHTTP(w, req)
			if tc.name == "js_gzipon_304" {
				req.Header.Set("If-None-Match", w.h.Get("Etag"))
			}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				w.code = 0
				h.ServeHTTP(w, req)
				if w.code != 200 && w.code != 304 {
					b.Fatal(w.code)
				}
			}
		})
	}
}

func benchStatic(prefix, root string, gzip bool) http.Handler {
	return newStatic(prefix, root, "", gzip)
}

// discardWriter is a ResponseWriter that keeps the head and drops the
// body, like net/http's with a ReadFrom.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}
func (w *discardWriter) Write(b []byte) (int, error) {
	w.WriteHeader(200)
	return len(b), nil
}
func (w *discardWriter) ReadFrom(r io.Reader) (int64, error) {
	w.WriteHeader(200)
	return io.Copy(io.Discard, r)
}
