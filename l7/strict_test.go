package l7

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"sluice/balancer"
)

// strictLB is a TLS route whose pool is a raw backend that counts accepts.
func strictLB(t *testing.T, cfg RouteConfig) (*lb, *rawBackend) {
	t.Helper()
	be := startRawBackend(t, nil)
	p := pool(t, balancer.ProxyNone, be.addr)
	cfg.Name, cfg.Hosts, cfg.TLS = "h5", []string{testHost}, serverTLS()
	cfg.Locations = []Location{{Path: "/ws", Pool: p}, {Path: "/", Pool: p}}
	return startLB(t, cfg), be
}

// refusal sends raw bytes and expects status, Connection: close, then close.
func refusal(t *testing.T, l *lb, raw string, status int) *bufio.Reader {
	t.Helper()
	c := l.dial(t)
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, _ := readResponse(t, br)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d", resp.StatusCode, status)
	}
	if !resp.Close {
		t.Fatalf("no Connection: close: %v", resp.Header)
	}
	expectClosed(t, c, br)
	return br
}

// B2 (RELIABILITY T9): invalid upgrades are refused, nothing is dialed.
func TestUpgradeRejects(t *testing.T) {
	checkLeaks(t)
	l, be := strictLB(t, RouteConfig{})
	base := "Host: " + testHost + "\r\n"
	for _, tc := range []struct {
		name   string
		req    string
		status int
	}{
		{"missing key", "GET /ws HTTP/1.1\r\n" + base + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"bad key", "GET /ws HTTP/1.1\r\n" + base + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"key of 15 bytes", "GET /ws HTTP/1.1\r\n" + base + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"version 8", "GET /ws HTTP/1.1\r\n" + base + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + validKey + "\r\nSec-WebSocket-Version: 8\r\n\r\n", 426},
		{"several tokens", "GET /ws HTTP/1.1\r\n" + base + "Upgrade: proto1, websocket, proto2\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + validKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"two Upgrade headers", "GET /ws HTTP/1.1\r\n" + base + "Upgrade: websocket\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + validKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"POST", "POST /ws HTTP/1.1\r\n" + base + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + validKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"HTTP/1.0", "GET /ws HTTP/1.0\r\n" + base + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + validKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"no Host", "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + validKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"no Host HTTP/1.0", "GET /ws HTTP/1.0\r\n\r\n", 400},
		{"Connection keep-alive only", "GET /ws HTTP/1.1\r\n" + base + "Upgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: " + validKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := l.dial(t)
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, _ := readResponse(t, br)
			if resp.StatusCode != tc.status || !resp.Close {
				t.Fatalf("status %d close %v, want %d + close", resp.StatusCode, resp.Close, tc.status)
			}
			if tc.status == 426 && resp.Header.Get("Sec-WebSocket-Version") != "13" {
				t.Fatalf("426 without Sec-WebSocket-Version: 13: %v", resp.Header)
			}
			expectClosed(t, c, br)
			if r := l.nextResult(t); r.Status != tc.status || r.Upgraded {
				t.Fatalf("result %+v", r)
			}
		})
	}
	if n := be.accepted(); n != 0 {
		t.Fatalf("backend accepted %d connections", n)
	}
}

