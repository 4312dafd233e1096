package l7

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"sluice/balancer"
)

func TestAcceptEncoding(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header []string
		gz, br int
	}{
		{"none", nil, 0, 0},
		{"gzip", []string{"gzip"}, 1000, 0},
		{"browser", []string{"gzip, deflate, br, zstd"}, 1000, 1000},
		{"case and spaces", []string{" GZip ;Q=0.5 ,\tBR"}, 500, 1000},
		{"x-gzip", []string{"x-gzip"}, 1000, 0},
		{"refused", []string{"gzip;q=0, br;q=0.000"}, 0, 0},
		{"star", []string{"*;q=0.3"}, 300, 300},
		{"star below a listed one", []string{"*", "gzip;q=0"}, 0, 1000},
		{"two lines", []string{"identity", "br;q=0.9"}, 0, 900},
		{"best of repeats", []string{"gzip;q=0.1, gzip;q=0.7"}, 700, 0},
		{"bad q", []string{"gzip;q=2, br;q=0.5x, *;q=1.0001"}, 0, 0},
		{"q=1.000", []string{"gzip;q=1.000"}, 1000, 0},
		{"other params", []string{"gzip;level=9;q=0.25"}, 250, 0},
		{"empty elements", []string{",,gzip,,"}, 1000, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if gz, br := acceptEncoding(tc.header); gz != tc.gz || br != tc.br {
				t.Fatalf("%q: gzip %d br %d, want %d %d", tc.header, gz, br, tc.gz, tc.br)
			}
		})
	}
}

