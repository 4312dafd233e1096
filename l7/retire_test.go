package l7

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Route.Retire (a reload replaced the route's config, or sluice is shutting
// down) ends keep-alive: every client's next request comes on a new
// connection, served by the config of the moment. Nothing in flight is cut
// and tunnels are not touched.

// getOn sends GET path on c and returns the response, its body read.
func getOn(t *testing.T, c net.Conn, br *bufio.Reader, path string) *http.Response {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: "+testHost+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// An idle keep-alive connection is closed at once (no waiting for the
// keep-alive timeout), and its access line says why.
func TestRetireClosesIdleKeepAlive(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: pool(t, 0, be.addr),
		KeepAliveTimeout: time.Minute})
	c := l.dial(t)
	br := bufio.NewReader(c)
	if resp := getOn(t, c, br, "/a"); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("first response: %d, close %v", resp.StatusCode, resp.Close)
	}
	time.Sleep(50 * time.Millisecond) // the conn waits for its next request
	l.route.Retire()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after Retire the idle conn read %d, %v; want EOF", n, err)
	}
	res := l.nextResult(t)
	if res.Reason != ReasonKeepAliveEnded || res.Requests != 1 || res.Status != 200 {
		t.Fatalf("result: reason %q, %d requests, status %d", res.Reason, res.Requests, res.Status)
	}
}

// A request in flight when the route retires is answered in full, with
// Connection: close, and the connection closes after it.
func TestRetireInFlightRequest(t *testing.T) {
	checkLeaks(t)
	release := make(chan struct{})
	got := make(chan struct{}, 1)
	be := startRawBackend(t, func(c *net.TCPConn, head []byte) {
		got <- struct{}{}
		<-release
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlater")
	})
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: pool(t, 0, be.addr)})
	c := l.dial(t)
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: "+testHost+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the backend")
	}
	l.route.Retire()
	close(release)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "later" || !resp.Close {
		t.Fatalf("response: %d %q, Connection: close %v", resp.StatusCode, body, resp.Close)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the response the conn read %d, %v; want EOF", n, err)
	}
	if res := l.nextResult(t); res.Requests != 1 || res.Status != 200 {
		t.Fatalf("result: reason %q, %d requests, status %d", res.Reason, res.Requests, res.Status)
	}
}

// A connection that has not sent its first request yet (accepted just
// before a reload) is served it, once.
func TestRetireServesFirstRequest(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: pool(t, 0, be.addr)})
	c := l.dial(t) // handshake done, no request yet
	time.Sleep(50 * time.Millisecond)
	l.route.Retire()
	br := bufio.NewReader(c)
	resp := getOn(t, c, br, "/first")
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("first request after Retire: %d, Connection: close %v", resp.StatusCode, resp.Close)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the response the conn read %d, %v; want EOF", n, err)
	}
	l.nextResult(t)
}

// A WebSocket tunnel runs on through Retire.
func TestRetireLeavesTunnels(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: pool(t, 0, be.addr)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws := l.wsDial(t, ctx, "/ws")
	defer ws.CloseNow()
	echo := func(msg string) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.Read(ctx)
		if err != nil || string(got) != msg {
			t.Fatalf("echo %q: %q, %v", msg, got, err)
		}
	}
	echo("before")
	l.route.Retire()
	time.Sleep(100 * time.Millisecond)
	echo("after")
	ws.Close(websocket.StatusNormalClosure, "")
	if res := l.nextResult(t); !res.Upgraded {
		t.Fatalf("result %+v: want the tunnel's", res)
	}
}

// HTTP/2: a connection gets GOAWAY; its streams in flight finish, and a
// new request needs a new connection.
func TestRetireH2GoAway(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{}, be.addr)
	cc := l.h2Conn(t)
	if resp, body := do(t, cc, "GET", l.url("/a"), "", nil); resp.StatusCode != 200 || resp.ProtoMajor != 2 || !strings.HasPrefix(body, "plain /a") {
		t.Fatalf("h2 request: %d proto %d %q", resp.StatusCode, resp.ProtoMajor, body)
	}
	l.route.Retire()
	deadline := time.Now().Add(10 * time.Second)
	for cc.Err() == nil && cc.Available() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if cc.Err() == nil && cc.Available() > 0 {
		t.Fatal("the h2 conn still takes requests after Retire: no GOAWAY")
	}
	// A new connection is served (one request: the route is retired).
	cc2 := l.h2Conn(t)
	if resp, _ := do(t, cc2, "GET", l.url("/b"), "", nil); resp.StatusCode != 200 {
		t.Fatalf("new h2 conn after Retire: %d", resp.StatusCode)
	}
}