// B3 (T10): 431 for a 16 KiB + 1 head and for 101 fields, 414 for an
// 8 KiB + 1 request line; a head of exactly 16 KiB passes the reader.
func TestHeadLimits(t *testing.T) {
	checkLeaks(t)
	l, be := strictLB(t, RouteConfig{})
	headOf := func(total int) string {
		h := "GET / HTTP/1.1\r\nHost: " + testHost + "\r\nX-Pad: "
		return h + strings.Repeat("a", total-len(h)-4) + "\r\n\r\n"
	}
	if got := len(headOf(16<<10 + 1)); got != 16<<10+1 {
		t.Fatalf("bad test head: %d", got)
	}
	var fields strings.Builder
	fields.WriteString("GET / HTTP/1.1\r\nHost: " + testHost + "\r\n")
	for range 100 {
		fields.WriteString("X-F: v\r\n")
	}
	fields.WriteString("\r\n")
	line := "GET /" + strings.Repeat("a", 8<<10+1-len("GET / HTTP/1.1")) + " HTTP/1.1"
	if len(line) != 8<<10+1 {
		t.Fatalf("bad test line: %d", len(line))
	}
	t.Run("head 16KiB+1", func(t *testing.T) { refusal(t, l, headOf(16<<10+1), 431) })
	t.Run("101 fields", func(t *testing.T) { refusal(t, l, fields.String(), 431) })
	t.Run("request line 8KiB+1", func(t *testing.T) { refusal(t, l, line+"\r\nHost: "+testHost+"\r\n\r\n", 414) })
	if n := be.accepted(); n != 0 {
		t.Fatalf("backend accepted %d", n)
	}
	for range 3 {
		if r := l.nextResult(t); r.Reason != ReasonHeaderTooLarge {
			t.Fatalf("result %+v", r)
		}
	}
	// Exactly at the limit: validated and proxied (the raw backend answers
	// nothing, so only the accept is checked).
	c := l.dial(t)
	io.WriteString(c, headOf(16<<10))
	deadline := time.Now().Add(5 * time.Second)
	for be.accepted() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if be.accepted() != 1 {
		t.Fatal("a 16 KiB head was not forwarded")
	}
	c.Close()
}

// B4 (T10): a head dribbled one byte at a time gets 408 at HeaderTimeout
// from the end of the handshake, not extended by progress.
func TestSlowHeaders(t *testing.T) {
	parallelCheckLeaks(t)
	l, be := strictLB(t, RouteConfig{HeaderTimeout: time.Second})
	c := l.dial(t) // handshake done
	start := time.Now()
	req := upgradeHead("")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < len(req); i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := c.Write([]byte{req[i]}); err != nil {
				return
			}
		}
	}()
	br := bufio.NewReader(c)
	resp, _ := readResponse(t, br)
	elapsed := time.Since(start)
	close(stop)
	<-done
	if resp.StatusCode != 408 || !resp.Close {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if elapsed < 900*time.Millisecond || elapsed > 3*time.Second {
		t.Fatalf("408 after %v, want about 1s", elapsed)
	}
	if r := l.nextResult(t); r.Reason != ReasonHeaderTimeout || r.Status != 408 {
		t.Fatalf("result %+v", r)
	}
	if be.accepted() != 0 {
		t.Fatal("backend dialed")
	}
}

// A connection that sends nothing after the handshake is closed silently at
// HeaderTimeout.
func TestSilentAfterHandshake(t *testing.T) {
	parallelCheckLeaks(t)
	l, _ := strictLB(t, RouteConfig{HeaderTimeout: 300 * time.Millisecond})
	c := l.dial(t)
	start := time.Now()
	expectClosed(t, c, nil)
	if e := time.Since(start); e < 250*time.Millisecond || e > 3*time.Second {
		t.Fatalf("closed after %v", e)
	}
	if r := l.nextResult(t); r.Reason != ReasonHeaderTimeout || r.Requests != 0 {
		t.Fatalf("result %+v", r)
	}
}

