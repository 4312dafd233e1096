package l7

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"sluice/balancer"
	"sluice/l4"
)

// Static files, redirects and path safety.
func TestStaticAndRedirect(t *testing.T) {
	checkLeaks(t)
	dir := t.TempDir()
	web := filepath.Join(dir, "web")
	os.MkdirAll(filepath.Join(web, "sub"), 0o755)
	os.WriteFile(filepath.Join(web, "index.html"), []byte("<h1>game</h1>"), 0o644)
	os.WriteFile(filepath.Join(web, "app.js"), []byte("console.log(1)"), 0o644)
	os.WriteFile(filepath.Join(web, "game.wasm"), []byte("\x00asm"), 0o644)
	os.WriteFile(filepath.Join(web, ".env"), []byte("SECRET"), 0o644)
	os.WriteFile(filepath.Join(dir, "secret"), []byte("SECRET"), 0o644)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Locations: []Location{
		{Path: "/", Root: web},
		{Path: "/static/", Root: web},
		{Path: "/old", Redirect: "https://example.com/new"},
	}})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := hc.Get(l.url(path))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	if resp, body := get("/"); resp.StatusCode != 200 || body != "<h1>game</h1>" || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("/: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, body := get("/static/app.js"); resp.StatusCode != 200 || body != "console.log(1)" || resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Fatalf("app.js: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, _ := get("/game.wasm"); resp.Header.Get("Content-Type") != "application/wasm" {
		t.Fatalf("wasm: %v", resp.Header)
	}
	for _, p := range []string{"/.env", "/static/.env", "/sub/", "/nope.js"} {
		if resp, body := get(p); resp.StatusCode != 404 || strings.Contains(body, "SECRET") {
			t.Fatalf("%s: %d %q", p, resp.StatusCode, body)
		}
	}
	if resp, _ := get("/old/x"); resp.StatusCode != 302 || resp.Header.Get("Location") != "https://example.com/new" {
		t.Fatalf("redirect: %d %v", resp.StatusCode, resp.Header)
	}
	// Dot segments never reach the file system (clients clean them, so raw).
	for _, p := range []string{"/static/../secret", "/static/%2e%2e/secret", "/static/..%2fsecret", "/./index.html"} {
		c := l.dial(t)
		io.WriteString(c, "GET "+p+" HTTP/1.1\r\nHost: "+testHost+"\r\n\r\n")
		resp, body := readResponse(t, bufio.NewReader(c))
		if resp.StatusCode != 400 || strings.Contains(string(body), "SECRET") {
			t.Fatalf("%s: %d %q", p, resp.StatusCode, body)
		}
		c.Close()
	}
}

// RedirectHTTPS answers 308 to the https URL (port dropped, query kept).
func TestRedirectHTTPS(t *testing.T) {
	parallelCheckLeaks(t)
	be := startRawBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "plain", Hosts: []string{testHost}, RedirectHTTPS: true, Pool: pool(t, balancer.ProxyNone, be.addr)})
	c := l.dial(t)
	io.WriteString(c, "GET /play?room=7 HTTP/1.1\r\nHost: GAME.example.com:8080\r\n\r\n")
	br := bufio.NewReader(c)
	resp, _ := readResponse(t, br)
	if resp.StatusCode != 308 || resp.Header.Get("Location") != "https://game.example.com/play?room=7" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	// Keep-alive: a second request on the same connection.
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: game.example.com\r\nConnection: close\r\n\r\n")
	if resp, _ := readResponse(t, br); resp.StatusCode != 308 || resp.Header.Get("Location") != "https://game.example.com/" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	if r := l.nextResult(t); r.Requests != 2 || r.Status != 308 {
		t.Fatalf("result %+v", r)
	}
	if _, err := NewRoute(RouteConfig{Name: "x", TLS: serverTLS(), RedirectHTTPS: true, Pool: pool(t, balancer.ProxyNone, be.addr)}); err == nil {
		t.Fatal("RedirectHTTPS accepted on a TLS route")
	}
	if be.accepted() != 0 {
		t.Fatal("backend dialed")
	}
}

