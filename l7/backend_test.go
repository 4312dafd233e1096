package l7

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sluice/balancer"
)

// scriptBackend runs serve for each accepted conn (i counts from 0) and
// closes the conn when serve returns.
type scriptBackend struct {
	addr    string
	accepts atomic.Int32
}

func startScriptBackend(t *testing.T, serve func(i int, c net.Conn, br *bufio.Reader)) *scriptBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &scriptBackend{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			i := int(b.accepts.Add(1)) - 1
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(i, c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return b
}

// answerAll answers every request on the conn with resp(request).
func answerAll(resp func(r *http.Request) string) func(int, net.Conn, *bufio.Reader) {
	return answerUntil(func(r *http.Request) (string, bool) { return resp(r), false })
}

// answerUntil is answerAll, closing the conn after an answer for which
// resp reports done (a body delimited by the close, a broken answer). A
// HEAD request gets the answer's head only.
func answerUntil(resp func(r *http.Request) (out string, done bool)) func(int, net.Conn, *bufio.Reader) {
	return func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, r.Body)
			out, done := resp(r)
			if i := strings.Index(out, "\r\n\r\n"); r.Method == "HEAD" && i >= 0 {
				out = out[:i+4]
			}
			if _, err := io.WriteString(c, out); err != nil || done {
				return
			}
		}
	}
}

func getBody(t *testing.T, hc *http.Client, method, url, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// Responses read to their end leave the backend conn for the next request:
// Content-Length and chunked bodies (trailers passed on), HEAD; a response
// that says Connection: close does not.
func TestBackendConnReuse(t *testing.T) {
	checkLeaks(t)
	be := startScriptBackend(t, answerAll(func(r *http.Request) string {
		switch r.URL.Path {
		case "/chunked":
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n"
		case "/close":
			return "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	}))
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	for i := range 3 {
		if resp, body := getBody(t, hc, "GET", l.url("/"), ""); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("get %d: %d %q", i, resp.StatusCode, body)
		}
	}
	resp, body := getBody(t, hc, "GET", l.url("/chunked"), "")
	if resp.StatusCode != 200 || body != "ok" || resp.Trailer.Get("X-Sum") != "42" {
		t.Fatalf("chunked: %d %q trailer %v", resp.StatusCode, body, resp.Trailer)
	}
	if resp, body := getBody(t, hc, "POST", l.url("/"), "data"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("post: %d %q", resp.StatusCode, body)
	}
	if resp, _ := getBody(t, hc, "HEAD", l.url("/"), ""); resp.StatusCode != 200 {
		t.Fatalf("head: %d", resp.StatusCode)
	}
	if n := be.accepts.Load(); n != 1 {
		t.Fatalf("%d backend conns for 6 requests, want 1", n)
	}
	getBody(t, hc, "GET", l.url("/close"), "")
	getBody(t, hc, "GET", l.url("/"), "")
	if n := be.accepts.Load(); n != 2 {
		t.Fatalf("%d backend conns after Connection: close, want 2", n)
	}
}

// A pooled conn the backend closed is not used for a request that cannot
// be replayed (it is checked first), and a replayable one that meets it is
// sent again on a new conn: no 502 either way.
func TestBackendClosedIdleConn(t *testing.T) {
	checkLeaks(t)
	be := startScriptBackend(t, func(_ int, c net.Conn, br *bufio.Reader) {
		// One request per conn, then close without saying so (an idle
		// timeout that fires at once).
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	for i, method := range []string{"GET", "POST", "GET", "POST", "PUT", "GET"} {
		body := ""
		if method != "GET" {
			body = "data"
		}
		if resp, got := getBody(t, hc, method, l.url("/"), body); resp.StatusCode != 200 || got != "ok" {
			t.Fatalf("request %d (%s): %d %q", i, method, resp.StatusCode, got)
		}
		time.Sleep(50 * time.Millisecond) // the backend's FIN arrives
	}
	if n := be.accepts.Load(); n != 6 {
		t.Fatalf("%d backend conns, want 6", n)
	}
}

// 1xx responses reach the client (ReverseProxy forwards them through
// httptrace); a 101 to a plain request is a 502.
func TestBackendInterimAndSwitch(t *testing.T) {
	checkLeaks(t)
	be := startScriptBackend(t, answerAll(func(r *http.Request) string {
		if r.URL.Path == "/switch" {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
		}
		return "HTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	}))
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", l.url("/"), nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" || len(hints) != 1 || hints[0] != "</app.js>; rel=preload" {
		t.Fatalf("%d %q, hints %q", resp.StatusCode, body, hints)
	}
	if resp, _ := getBody(t, hc, "GET", l.url("/switch"), ""); resp.StatusCode != 502 {
		t.Fatalf("unasked 101: %d", resp.StatusCode)
	}
}

// A client that goes away while the backend has not answered, or in the
// middle of the response body, frees the backend conn: sluice closes it.
func TestBackendClientGoesAway(t *testing.T) {
	checkLeaks(t)
	closed := make(chan int, 2)
	be := startScriptBackend(t, func(i int, c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		if i == 1 {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("x", 64<<10))
		}
		// Never answer (more): wait for sluice to close the conn.
		_, _ = io.Copy(io.Discard, br)
		closed <- i
	})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	for i := range 2 {
		c := l.dial(t)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if i == 1 {
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
				t.Fatalf("head: %v", err)
			}
		} else {
			time.Sleep(100 * time.Millisecond) // the request reached the backend
		}
		c.Close()
		select {
		case got := <-closed:
			if got != i {
				t.Fatalf("backend conn %d closed, want %d", got, i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("case %d: the backend conn stayed open", i)
		}
		l.nextResult(t)
	}
}

// Route.Close closes the pooled backend conns.
func TestBackendConnsClosedWithRoute(t *testing.T) {
	checkLeaks(t)
	closed := make(chan struct{}, 1)
	be := startScriptBackend(t, func(i int, c net.Conn, br *bufio.Reader) {
		answerAll(func(*http.Request) string { return "HTTP/1.1 204 No Content\r\n\r\n" })(i, c, br)
		closed <- struct{}{}
	})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	hc := l.httpClient()
	if resp, _ := getBody(t, hc, "GET", l.url("/"), ""); resp.StatusCode != 204 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	hc.CloseIdleConnections()
	l.nextResult(t)
	l.route.Close()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("pooled backend conn still open after Route.Close")
	}
}

// Bytes a backend sends past a response (here a body on a HEAD response)
// are not read as the next request's response: the conn is dropped.
func TestBackendStrayBytes(t *testing.T) {
	checkLeaks(t)
	be := startScriptBackend(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
			time.Sleep(20 * time.Millisecond)
			io.WriteString(c, "hello") // also after the HEAD response
			_ = r
		}
	})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	if resp, _ := getBody(t, hc, "HEAD", l.url("/"), ""); resp.StatusCode != 200 {
		t.Fatalf("head: %d", resp.StatusCode)
	}
	time.Sleep(100 * time.Millisecond)
	for i := range 2 {
		if resp, body := getBody(t, hc, "GET", l.url("/"), ""); resp.StatusCode != 200 || body != "hello" {
			t.Fatalf("get %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if n := be.accepts.Load(); n != 2 {
		t.Fatalf("%d backend conns, want 2", n)
	}
}