// B5 (rule 6, T11): smuggling framings get their status and the backend
// gets nothing, on the upgrade path and on the plain proxy path.
func TestSmuggling(t *testing.T) {
	checkLeaks(t)
	l, be := strictLB(t, RouteConfig{})
	up := func(extra string) string { return upgradeHead(extra) }
	post := func(head string) string {
		return "POST /api HTTP/1.1\r\nHost: " + testHost + "\r\n" + head
	}
	for _, tc := range []struct {
		name   string
		req    string
		status int
	}{
		{"CL+TE", up("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n", 400},
		{"two differing CLs", up("Content-Length: 0\r\nContent-Length: 5\r\n"), 400},
		{"two identical CLs", up("Content-Length: 0\r\nContent-Length: 0\r\n"), 400},
		{"TE gzip", up("Transfer-Encoding: gzip\r\n"), 501},
		{"TE gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), 501},
		{"TE on HTTP/1.0", "GET /ws HTTP/1.0\r\nHost: " + testHost + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + validKey + "\r\nSec-WebSocket-Version: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"obs-fold", up("X-A: a\r\n b\r\n"), 400},
		{"bare CR", up("X-A: a\rb\r\n"), 400},
		{"GET upgrade with body", up("Content-Length: 10\r\n") + "0123456789", 400},
		{"plain CL+TE", post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400},
		{"plain TE on HTTP/1.0", "POST /api HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"plain CL list", post("Content-Length: 5, 5\r\n\r\nhello"), 400},
		{"space before colon", post("Content-Length : 5\r\n\r\nhello"), 400},
		{"HTTP/2.0 request line", "GET / HTTP/2.0\r\nHost: " + testHost + "\r\n\r\n", 505},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refusal(t, l, tc.req, tc.status)
			if r := l.nextResult(t); r.Status != tc.status {
				t.Fatalf("result %+v", r)
			}
		})
	}
	if n := be.accepted(); n != 0 {
		t.Fatalf("backend accepted %d", n)
	}
}

// B7 (rule 5, T15): a non-101 answer is relayed with its body and the
// connection closes; bytes the client pipelined behind the upgrade (a frame
// and a second request) never reach the backend.
func TestBackendRefusalPipelined(t *testing.T) {
	checkLeaks(t)
	body := bytes.Repeat([]byte("x"), 1024)
	be := startRawBackend(t, func(c *net.TCPConn, head []byte) {
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Why: room full\r\nContent-Length: 1024\r\n\r\n")
		c.Write(body)
	})
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	c := l.dial(t)
	frame := []byte{0x81, 0x85, 1, 2, 3, 4, 'h' ^ 1, 'e' ^ 2, 'l' ^ 3, 'l' ^ 4, 'o' ^ 1}
	pipelined := upgradeHead("") + string(frame) + "GET /admin HTTP/1.1\r\nHost: " + testHost + "\r\n\r\n"
	if _, err := io.WriteString(c, pipelined); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, got := readResponse(t, br)
	if resp.StatusCode != 403 || !bytes.Equal(got, body) || !resp.Close || resp.Header.Get("X-Why") != "room full" {
		t.Fatalf("status %d, %d body bytes, close %v, header %v", resp.StatusCode, len(got), resp.Close, resp.Header)
	}
	expectClosed(t, c, br)
	all := be.waitConn(t)
	end := bytes.Index(all, []byte("\r\n\r\n")) + 4
	if end != len(all) || bytes.Count(all, []byte("HTTP/1.1\r\n")) != 1 || bytes.Contains(all, []byte("/admin")) {
		t.Fatalf("backend read %d bytes, request head is %d: %q", len(all), end, all)
	}
	if r := l.nextResult(t); r.Status != 403 || r.Upgraded || r.Reason != ReasonUpgradeRefused {
		t.Fatalf("result %+v", r)
	}
}

// B8 (T15): a 101 with a wrong accept, or switching to another protocol,
// gets 502 and no tunnel.
func TestBadSwitch(t *testing.T) {
	checkLeaks(t)
	for _, tc := range []struct {
		name string
		resp func(key string) string
	}{
		{"wrong accept", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey("AAAAAAAAAAAAAAAAAAAAAA==") + "\r\n\r\n"
		}},
		{"missing accept", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
		}},
		{"h2c", func(key string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\r\n\r\n"
		}},
		{"garbage", func(string) string { return "SSH-2.0-OpenSSH\r\n\r\n" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := startRawBackend(t, func(c *net.TCPConn, head []byte) {
				io.WriteString(c, tc.resp(headerValue(head, "Sec-WebSocket-Key"))+"\x81\x02hi")
			})
			l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
			c := l.dial(t)
			io.WriteString(c, upgradeHead("")+"\x81\x80\x00\x00\x00\x00")
			br := bufio.NewReader(c)
			resp, _ := readResponse(t, br)
			if resp.StatusCode != 502 || !resp.Close {
				t.Fatalf("status %d", resp.StatusCode)
			}
			expectClosed(t, c, br)
			all := be.waitConn(t)
			if end := bytes.Index(all, []byte("\r\n\r\n")) + 4; end != len(all) {
				t.Fatalf("backend got bytes after the request: %q", all[end:])
			}
			if r := l.nextResult(t); r.Reason != ReasonBadUpgradeResponse || r.Upgraded {
				t.Fatalf("result %+v", r)
			}
		})
	}
}