// Plain HTTP is reverse-proxied with forwarding headers; keep-alive serves
// several requests on one client connection; a chunked body streams through
// the validating reader.
func TestPlainProxyKeepAlive(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	hc := l.httpClient()
	reused := 0
	for i := range 3 {
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			if info.Reused {
				reused++
			}
		}}
		var body io.Reader
		method := "GET"
		if i == 2 {
			method, body = "POST", io.NopCloser(strings.NewReader(strings.Repeat("b", 100<<10))) // unknown length: chunked
		}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), method, l.url("/api/"+method), body)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "plain /api/"+method+" from "+be.addr {
			t.Fatalf("%d %q", resp.StatusCode, b)
		}
	}
	hc.CloseIdleConnections()
	if reused != 2 {
		t.Fatalf("client connection reused %d times, want 2", reused)
	}
	r := l.nextResult(t)
	if r.Requests != 3 || r.Status != 200 || r.Backend != be.addr || r.Upgraded || r.Reason != l4.ReasonEOF {
		t.Fatalf("result %+v", r)
	}
	reqs := be.requests()
	if len(reqs) != 3 {
		t.Fatalf("backend saw %d requests", len(reqs))
	}
	for _, req := range reqs {
		if req.Header.Get("X-Forwarded-For") != "127.0.0.1" || req.Header.Get("X-Forwarded-Proto") != "https" ||
			req.Header.Get("X-Real-Ip") != "127.0.0.1" || !strings.HasPrefix(req.Host, testHost+":") || req.Header.Get("X-Forwarded-Host") != req.Host {
			t.Fatalf("backend request %s %v host %q", req.URL, req.Header, req.Host)
		}
	}
}

// A pool whose only backend refuses: 502.
func TestPlainProxyRefused(t *testing.T) {
	checkLeaks(t)
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, refusedAddr(t))})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(l.url("/"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	hc.CloseIdleConnections()
	if r := l.nextResult(t); r.Reason != l4.ReasonConnectFailed || r.Status != 502 {
		t.Fatalf("result %+v", r)
	}
}

// An idle keep-alive connection is closed silently at KeepAliveTimeout.
func TestKeepAliveIdle(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), KeepAliveTimeout: 300 * time.Millisecond, Pool: pool(t, balancer.ProxyNone, be.addr)})
	c := l.dial(t)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, _ := readResponse(t, br); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	start := time.Now()
	expectClosed(t, c, br)
	if e := time.Since(start); e < 250*time.Millisecond || e > 3*time.Second {
		t.Fatalf("closed after %v", e)
	}
	if r := l.nextResult(t); r.Reason != l4.ReasonIdleTimeout || r.Requests != 1 {
		t.Fatalf("result %+v", r)
	}
}

// Route.Close ends every connection (tunnel, idle keep-alive, half-sent
// head) and leaves no goroutine behind; later ServeConn calls fail.
func TestRouteClose(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	route, err := NewRoute(RouteConfig{Name: "h5", Pool: pool(t, balancer.ProxyNone, be.addr)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	results := make(chan Result, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { results <- route.ServeConn(context.Background(), c.(*net.TCPConn), nil, time.Now()) }()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	idle, _ := net.Dial("tcp", ln.Addr().String())
	defer idle.Close()
	half, _ := net.Dial("tcp", ln.Addr().String())
	defer half.Close()
	io.WriteString(half, "GET / HTTP/1.1\r\nHost: x\r\n")
	time.Sleep(100 * time.Millisecond)

	route.Close()
	got := map[l4.Reason]int{}
	for range 3 {
		select {
		case r := <-results:
			got[r.Reason]++
		case <-time.After(5 * time.Second):
			t.Fatal("ServeConn did not return")
		}
	}
	if got[l4.ReasonDrain] != 3 {
		t.Fatalf("reasons %v", got)
	}
	c, _ := net.Dial("tcp", ln.Addr().String())
	if r := <-results; r.Err != ErrClosed {
		t.Fatalf("after close: %+v", r)
	}
	c.Close()
	ln.Close()
}
