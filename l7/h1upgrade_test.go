package l7

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"reflect"
	"testing"
	"time"

	"sluice/balancer"
	"sluice/l4"
)

// An upgrade served by the HTTP/1.1 loop (h1upgrade.go) reaches the
// backend as the same request, and gets the same answer, status, fields,
// body and access line, as one served by net/http; the requests net/http
// must see (not GET, HTTP/1.0, Expect, an escaped path) still go to it.
func TestUpgradeLoopAnswersWhatNetHTTPAnswers(t *testing.T) {
	checkLeaks(t)
	got := make(chan string, 4)
	be := startScriptBackend(t, func(_ int, c net.Conn, br *bufio.Reader) {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		got <- r.Method + " " + r.RequestURI + " " + r.Host + "\n" + sortedFields(r.Header)
		accept := acceptKey(r.Header.Get("Sec-WebSocket-Key"))
		switch r.URL.Path {
		case "/ok":
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\n"+
				"X-Hop: dropped\r\nSec-WebSocket-Accept: "+accept+"\r\nSec-WebSocket-Protocol: game\r\nX-Server: a\r\n\r\n")
			buf := make([]byte, 4)
			if _, err := io.ReadFull(br, buf); err == nil {
				c.Write(buf)
			}
			_, _ = io.Copy(io.Discard, br) // the client ends the tunnel: one reason on both paths
		case "/badaccept":
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
		case "/refuse":
			io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Reason: full\r\nConnection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 4\r\n\r\nfull")
		case "/chunked":
			io.WriteString(c, "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n<html\r\n0\r\n\r\n")
		case "/nocontent":
			io.WriteString(c, "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
		case "/garbage":
			io.WriteString(c, "HTTP/1.1 x\r\n\r\n")
		}
	})
	newLB := func(slow bool, engine l4.Engine) *lb {
		return startLB(t, RouteConfig{Name: "r", TLS: serverTLS(), Hosts: []string{testHost, "x"},
			Pool: pool(t, balancer.ProxyNone, be.addr), slowPaths: slow, Relay: l4.Options{Engine: engine}})
	}
	// raw: the loop with sluice's default engine, whose tunnels take a raw
	// dial's descriptor (upstream.go) where the others have Go's conn.
	fast, slow, raw := newLB(false, l4.EngineGoroutine), newLB(true, l4.EngineGoroutine), newLB(false, l4.EngineEpoll)
	const up = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, tc := range []struct {
		req     string
		reaches bool // the backend gets it
		handoff bool // net/http serves it on the fast route too
	}{
		{"GET /ok?room=1 HTTP/1.1\r\nHost: x\r\n" + up + "Origin: https://game.example\r\nX-Forwarded-For: 192.0.2.1\r\n" +
			"Cookie: a=1\r\nCookie: b=2\r\nx-lower: 1\r\nKeep-Alive: 5\r\nX-Pad:  sp \t\r\n\r\n", true, false},
		{"GET /ok HTTP/1.1\r\nHost: x:443\r\n" + up + "Content-Length: 0\r\n\r\n", true, false},
		{"GET /badaccept HTTP/1.1\r\nHost: x\r\n" + up + "\r\n", true, false},
		{"GET /refuse HTTP/1.1\r\nHost: x\r\n" + up + "\r\n", true, false},
		{"GET /chunked HTTP/1.1\r\nHost: x\r\n" + up + "\r\n", true, false},
		{"GET /nocontent HTTP/1.1\r\nHost: x\r\n" + up + "\r\n", true, false},
		{"GET /garbage HTTP/1.1\r\nHost: x\r\n" + up + "\r\n", true, false},
		{"GET /ok HTTP/1.1\r\nHost: y\r\n" + up + "\r\n", false, false}, // 421
		{"GET /ok HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", false, false},
		{"GET /ok HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 12\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", false, false}, // 426
		{"GET /ok HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", false, false},
		{"GET /ok HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: close\r\nSec-WebSocket-Version: 13\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", false, false},
		{"GET /a/../ok HTTP/1.1\r\nHost: x\r\n" + up + "\r\n", false, false},
		{"POST /ok HTTP/1.1\r\nHost: x\r\n" + up + "\r\n", false, true},
		{"GET /ok HTTP/1.0\r\nHost: x\r\n" + up + "\r\n", false, true},
		{"GET /ok HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n" + up + "\r\n", true, true},
		{"GET /o%6b HTTP/1.1\r\nHost: x\r\n" + up + "\r\n", true, true},
	} {
		var answers, sent [3]string
		var results [3]Result
		for i, l := range []*lb{fast, slow, raw} {
			before, rawBefore := l.route.handoffs.Load(), l.route.rawTunnels.Load()
			c := l.dial(t)
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			answers[i] = readAnswerText(t, c)
			c.Close()
			results[i] = l.nextResult(t)
			if tc.reaches {
				select {
				case sent[i] = <-got:
				case <-time.After(5 * time.Second):
					t.Fatalf("%q: the backend got nothing", tc.req)
				}
			}
			if n := l.route.handoffs.Load() - before; i != 1 && n != map[bool]int64{false: 0, true: 1}[tc.handoff] {
				t.Errorf("%q: %d handoffs to net/http on the fast route", tc.req, n)
			}
			if n := l.route.rawTunnels.Load() - rawBefore; n != map[bool]int64{true: 1}[i == 2 && results[i].Upgraded] {
				t.Errorf("%q: %d tunnels on a raw dial's descriptor on route %d", tc.req, n, i)
			}
		}
		if answers[0] != answers[2] || sent[0] != sent[2] {
			t.Errorf("%q:\nGo's dial: answered\n%s\nsent\n%s\nthe raw dial: answered\n%s\nsent\n%s", tc.req, answers[0], sent[0], answers[2], sent[2])
		}
		if r0, r2 := results[0], results[2]; r0.Status != r2.Status || r0.Reason != r2.Reason || r0.Upgraded != r2.Upgraded ||
			r0.Backend != r2.Backend || r0.BytesIn != r2.BytesIn || r0.BytesOut != r2.BytesOut {
			t.Errorf("%q: access results differ:\nGo's dial %+v\nraw dial  %+v", tc.req, r0, r2)
		}
		if answers[0] != answers[1] {
			t.Errorf("%q:\nthe loop answered\n%s\nnet/http answered\n%s", tc.req, answers[0], answers[1])
		}
		if sent[0] != sent[1] {
			t.Errorf("%q:\nthe loop sent\n%s\nnet/http sent\n%s", tc.req, sent[0], sent[1])
		}
		r0, r1 := results[0], results[1]
		if r0.Status != r1.Status || r0.Reason != r1.Reason || r0.Requests != r1.Requests || r0.Upgraded != r1.Upgraded ||
			r0.Backend != r1.Backend || r0.BytesIn != r1.BytesIn || r0.BytesOut != r1.BytesOut {
			t.Errorf("%q: access results differ:\nloop     %+v\nnet/http %+v", tc.req, r0, r1)
		}
	}
	select {
	case s := <-got:
		t.Errorf("the backend got a request no client sent: %s", s)
	default:
	}
}

