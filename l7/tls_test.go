package l7

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"sluice/balancer"
	"sluice/l4"
	"sluice/tlsutil"
)

// B6 (T8): a Host the route does not serve gets 421 and a close, even on a
// connection whose SNI matched (browsers coalesce across a certificate).
func TestMisdirected(t *testing.T) {
	checkLeaks(t)
	l, be := strictLB(t, RouteConfig{})
	for _, host := range []string{"other.example.com", "a.b.example.com", "127.0.0.1"} {
		t.Run(host, func(t *testing.T) {
			refusal(t, l, "GET / HTTP/1.1\r\nHost: "+host+"\r\n\r\n", 421)
			if r := l.nextResult(t); r.Reason != ReasonMisdirected {
				t.Fatalf("result %+v", r)
			}
		})
	}
	if be.accepted() != 0 {
		t.Fatal("backend dialed")
	}
}

// Wildcard hosts match one label; the port and case do not matter.
func TestHostMatching(t *testing.T) {
	rt := &Route{}
	for _, h := range []string{"game.example.com", "*.rooms.example.com"} {
		p, err := tlsutil.ParseHostPattern(h)
		if err != nil {
			t.Fatal(err)
		}
		rt.hosts.Add(p, struct{}{})
	}
	for host, want := range map[string]bool{
		"game.example.com": true, "GAME.Example.com:8443": true, "game.example.com.": true,
		"a.rooms.example.com": true, "rooms.example.com": false, "a.b.rooms.example.com": false,
		"evil.com": false, "[::1]:443": false, "": false, "game.example.com:x:y": false,
	} {
		if _, got := rt.hostAllowed(host); got != want {
			t.Errorf("%q: %v, want %v", host, got, want)
		}
	}
}

// Without SNI (a client connecting to an IP), the route's TLS config serves
// its default certificate and requests work.
func TestNoSNIDefaultCertificate(t *testing.T) {
	parallelCheckLeaks(t)
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	c, err := tls.Dial("tcp", l.addr, clientTLS("127.0.0.1")) // Go sends no SNI for an IP
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, def := testCerts()
	if got := c.ConnectionState().PeerCertificates[0]; !got.Equal(def.Leaf) {
		t.Fatal("not the default certificate")
	}
	io.WriteString(c, "GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
	resp, body := readResponse(t, bufio.NewReader(c))
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "plain /x") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if r := l.nextResult(t); r.SNI != "" || r.Requests != 1 || r.Status != 200 {
		t.Fatalf("result %+v", r)
	}
}

// A client offering only h2 fails the handshake with
// no_application_protocol: WebSocket over HTTP/2 is out of scope.
func TestALPNOnlyH2(t *testing.T) {
	checkLeaks(t)
	l, be := strictLB(t, RouteConfig{})
	cfg := clientTLS(testHost)
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", l.addr, cfg)
	if err == nil {
		c.Close()
		t.Fatal("handshake succeeded")
	}
	if !strings.Contains(err.Error(), "no application protocol") {
		t.Fatalf("error %v", err)
	}
	if r := l.nextResult(t); r.Reason != ReasonHandshakeFailed {
		t.Fatalf("result %+v", r)
	}
	// With http/1.1 offered too, it negotiates http/1.1.
	cfg.NextProtos = []string{"h2", "http/1.1"}
	c, err = tls.Dial("tcp", l.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("negotiated %q", p)
	}
	c.Close()
	if be.accepted() != 0 {
		t.Fatal("backend dialed")
	}
}

// captureHello returns the first flight of a crypto/tls client.
func captureHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		tls.Client(a, clientTLS(testHost)).Handshake()
		a.Close()
	}()
	var hdr [5]byte
	if _, err := io.ReadFull(b, hdr[:]); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(b, rec); err != nil {
		t.Fatal(err)
	}
	b.Close()
	return append(hdr[:], rec...)
}

