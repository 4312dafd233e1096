package l7

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The static file cache serves what the disk holds: a changed, replaced or
// removed file is seen on the next request, and FileServer's semantics
// (Last-Modified, conditional requests, ranges, Content-Type) hold on hits.
func TestStaticCache(t *testing.T) {
	checkLeaks(t)
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