// FuzzAcceptEncoding: any header parses to weights in [0, 1000]; a header
// that names no coding gives 0; case does not matter.
func FuzzAcceptEncoding(f *testing.F) {
	for _, s := range []string{"gzip", "gzip, deflate, br, zstd", "br;q=0.5, gzip;q=0.25", "*;q=0", "x-gzip;q=1.000", "gzip;q=", ";;,;q=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		gz, br := acceptEncoding([]string{s})
		if gz < 0 || gz > 1000 || br < 0 || br > 1000 {
			t.Fatalf("%q: %d %d", s, gz, br)
		}
		lower := strings.ToLower(s)
		if !strings.Contains(lower, "gzip") && !strings.Contains(s, "*") && gz != 0 {
			t.Fatalf("%q: gzip %d", s, gz)
		}
		if !strings.Contains(lower, "br") && !strings.Contains(s, "*") && br != 0 {
			t.Fatalf("%q: br %d", s, br)
		}
		if g2, b2 := acceptEncoding([]string{strings.ToUpper(s)}); isASCII(s) && (g2 != gz || b2 != br) {
			t.Fatalf("%q: case changes the weights: %d %d vs %d %d", s, gz, br, g2, b2)
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func TestCompressible(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/html; charset=utf-8": true, "text/javascript; charset=utf-8": true, "application/json": true,
		"application/wasm": true, "image/svg+xml": true, "application/manifest+json": true, "TEXT/CSS": true,
		"text/event-stream": false, "image/png": false, "font/woff2": false, "application/octet-stream": false,
		"": false, "garbage": false, "application/zip": false,
	} {
		if compressible(ct) != want {
			t.Errorf("%q: %v", ct, !want)
		}
	}
}

func gunzip(t *testing.T, b []byte) string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// rawClient is l's client without Go's transparent gzip.
func rawClient(l *lb) *http.Client {
	hc := l.httpClient()
	hc.Transport.(*http.Transport).DisableCompression = true
	return hc
}

// rawGet sends a GET (or HEAD) with the given header fields and returns
// the response with its body as sent (no transparent decompression).
func rawGet(t *testing.T, hc *http.Client, method, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

// Static files with gzip: a cached file is gzipped once and served with a
// weak ETag and Vary; precompressed .br/.gz files are chosen by the
// client's weights; small, incompressible, HEAD and Range requests are
// served as they are; a file too large for the cache is gzipped as it is
// sent; conditional requests get 304 on every form.
func TestStaticGzip(t *testing.T) {
	checkLeaks(t)
	web := t.TempDir()
	js := strings.Repeat("console.log('hello, player');\n", 100) // 3000 bytes
	big := strings.Repeat("var level = [1, 2, 3, 4, 5, 6, 7, 8];\n", maxCachedFile/20)
	files := map[string]string{
		"app.js": js, "small.js": "console.log(1)", "pic.png": strings.Repeat("\x89PNG", 500),
		"pre.js": js, "pre.js.br": "BROTLI-BYTES", "pre.js.gz": "GZIP-BYTES", "big.js": big,
		"only.css": strings.Repeat("body{}", 300), "only.css.gz": "CSS-GZ",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(web, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Locations: []Location{
		{Path: "/", Root: web, Gzip: true},
		{Path: "/plain/", Root: web},
	}})
	hc := rawClient(l)
	defer hc.CloseIdleConnections()

	var weak string
	for i := range 3 { // a miss, then hits of the cached copy
		resp, body := rawGet(t, hc, "GET", l.url("/app.js"), "Accept-Encoding", "gzip, deflate")
		h := resp.Header
		if resp.StatusCode != 200 || h.Get("Content-Encoding") != "gzip" || h.Get("Vary") != "Accept-Encoding" ||
			h.Get("Content-Type") != "text/javascript; charset=utf-8" || !strings.HasPrefix(h.Get("Etag"), `W/"`) ||
			h.Get("Content-Length") != strconv.Itoa(len(body)) || len(body) >= len(js)/4 {
			t.Fatalf("get %d: %d %v (%d bytes)", i, resp.StatusCode, h, len(body))
		}
		if gunzip(t, body) != js {
			t.Fatalf("get %d: wrong body", i)
		}
		weak = h.Get("Etag")
	}
	if resp, body := rawGet(t, hc, "GET", l.url("/app.js"), "Accept-Encoding", "gzip", "If-None-Match", weak); resp.StatusCode != 304 || len(body) != 0 || resp.Header.Get("Etag") != weak {
		t.Fatalf("if-none-match: %d %v", resp.StatusCode, resp.Header)
	}
	resp, body := rawGet(t, hc, "GET", l.url("/app.js"))
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" || string(body) != js ||
		resp.Header.Get("Vary") != "Accept-Encoding" || !strings.HasPrefix(resp.Header.Get("Etag"), `"`) || "W/"+resp.Header.Get("Etag") != weak {
		t.Fatalf("identity: %d %v", resp.StatusCode, resp.Header)
	}
	strong := resp.Header.Get("Etag")
	if resp, _ := rawGet(t, hc, "GET", l.url("/app.js"), "If-None-Match", strong); resp.StatusCode != 304 {
		t.Fatalf("identity if-none-match: %d", resp.StatusCode)
	}
	if resp, body := rawGet(t, hc, "GET", l.url("/app.js"), "Accept-Encoding", "gzip", "Range", "bytes=0-6"); resp.StatusCode != 206 || string(body) != "console" || resp.Header.Get("Content-Encoding") != "" {
		t.Fatalf("range: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, body := rawGet(t, hc, "HEAD", l.url("/app.js"), "Accept-Encoding", "gzip"); resp.StatusCode != 200 || len(body) != 0 ||
		resp.Header.Get("Content-Encoding") != "" || resp.Header.Get("Content-Length") != strconv.Itoa(len(js)) {
		t.Fatalf("head: %d %v", resp.StatusCode, resp.Header)
	}
	for _, p := range []string{"/small.js", "/pic.png", "/plain/app.js"} {
		resp, body := rawGet(t, hc, "GET", l.url(p), "Accept-Encoding", "gzip, br")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" || string(body) != files[strings.TrimPrefix(p, "/plain")[1:]] {
			t.Fatalf("%s: %d %v", p, resp.StatusCode, resp.Header)
		}
		if vary := resp.Header.Get("Vary"); (vary != "") != (p == "/small.js") {
			t.Fatalf("%s: Vary %q", p, vary)
		}
	}

	// Precompressed files: br preferred on a tie, the weights decide.
	for _, tc := range []struct{ accept, enc, body string }{
		{"gzip, deflate, br, zstd", "br", "BROTLI-BYTES"},
		{"gzip;q=1, br;q=0.5", "gzip", "GZIP-BYTES"},
		{"br;q=0, gzip", "gzip", "GZIP-BYTES"},
		{"br", "br", "BROTLI-BYTES"},
		{"identity", "", js},
	} {
		resp, body := rawGet(t, hc, "GET", l.url("/pre.js"), "Accept-Encoding", tc.accept)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != tc.enc || string(body) != tc.body ||
			resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8" || resp.Header.Get("Vary") != "Accept-Encoding" {
			t.Fatalf("%q: %d %v %q", tc.accept, resp.StatusCode, resp.Header, body)
		}
	}
	resp, _ = rawGet(t, hc, "GET", l.url("/pre.js"), "Accept-Encoding", "br")
	if et := resp.Header.Get("Etag"); et == "" || strings.HasPrefix(et, "W/") {
		t.Fatalf("br etag %q", et)
	} else if resp, _ := rawGet(t, hc, "GET", l.url("/pre.js"), "Accept-Encoding", "br", "If-None-Match", et); resp.StatusCode != 304 {
		t.Fatalf("br if-none-match: %d", resp.StatusCode)
	}
	// Only a .gz: a br-only client gets identity.
	if resp, body := rawGet(t, hc, "GET", l.url("/only.css"), "Accept-Encoding", "br, gzip"); resp.Header.Get("Content-Encoding") != "gzip" || string(body) != "CSS-GZ" {
		t.Fatalf("only.css: %v %q", resp.Header, body)
	}
	if resp, body := rawGet(t, hc, "GET", l.url("/only.css"), "Accept-Encoding", "br"); resp.Header.Get("Content-Encoding") != "" || string(body) != files["only.css"] {
		t.Fatalf("only.css br: %v", resp.Header)
	}

	// Past the cache: compressed as it is sent, no Content-Length.
	resp, body = rawGet(t, hc, "GET", l.url("/big.js"), "Accept-Encoding", "gzip")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" || resp.ContentLength == int64(len(big)) ||
		!strings.HasPrefix(resp.Header.Get("Etag"), `W/"`) || resp.Header.Get("Accept-Ranges") != "" || gunzip(t, body) != big {
		t.Fatalf("big: %d %v", resp.StatusCode, resp.Header)
	}
	if resp, _ := rawGet(t, hc, "GET", l.url("/big.js"), "Accept-Encoding", "gzip", "If-None-Match", resp.Header.Get("Etag")); resp.StatusCode != 304 {
		t.Fatalf("big if-none-match: %d", resp.StatusCode)
	}
	// Go's client asks for gzip itself and decompresses.
	gc := l.httpClient()
	defer gc.CloseIdleConnections()
	r, err := gc.Get(l.url("/app.js"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if !r.Uncompressed || string(b) != js {
		t.Fatalf("transparent: uncompressed %v, %d bytes", r.Uncompressed, len(b))
	}
}

// Proxied responses with gzip = true: compressed when the head allows it,
// streams included; left alone when small, already encoded, no-transform,
// partial, bodiless or of an incompressible type, and for HEAD and Range
// requests.
func TestProxyGzip(t *testing.T) {
	checkLeaks(t)
	doc := strings.Repeat(`{"room":7,"players":["a","b"]},`, 100)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Etag", `"v1"`)
		switch r.URL.Path {
		case "/json":
		case "/small":
			_, _ = io.WriteString(w, `{"ok":true}`)
			return
		case "/encoded":
			h.Set("Content-Encoding", "br")
		case "/notransform":
			h.Set("Cache-Control", "public, no-transform")
		case "/png":
			h.Set("Content-Type", "image/png")
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
			return
		case "/stream":
			w.WriteHeader(200)
			for i := range 3 {
				_, _ = io.WriteString(w, doc[:100]+strconv.Itoa(i))
				http.NewResponseController(w).Flush()
			}
			return
		}
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(doc))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), HTTP2: true, RequestBufferBytes: 16, Locations: []Location{
		{Path: "/", Pool: pool(t, balancer.ProxyNone, ln.Addr().String()), Gzip: true},
		{Path: "/off/", Pool: pool(t, balancer.ProxyNone, ln.Addr().String())},
	}})
	hc := rawClient(l)
	defer hc.CloseIdleConnections()

	// A streamed request body takes ReverseProxy's path; HTTP/2 its own
	// ResponseWriter.
	req, _ := http.NewRequest("POST", l.url("/json"), strings.NewReader(strings.Repeat("x", 100)))
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("Content-Encoding") != "gzip" || gunzip(t, b) != doc {
		t.Fatalf("streamed body: %d %v", resp.StatusCode, resp.Header)
	}
	h2 := rawClient(l)
	h2.Transport.(*http.Transport).Protocols = new(http.Protocols)
	h2.Transport.(*http.Transport).Protocols.SetHTTP2(true)
	defer h2.CloseIdleConnections()
	for _, path := range []string{"/json", "/stream"} {
		resp, b := rawGet(t, h2, "GET", l.url(path), "Accept-Encoding", "gzip")
		if resp.ProtoMajor != 2 || resp.Header.Get("Content-Encoding") != "gzip" || !strings.HasPrefix(gunzip(t, b), doc[:100]) {
			t.Fatalf("h2 %s: %s %v", path, resp.Proto, resp.Header)
		}
	}

	resp, body := rawGet(t, hc, "GET", l.url("/json"), "Accept-Encoding", "gzip")
	h := resp.Header
	if resp.StatusCode != 200 || h.Get("Content-Encoding") != "gzip" || h.Get("Vary") != "Accept-Encoding" || h.Get("Etag") != `W/"v1"` ||
		h.Get("Accept-Ranges") != "" || resp.ContentLength == int64(len(doc)) || gunzip(t, body) != doc {
		t.Fatalf("json: %d %v", resp.StatusCode, h)
	}
	resp, body = rawGet(t, hc, "GET", l.url("/stream"), "Accept-Encoding", "gzip")
	if resp.Header.Get("Content-Encoding") != "gzip" || gunzip(t, body) != doc[:100]+"0"+doc[:100]+"1"+doc[:100]+"2" {
		t.Fatalf("stream: %v", resp.Header)
	}
	resp, body = rawGet(t, hc, "GET", l.url("/json"), "Accept-Encoding", "br")
	if resp.Header.Get("Content-Encoding") != "" || resp.Header.Get("Vary") != "Accept-Encoding" || string(body) != doc || resp.Header.Get("Etag") != `"v1"` {
		t.Fatalf("not accepted: %v", resp.Header)
	}
	for _, tc := range []struct{ method, path, rng string }{
		{"GET", "/small", ""}, {"GET", "/encoded", ""}, {"GET", "/notransform", ""}, {"GET", "/png", ""},
		{"GET", "/nocontent", ""}, {"HEAD", "/json", ""}, {"GET", "/json", "bytes=0-9"}, {"GET", "/off/json", ""},
	} {
		hdr := []string{"Accept-Encoding", "gzip"}
		if tc.rng != "" {
			hdr = append(hdr, "Range", tc.rng)
		}
		resp, body := rawGet(t, hc, tc.method, l.url(tc.path), hdr...)
		if resp.Header.Get("Content-Encoding") == "gzip" || resp.Header.Get("Vary") != "" || bytes.HasPrefix(body, []byte{0x1f, 0x8b}) {
			t.Fatalf("%s %s %s: %d %v", tc.method, tc.path, tc.rng, resp.StatusCode, resp.Header)
		}
	}
}

// curl --compressed, if installed, decodes what sluice sends: a gzipped
// cached file, a .gz made by gzip(1), over HTTP/1.1 and over HTTP/2.
func TestGzipCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	checkLeaks(t)
	web := t.TempDir()
	js := strings.Repeat("export const x = 1;\n", 200)
	for _, name := range []string{"app.js", "pre.js"} {
		if err := os.WriteFile(filepath.Join(web, name), []byte(js), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if gz, err := exec.LookPath("gzip"); err == nil {
		if out, err := exec.Command(gz, "-k", "-9", filepath.Join(web, "pre.js")).CombinedOutput(); err != nil {
			t.Fatalf("gzip: %v %s", err, out)
		}
	}
	plain := startLB(t, RouteConfig{Name: "h5", Locations: []Location{{Path: "/", Root: web, Gzip: true}}})
	tlsLB := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), HTTP2: true, Locations: []Location{{Path: "/", Root: web, Gzip: true}}})
	_, port, _ := net.SplitHostPort(tlsLB.addr)
	for _, tc := range []struct {
		args  []string
		proto string
	}{
		{[]string{"http://" + plain.addr + "/app.js"}, "HTTP/1.1 200"},
		{[]string{"http://" + plain.addr + "/pre.js"}, "HTTP/1.1 200"},
		{[]string{"--http2", "-k", "--resolve", testHost + ":" + port + ":127.0.0.1", "https://" + testHost + ":" + port + "/app.js"}, "HTTP/2 200"},
		{[]string{"--http2", "-k", "--resolve", testHost + ":" + port + ":127.0.0.1", "https://" + testHost + ":" + port + "/pre.js"}, "HTTP/2 200"},
	} {
		args := append([]string{"-sS", "--compressed", "-D", "-", "--max-time", "10"}, tc.args...)
		out, err := exec.Command(curl, args...).Output()
		if err != nil {
			t.Fatalf("curl %v: %v", tc.args, err)
		}
		head, body, _ := strings.Cut(string(out), "\r\n\r\n")
		if !strings.HasPrefix(head, tc.proto) || !strings.Contains(strings.ToLower(head), "content-encoding: gzip") || body != js {
			t.Fatalf("curl %v: %q, %d bytes", tc.args, head, len(body))
		}
	}
}