// B10: a client that sends its ClientHello and then stalls is closed at
// HandshakeTimeout from accept; nothing is left running.
func TestHandshakeStall(t *testing.T) {
	checkLeaks(t)
	l, be := strictLB(t, RouteConfig{HandshakeTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := c.Write(captureHello(t)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.Copy(io.Discard, c) // the server's flight, then the close
	if elapsed := time.Since(start); elapsed < 250*time.Millisecond || elapsed > 3*time.Second {
		t.Fatalf("closed after %v (%v)", elapsed, err)
	}
	if r := l.nextResult(t); r.Reason != ReasonHandshakeTimeout {
		t.Fatalf("result %+v", r)
	}
	if be.accepted() != 0 {
		t.Fatal("backend dialed")
	}
}

// T16: when the backend ends its side of a tunnel, the TLS client gets
// close_notify and a TCP FIN, and can still send the other way.
func TestTunnelHalfCloseToTLSClient(t *testing.T) {
	checkLeaks(t)
	fromClient := make(chan []byte, 1)
	be := startRawBackend(t, func(c *net.TCPConn, head []byte) {
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+
			acceptKey(headerValue(head, "Sec-WebSocket-Key"))+"\r\n\r\nbye")
		c.CloseWrite()
		got, _ := io.ReadAll(c)
		fromClient <- got
	})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	raw, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := tls.Client(raw, clientTLS(testHost))
	io.WriteString(c, upgradeHead(""))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("%v %v", resp, err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(br) // ends at close_notify: io.EOF, not a reset
	if err != nil || string(rest) != "bye" {
		t.Fatalf("read %q, %v", rest, err)
	}
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := raw.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("raw read after close_notify: %d %v, want FIN", n, err)
	}
	// The other direction still flows.
	if _, err := io.WriteString(c, "still here"); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	raw.(*net.TCPConn).CloseWrite()
	if got := <-fromClient; string(got) != "still here" {
		t.Fatalf("backend got %q", got)
	}
	be.waitConn(t)
	if r := l.nextResult(t); r.Reason != l4.ReasonEOF || !r.Upgraded {
		t.Fatalf("result %+v", r)
	}
}

// A backend that does not answer the upgrade within HeaderTimeout: 504,
// and the client's pipelined bytes never reach it.
func TestUpgradeBackendSilent(t *testing.T) {
	parallelCheckLeaks(t)
	be := startRawBackend(t, func(c *net.TCPConn, head []byte) {})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), HeaderTimeout: 300 * time.Millisecond, Pool: pool(t, balancer.ProxyNone, be.addr)})
	c := l.dial(t)
	io.WriteString(c, upgradeHead("")+"frame")
	br := bufio.NewReader(c)
	resp, _ := readResponse(t, br)
	if resp.StatusCode != http.StatusGatewayTimeout || !resp.Close {
		t.Fatalf("status %d", resp.StatusCode)
	}
	expectClosed(t, c, br)
	all := be.waitConn(t)
	if bytes.Contains(all, []byte("frame")) {
		t.Fatal("pipelined bytes reached the backend")
	}
	if r := l.nextResult(t); r.Reason != ReasonBackendTimeout {
		t.Fatalf("result %+v", r)
	}
}

// Dial failures: every backend refused → 502; nothing to try → 503 with
// Retry-After (balancer.ErrNoBackend, which the current balancer cannot
// produce over real sockets, so the mapping is checked directly).
func TestUpgradeDialFailures(t *testing.T) {
	checkLeaks(t)
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, refusedAddr(t))})
	refusal(t, l, upgradeHead(""), 502)
	if r := l.nextResult(t); r.Reason != l4.ReasonConnectFailed || r.Err == nil {
		t.Fatalf("result %+v", r)
	}

	for _, tc := range []struct {
		err    error
		status int
		reason l4.Reason
	}{
		{balancer.ErrNoBackend, 503, l4.ReasonNoBackend},
		{&balancer.DialError{Pool: "p"}, 502, l4.ReasonConnectFailed},
		{errors.New("boom"), 502, l4.ReasonConnectFailed},
	} {
		cs := &connState{}
		w := &recorder{h: http.Header{}}
		(&Route{}).dialFailed(w, cs, tc.err)
		if w.code != tc.status || cs.res.Reason != tc.reason || (tc.status == 503) != (w.h.Get("Retry-After") == "5") {
			t.Errorf("%v: %d %v %v", tc.err, w.code, cs.res.Reason, w.h)
		}
		cs = &connState{}
		w = &recorder{h: http.Header{}}
		r, _ := http.NewRequest("GET", "/", nil)
		r = r.WithContext(t.Context())
		(&Route{}).proxyError(w, r.WithContext(contextWithState(r, cs)), tc.err)
		if want := map[int]l4.Reason{503: l4.ReasonNoBackend, 502: ReasonBadGateway}[tc.status]; tc.err == balancer.ErrNoBackend && (w.code != 503 || cs.res.Reason != want) {
			t.Errorf("proxy %v: %d %v", tc.err, w.code, cs.res.Reason)
		}
	}
}

type recorder struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(code int)        { r.code = code }
