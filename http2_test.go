package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"testing"
)

// Through the whole server: an l7 route negotiates h2 and serves a request
// over it; one with http2 = false negotiates http/1.1 only.
func TestHTTP2Served(t *testing.T) {
	t.Parallel()
	addr, _, _ := dualWSBackend(t, "game.test")
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
[routes.on]
listener = "public"
sni = ["on.test"]
mode = "l7"
pool = "ws"
[routes.off]
listener = "public"
sni = ["off.test"]
mode = "l7"
pool = "ws"
http2 = false
[pools.ws]
backends = [{ address = %q }]
`, addr))
	lbAddr := l.addr("public").String()
	for name, want := range map[string]string{"on.test": "h2", "off.test": "http/1.1"} {
		c, err := tls.Dial("tcp", lbAddr, &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
		must(t, err)
		if got := c.ConnectionState().NegotiatedProtocol; got != want {
			t.Errorf("%s: negotiated %q, want %q", name, got, want)
		}
		c.Close()
	}
	protos := new(http.Protocols)
	protos.SetHTTP2(true)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", lbAddr)
		},
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		Protocols:       protos,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://on.test/ws")
	must(t, err)
	resp.Body.Close()
	// The backend only speaks WebSocket: any answer of its own will do.
	if resp.ProtoMajor != 2 || resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusMisdirectedRequest {
		t.Fatalf("h2 GET through sluice: %s %d", resp.Proto, resp.StatusCode)
	}
	// The access line says which protocol the connection spoke; the two
	// handshake-only connections answered no request and name none.
	tr.CloseIdleConnections()
	var h2Lines int
	for _, e := range l.waitAccess(t, 3) {
		switch p := fieldOf(e, "proto"); {
		case fieldOf(e, "requests") == int64(0) && p == nil:
		case p == "h2" && fieldOf(e, "route") == "on":
			h2Lines++
		default:
			t.Errorf("access line: proto %v, route %v, requests %v", p, fieldOf(e, "route"), fieldOf(e, "requests"))
		}
	}
	if h2Lines != 1 {
		t.Fatalf("%d access lines with proto h2, want 1", h2Lines)
	}
}