// Chromium, if installed, loads a single-page app through the fallback,
// with its module script from a .gz file (whose content differs from the
// file's, so the page shows which one it ran) and a gzipped stylesheet.
func TestGzipChromium(t *testing.T) {
	var chromium string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			chromium = p
			break
		}
	}
	if chromium == "" {
		t.Skip("no chromium")
	}
	checkLeaks(t)
	web := t.TempDir()
	pad := "\n/* " + strings.Repeat("padding ", 200) + "*/\n"
	files := map[string]string{
		"index.html": `<!doctype html><html><head><link rel="stylesheet" href="/app.css"></head><body><div id="o">wait</div><script type="module" src="/app.js"></script></body></html>`,
		"app.js":     `document.getElementById("o").textContent = "identity";` + pad,
		"app.css":    `#o { color: rgb(1, 2, 3); }` + pad,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(web, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	io.WriteString(zw, `const o = document.getElementById("o"); o.textContent = "from-gz " + location.pathname + " " + getComputedStyle(o).color;`+pad)
	zw.Close()
	if err := os.WriteFile(filepath.Join(web, "app.js.gz"), zb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	l := startLB(t, RouteConfig{Name: "h5", Locations: []Location{{Path: "/", Root: web, Gzip: true, Fallback: "index.html"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000", "--dump-dom", "http://"+l.addr+"/rooms/7?x=1").Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if !strings.Contains(string(out), "from-gz /rooms/7 rgb(1, 2, 3)") {
		t.Fatalf("page: %s", out)
	}
}

// BenchmarkGzipWriter: what compressing one proxied response costs (a
// pooled level-5 writer): a 3 KiB JSON answer, and the 19-byte answer of
// issue 10's http-small row, which is passed through (under 1 KiB).
func BenchmarkGzipWriter(b *testing.B) {
	doc := []byte(strings.Repeat(`{"room":7,"players":["a","b"],"t":12345},`, 75))
	for _, tc := range []struct {
		name string
		body []byte
	}{{"json3k", doc}, {"small19", []byte("hello from backend\n")}} {
		b.Run(tc.name, func(b *testing.B) {
			w := &discardWriter{h: http.Header{}}
			cl := strconv.Itoa(len(tc.body))
			b.SetBytes(int64(len(tc.body)))
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				w.code = 0
				w.h["Content-Type"] = []string{"application/json"}
				w.h["Content-Length"] = []string{cl}
				g := newGzipWriter(w, true)
				g.WriteHeader(200)
				_, _ = g.Write(tc.body)
				_ = g.finish()
			}
		})
	}
}
