package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Room affinity on the l7 path: every client of ?room=42 reaches the same
// game server; other rooms spread over both.
func TestHashRoomAffinityL7(t *testing.T) {
	t.Parallel()
	addrA, _, reqsA := dualWSBackend(t, "a.test")
	addrB, _, reqsB := dualWSBackend(t, "b.test")
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
[routes.game]
listener = "public"
sni = ["game.test"]
mode = "l7"
pool = "rooms"
[pools.rooms]
balance = "hash"
hash_key = "query:room"
backends = [{ address = %q }, { address = %q }]
`, addrA, addrB))

	count := func(path string, n int) (a, b int) {
		for range n {
			ws, _ := wsDial(t, l.addr("public").String(), "game.test", path)
			wsEcho(t, ws, "x")
			ws.Close(websocket.StatusNormalClosure, "")
			select {
			case <-reqsA:
				a++
			case <-reqsB:
				b++
			case <-time.After(5 * time.Second):
				t.Fatal("no backend saw the upgrade")
			}
		}
		return a, b
	}
	if a, b := count("/ws?room=42", 100); a != 0 && b != 0 {
		t.Fatalf("room 42 split over both backends: %d and %d", a, b)
	}
	var sawA, sawB bool
	for room := range 20 {
		a, _ := count(fmt.Sprintf("/ws?room=%d", room), 1)
		sawA, sawB = sawA || a == 1, sawB || a == 0
	}
	if !sawA || !sawB {
		t.Fatal("20 different rooms all landed on one backend")
	}
}

// Room affinity on the l4 path with hash_key = "sni": every connection for
// one name reaches the same TLS backend.
func TestHashSNIAffinityL4(t *testing.T) {
	t.Parallel()
	ba, certA := tlsEchoBackend(t, "room.game.test")
	bb, _ := tlsEchoBackend(t, "room.game.test")
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
[routes.rooms]
listener = "public"
sni = ["*.game.test"]
pool = "p"
[pools.p]
balance = "hash"
hash_key = "sni"
backends = [{ address = %q }, { address = %q }]
`, ba.addr, bb.addr))
	seen := func(sni string) *x509.Certificate {
		c, err := tls.Dial("tcp", l.addr("public").String(), &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		must(t, err)
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0]
	}
	first := seen("room42.game.test")
	for i := range 100 {
		if !seen("room42.game.test").Equal(first) {
			t.Fatalf("connection %d for room42 reached the other backend", i)
		}
	}
	onA := 0
	for i := range 20 {
		if seen(fmt.Sprintf("room%d.game.test", 100+i)).Equal(certA) {
			onA++
		}
	}
	if onA == 0 || onA == 20 {
		t.Fatalf("20 names: %d on backend A: no spread", onA)
	}
}

// Player slots: with max_connections = 2 on each of 2 backends, the 5th
// concurrent player is refused (l4: close; l7: 503 + Retry-After) without a
// dial, and gets in once a slot frees.
func TestCapacity(t *testing.T) {
	t.Parallel()
	t.Run("l4", func(t *testing.T) {
		b1, b2 := echoBackend(t), echoBackend(t)
		l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
plain_route = "raw"
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
balance = "least_conn"
backends = [{ address = %q, max_connections = 2 }, { address = %q, max_connections = 2 }]
`, b1.addr, b2.addr))
		echo := func(c net.Conn) error {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, "p"); err != nil {
				return err
			}
			_, err := io.ReadFull(c, make([]byte, 1))
			return err
		}
		var held []net.Conn
		for i := range 4 {
			c := dial(t, l.addr("public"))
			if err := echo(c); err != nil {
				t.Fatalf("player %d: %v", i+1, err)
			}
			held = append(held, c)
		}
		fifth := dial(t, l.addr("public"))
		if err := echo(fifth); err == nil {
			t.Fatal("the 5th player got a slot on full servers")
		}
		if n := b1.accepts() + b2.accepts(); n != 4 {
			t.Fatalf("backends accepted %d connections, want 4 (no dial for the refused one)", n)
		}
		held[0].Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			c := dial(t, l.addr("public"))
			if echo(c) == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no slot after a player left")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("l7", func(t *testing.T) {
		a1, _, _ := dualWSBackend(t, "a.test")
		a2, _, _ := dualWSBackend(t, "b.test")
		l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
[routes.game]
listener = "public"
sni = ["game.test"]
mode = "l7"
pool = "p"
[pools.p]
backends = [{ address = %q, max_connections = 2 }, { address = %q, max_connections = 2 }]
`, a1, a2))
		var held []*websocket.Conn
		for range 4 {
			ws, _ := wsDial(t, l.addr("public").String(), "game.test", "/ws")
			wsEcho(t, ws, "in")
			held = append(held, ws)
		}
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", l.addr("public").String())
			},
			TLSClientConfig: &tls.Config{ServerName: "game.test", InsecureSkipVerify: true},
		}
		defer tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, resp, err := websocket.Dial(ctx, "wss://game.test/ws", &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("5th player: %v, %v; want 503 with Retry-After", resp, err)
		}
		held[0].Close(websocket.StatusNormalClosure, "")
		deadline := time.Now().Add(5 * time.Second)
		for {
			ws, resp, err := websocket.Dial(ctx, "wss://game.test/ws", &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
			if err == nil {
				wsEcho(t, ws, "in at last")
				ws.CloseNow()
				break
			}
			if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
				t.Fatalf("after a slot freed: %v %v", resp, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, ws := range held {
			ws.CloseNow()
		}
	})
}

// A backend whose listener closes is marked down by the active checks (one
// log line), gets no new connections, and comes back when it reopens.
func TestHealthDownAndBack(t *testing.T) {
	good := echoBackend(t)
	flaky := listenTCP(t)
	flakyAddr := flaky.Addr().String()
	flakyBackend := startBackend(t, flaky, func(c net.Conn) { io.Copy(c, c) })
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
plain_route = "raw"
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
health = { check = "tcp", interval = "100ms", timeout = "50ms", rise = 2, fall = 2 }
backends = [{ address = %q }, { address = %q }]
`, flakyAddr, good.addr))
	_ = flakyBackend

	waitLog := func(msg string, n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for l.logs.FilterMessage(msg).Len() < n {
			if time.Now().After(deadline) {
				t.Fatalf("no %q line; logs: %v", msg, l.logs.All())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	flaky.Close()
	waitLog("backend down", 1)
	if e := l.logs.FilterMessage("backend down").All()[0]; e.ContextMap()["backend"] != flakyAddr {
		t.Fatalf("down line for %v", e.ContextMap())
	}
	for range 10 {
		c := dial(t, l.addr("public"))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "x")
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("with one backend down, a connection failed: %v", err)
		}
		c.Close()
	}
	for _, e := range l.waitAccess(t, 10) {
		if e.ContextMap()["backend"] == flakyAddr {
			t.Fatal("a connection went to the backend marked down")
		}
	}
	ln, err := net.Listen("tcp", flakyAddr)
	if err != nil {
		t.Skipf("cannot reopen %s: %v", flakyAddr, err)
	}
	startBackend(t, ln, func(c net.Conn) { io.Copy(c, c) })
	waitLog("backend up", 1)
	if n := l.logs.FilterMessage("backend down").Len(); n != 1 {
		t.Fatalf("%d down lines for one transition", n)
	}
}