// B9: the backend's 101 and first frame in one write, and the client's
// request and first frame in one write: both frames arrive byte-exact and in
// order.
func TestCoalescedFrames(t *testing.T) {
	checkLeaks(t)
	serverFrame := []byte("\x81\x05hello")
	clientFrame := []byte{0x82, 0x83, 9, 8, 7, 6, 1 ^ 9, 2 ^ 8, 3 ^ 7}
	gotFromClient := make(chan []byte, 1)
	be := startRawBackend(t, func(c *net.TCPConn, head []byte) {
		end := bytes.Index(head, []byte("\r\n\r\n")) + 4
		resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
			acceptKey(headerValue(head, "Sec-WebSocket-Key")) + "\r\n\r\n"
		c.Write(append([]byte(resp), serverFrame...))
		got := append([]byte(nil), head[end:]...)
		buf := make([]byte, 64)
		for len(got) < len(clientFrame) {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
		}
		gotFromClient <- got
		c.CloseWrite()
	})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	c := l.dial(t)
	if _, err := c.Write(append([]byte(upgradeHead("")), clientFrame...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("%v %v", resp, err)
	}
	if resp.Header.Get("Sec-WebSocket-Accept") != acceptKey(validKey) {
		t.Fatalf("accept %q", resp.Header.Get("Sec-WebSocket-Accept"))
	}
	frame := make([]byte, len(serverFrame))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(br, frame); err != nil || !bytes.Equal(frame, serverFrame) {
		t.Fatalf("frame to client %q %v", frame, err)
	}
	if got := <-gotFromClient; !bytes.Equal(got, clientFrame) {
		t.Fatalf("frame to backend %q", got)
	}
	c.Close()
	be.waitConn(t)
	if r := l.nextResult(t); !r.Upgraded || r.BytesIn != int64(len(clientFrame)) || r.BytesOut != int64(len(serverFrame)) {
		t.Fatalf("result %+v", r)
	}
}

// A chunked body that breaks the framing mid-stream fails the request with
// 400 and the connection closes; the body is read before a backend is
// chosen (issue 10), so nothing of the request reaches a backend.
func TestChunkedViolationMidBody(t *testing.T) {
	parallelCheckLeaks(t)
	be := startRawBackend(t, func(c *net.TCPConn, head []byte) {})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	c := l.dial(t)
	io.WriteString(c, "POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	time.Sleep(100 * time.Millisecond)
	io.WriteString(c, "5\nworld\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, _ := io.ReadAll(c)
	if !bytes.HasPrefix(rest, []byte("HTTP/1.1 400 ")) || bytes.Count(rest, []byte("HTTP/1.1 ")) != 1 {
		t.Fatalf("got %q", rest)
	}
	if r := l.nextResult(t); r.Reason != ReasonSmuggling || r.Status != 400 {
		t.Fatalf("result %+v", r)
	}
	if n := be.accepted(); n != 0 {
		t.Fatalf("backend accepted %d connections for a refused body", n)
	}
}
