package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"sluice/tlsutil/tlstest"
)

// PROXY protocol in (issue 12 part 1): a listener behind a balancer that
// speaks PROXY takes the header's source as the client everywhere, from
// trusted peers only, and never guesses.

func proxyV2From(t *testing.T, src string) []byte {
	t.Helper()
	sa, err := net.ResolveTCPAddr("tcp", src)
	must(t, err)
	h := proxyproto.HeaderProxyFromAddrs(2, sa, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 443})
	b, err := h.Format()
	must(t, err)
	return b
}

func proxyInConfig(backend, trusted, poolProxy string) string {
	return fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
accept_proxy = true
trusted_cidrs = [%q]
[routes.r]
listener = "public"
sni = ["pp.game.test"]
pool = "p"
[pools.p]
proxy_protocol = %q
backends = [{ address = %q }]
`, trusted, poolProxy, backend)
}

// A v2 header then a ClientHello, in one segment or split anywhere (inside
// the header, at its end, inside the hello), routes the same: the backend's
// own PROXY header and the access line name the header's source.
func TestProxyInSourceIsTheClient(t *testing.T) {
	hello := tlstest.CaptureClientHello(t, &tls.Config{ServerName: "pp.game.test"})
	be, got := proxyBackend(t, len(hello))
	l := startLB(t, proxyInConfig(be.addr, "127.0.0.0/8", "v2"))
	header := proxyV2From(t, "203.0.113.7:51000")
	in := append(append([]byte(nil), header...), hello...)
	splits := []int{len(in), 1, 12, 15, 16, len(header) - 1, len(header), len(header) + 3}
	for i, at := range splits {
		c := dial(t, l.addr("public"))
		c.Write(in[:at])
		if at < len(in) {
			time.Sleep(20 * time.Millisecond)
			c.Write(in[at:])
		}
		var r proxyResult
		select {
		case r = <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("split at %d: the backend got nothing", at)
		}
		must(t, r.err)
		if src, _, ok := r.header.TCPAddrs(); !ok || src.String() != "203.0.113.7:51000" {
			t.Fatalf("split at %d: backend's PROXY source %v, want the header's", at, r.header.SourceAddr)
		}
		if !bytes.Equal(r.payload, hello) {
			t.Fatalf("split at %d: the hello reached the backend changed", at)
		}
		c.Close()
		lines := l.waitAccess(t, i+1)
		if cl := fmt.Sprint(fieldOf(lines[i], "client")); cl != "203.0.113.7:51000" {
			t.Fatalf("split at %d: access line client %s", at, cl)
		}
	}
}

// A peer outside trusted_cidrs is refused even with a valid header; a
// trusted peer without a header (a bare ClientHello, garbage) is refused,
// not guessed; a LOCAL header (the balancer's health check) is served
// with the connection's own addresses.
func TestProxyInRefusals(t *testing.T) {
	hello := tlstest.CaptureClientHello(t, &tls.Config{ServerName: "pp.game.test"})
	be, got := captureBackend(t, len(hello))

	untrusted := startLB(t, proxyInConfig(be.addr, "10.0.0.0/8", ""))
	c := dial(t, untrusted.addr("public"))
	c.Write(append(proxyV2From(t, "203.0.113.7:51000"), hello...))
	if b, _ := readAllTimeout(c, 5*time.Second); len(b) != 0 {
		t.Fatalf("untrusted peer got %q", b)
	}
	untrusted.waitRejected(t, reasonProxyUntrusted, 1)

	l := startLB(t, proxyInConfig(be.addr, "127.0.0.1/32", ""))
	for _, first := range [][]byte{hello, []byte("GET / HTTP/1.1\r\n\r\n"), []byte("PROXY TCP4 nonsense\r\n")} {
		c := dial(t, l.addr("public"))
		c.Write(first)
		if b, _ := readAllTimeout(c, 5*time.Second); len(b) != 0 {
			t.Fatalf("no header: got %q", b)
		}
	}
	l.waitRejected(t, reasonProxyInvalid, 3)

	local := []byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
	c = dial(t, l.addr("public"))
	c.Write(append(local, hello...))
	select {
	case b := <-got:
		if !bytes.Equal(b, hello) {
			t.Fatal("LOCAL: the hello reached the backend changed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("LOCAL: not served")
	}
	c.Close()
	lines := l.waitAccess(t, 1)
	if cl := fmt.Sprint(fieldOf(lines[0], "client")); cl != c.LocalAddr().String() {
		t.Fatalf("LOCAL: access line client %s, want the connection's %s", cl, c.LocalAddr())
	}
}

// On l7, X-Forwarded-For and X-Real-IP carry the header's source.
func TestProxyInForwardedFor(t *testing.T) {
	addr, _, reqs := dualWSBackend(t, "game.test")
	l := startLB(t, fmt.Sprintf(`
[listeners.dev]
address = "127.0.0.1:0"
tls = false
accept_proxy = true
trusted_cidrs = ["127.0.0.1"]
[routes.game]
listener = "dev"
sni = ["game.test"]
mode = "l7"
pool = "ws"
[pools.ws]
backends = [{ address = %q }]
`, addr))
	c := dial(t, l.addr("dev"))
	io.WriteString(c, "PROXY TCP4 198.51.100.9 10.0.0.1 40000 80\r\nGET /lobby HTTP/1.1\r\nHost: game.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	must(t, err)
	resp.Body.Close()
	select {
	case h := <-reqs:
		if h.Get("X-Forwarded-For") != "198.51.100.9" || h.Get("X-Real-Ip") != "198.51.100.9" {
			t.Fatalf("forwarded headers %v", h)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the backend got no request")
	}
}