// readAnswerText reads an answer to an upgrade: status, fields but Date
// (sorted), body; after a 101, what a 4-byte write comes back as.
func readAnswerText(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "error: " + err.Error()
	}
	var body []byte
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		body = make([]byte, 4)
		if _, err := io.ReadFull(br, body); err != nil {
			t.Fatalf("tunnel: %v", err)
		}
	} else if body, err = io.ReadAll(resp.Body); err != nil {
		body = []byte("error: " + err.Error())
	}
	return resp.Status + "\n" + sortedFields(resp.Header, "Date") + "\n\n" + string(body)
}

// FuzzUpgradeRequest is a differential check of the HTTP/1.1 loop's
// upgrade parsing: a head the head scanner accepts as an upgrade and
// upgradeRequest takes must be one net/http's server hands its handler,
// as the same request (method, target, Host, fields, length).
func FuzzUpgradeRequest(f *testing.F) {
	const up = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for _, s := range []string{
		"GET /ws HTTP/1.1\r\nHost: game.example.com\r\n" + up + "\r\n",
		"GET /ws?room=1&x=%20 HTTP/1.1\r\nHost: a:443\r\n" + up + "Origin: https://a\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
		"GET /ws HTTP/1.1\nHost: a\nUpgrade: websocket\nConnection: keep-alive, Upgrade\n\n",
		"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nContent-Length: 0\r\nX-Empty:\r\nX-Tab: \ta\t\r\n\r\n",
		"GET http://a/ws HTTP/1.1\r\nHost: a\r\n" + up + "\r\n",
		"GET /ws HTTP/1.0\r\nHost: a\r\n" + up + "\r\n",
		"GET /ws HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n" + up + "\r\n",
		"GET /a/%2e%2e/ws HTTP/1.1\r\nHost: [::1]:8443\r\n" + up + "\r\n",
	} {
		f.Add([]byte(s))
	}
	rt, err := NewRoute(RouteConfig{Name: "r", Pool: pool(f, balancer.ProxyNone, "127.0.0.1:1")})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { rt.Close() })
	type seen struct {
		method, uri, host string
		proto             int
		length            int64
		header            http.Header
	}
	handled := make(chan seen, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled <- seen{r.Method, r.RequestURI, r.Host, r.ProtoMinor, r.ContentLength, r.Header.Clone()}
		w.WriteHeader(299)
	})}
	ln := newHandoff()
	go srv.Serve(ln)
	f.Cleanup(func() { srv.Close() })
	cs := &connState{ctx: context.Background(), client: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxHeadBytes {
			return
		}
		out, h := scanHead(t, data, func() int { return len(data) + 1 })
		if out.n == 0 || out.code != 0 || h.framing() != framePassthrough {
			return
		}
		head := data[out.skipped : out.skipped+out.n]
		fast := &h1fast{rt: rt, v: &vconn{head: *h}, cs: cs}
		req, ok := fast.upgradeRequest(head)
		if !ok {
			return // net/http's to answer
		}
		if req.Method != http.MethodGet || req.ProtoMinor != 1 || len(req.Header["Host"]) > 0 || stateFrom(req.Context()) != cs {
			t.Fatalf("took %q as %s %s %v", head, req.Method, req.Proto, req.Header)
		}
		c, sc := net.Pipe()
		defer c.Close()
		ln.c <- sc
		go func() { _, _ = c.Write(head) }()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 299 {
			t.Fatalf("the loop took %q, net/http's server answered %v %v", head, resp, err)
		}
		s := <-handled
		mine := seen{req.Method, req.RequestURI, req.Host, req.ProtoMinor, req.ContentLength, req.Header}
		if !reflect.DeepEqual(s, mine) {
			t.Fatalf("%q:\nthe loop parsed %+v\nnet/http's server %+v", head, mine, s)
		}
	})
}
