package l7

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"sluice/balancer"
	"sluice/l4"
)

// Slow bodies take no player slot (issue 10): with max_connections = 5,
// five POSTs that declare 100,000 bytes and send them slowly hold no
// backend slot while they are read, so GETs and an upgrade still get
// through; none of them reached the backend.
func TestSlowBodiesHoldNoBackend(t *testing.T) {
	checkLeaks(t)
	be, _ := countedBackend(t)
	p := poolOf(t, balancer.PoolConfig{}, 5, be.addr)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: p})
	for range 5 {
		c := l.dial(t)
		fmt.Fprintf(c, "POST /api/upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 100000\r\n\r\nx", testHost)
	}
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	for i := range 10 {
		if be := get(t, hc, "GET", l.url("/api/state"), nil); be == "" {
			t.Fatalf("GET %d: no backend", i)
		}
	}
	ws := l.wsDial(t, t.Context(), "/ws")
	ws.CloseNow()
	for _, r := range be.requests() {
		if r.Method == "POST" {
			t.Fatal("a POST whose body is not complete reached the backend")
		}
	}
	if act := p.Status()[0].Active; act > 1 {
		t.Fatalf("%d slots held with only slow bodies in flight", act)
	}
}

// A body that fits the request buffer reaches the backend whole with a
// Content-Length (a chunked one is de-chunked); a larger one streams.
func TestBufferedAndStreamedBodies(t *testing.T) {
	checkLeaks(t)
	be, _ := countedBackend(t)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(),
		Pool: poolOf(t, balancer.PoolConfig{}, 0, be.addr), RequestBufferBytes: 4 << 10})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	small := strings.Repeat("s", 3000)
	large := strings.Repeat("L", 200<<10)
	get(t, hc, "POST", l.url("/small"), io.NopCloser(strings.NewReader(small))) // unknown length: chunked
	get(t, hc, "POST", l.url("/large"), io.NopCloser(strings.NewReader(large)))
	reqs := be.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	if r := reqs[0]; r.ContentLength != int64(len(small)) || len(r.TransferEncoding) != 0 {
		t.Fatalf("buffered body: length %d, transfer-encoding %v", r.ContentLength, r.TransferEncoding)
	}
	if r := reqs[1]; r.ContentLength != -1 {
		t.Fatalf("streamed body: length %d, want chunked", r.ContentLength)
	}
}

// rawRequest sends one request on a new client connection and returns the
// status line's code and the connection's Result.
func rawRequest(t *testing.T, l *lb, req string, pause time.Duration, more string) (int, Result) {
	t.Helper()
	c := l.dial(t)
	io.WriteString(c, req)
	if pause > 0 {
		time.Sleep(pause)
	}
	if more != "" {
		io.WriteString(c, more)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	code := 0
	if err == nil {
		code = resp.StatusCode
		resp.Body.Close()
	}
	c.Close()
	return code, l.nextResult(t)
}

// The answers to bodies a client gets wrong: 413 past max_body_bytes (from
// the declared length, or while streaming a chunked body), 408 when the body
// stalls for body_timeout, 400 for bad chunking; the log's status is the
// status sent, with the client's reason, never a 502 or a backend error.
func TestBodyRefusals(t *testing.T) {
	checkLeaks(t)
	be, conns := countedBackend(t)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(),
		Pool: poolOf(t, balancer.PoolConfig{}, 0, be.addr), RequestBufferBytes: 1 << 10, MaxBodyBytes: 8 << 10,
		BodyTimeout: 300 * time.Millisecond})
	head := func(framing string) string {
		return fmt.Sprintf("POST /api HTTP/1.1\r\nHost: %s\r\n%s\r\n\r\n", testHost, framing)
	}
	chunk := func(n int) string { return fmt.Sprintf("%x\r\n%s\r\n", n, bytes.Repeat([]byte("c"), n)) }
	for _, tc := range []struct {
		name        string
		req, more   string
		pause       time.Duration
		code        int
		reason      l4.Reason
		reachesBack bool
	}{
		{"declared too large", head("Content-Length: 9000"), "", 0, 413, ReasonBodyTooLarge, false},
		{"chunked past the limit while streaming", head("Transfer-Encoding: chunked") + strings.Repeat(chunk(1000), 10) + "0\r\n\r\n", "", 0, 413, ReasonBodyTooLarge, true},
		{"stalled body", head("Content-Length: 100") + "abc", "", 0, 408, ReasonBodyTimeout, false},
		{"huge chunk size", head("Transfer-Encoding: chunked") + "10000000000000001\r\n", "", 0, 400, ReasonSmuggling, false},
		{"bare LF chunk line", head("Transfer-Encoding: chunked") + "5\nhello\r\n0\r\n\r\n", "", 0, 400, ReasonSmuggling, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := conns.Load()
			code, r := rawRequest(t, l, tc.req, tc.pause, tc.more)
			if code != tc.code || r.Status != tc.code || r.Reason != tc.reason {
				t.Fatalf("sent %d, logged status %d reason %s (%v); want %d %s", code, r.Status, r.Reason, r.Err, tc.code, tc.reason)
			}
			if !tc.reachesBack && conns.Load() != before {
				t.Fatal("the backend was dialled for a refused body")
			}
			if tc.reachesBack {
				// The backend counts the connection when its Accept
				// returns, which may come after the answer: wait, so that
				// the next case does not see it.
				for deadline := time.Now().Add(10 * time.Second); conns.Load() == before; {
					if time.Now().After(deadline) {
						t.Fatal("the streamed body's backend connection never arrived")
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
}

// A client that goes away mid-body is logged as client_closed, never as a
// backend error, and nothing reaches the backend.
func TestBodyClientGoesAway(t *testing.T) {
	checkLeaks(t)
	be, conns := countedBackend(t)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: poolOf(t, balancer.PoolConfig{}, 0, be.addr)})
	c := l.dial(t)
	fmt.Fprintf(c, "POST /api HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000\r\n\r\nonly a part", testHost)
	time.Sleep(100 * time.Millisecond)
	c.Close()
	r := l.nextResult(t)
	if r.Reason != l4.ReasonClientClosed || r.Status == http.StatusBadGateway {
		t.Fatalf("result %+v", r)
	}
	if conns.Load() != 0 {
		t.Fatal("the backend was dialled for an abandoned body")
	}
}
