package main

import (
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"

	"sluice/tlsutil/tlstest"
)

// acceptThenReset is a game server in a crash loop: it accepts, lets the
// client's first bytes land (so the write does not fail), then resets
// without reading or answering.
func acceptThenReset(t *testing.T) *backend {
	return startBackend(t, listenTCP(t), func(c net.Conn) {
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
	})
}

// RELIABILITY T12 "accepted and closed", D2: on an l4 route the player is
// retried on the next backend, which gets the PROXY header and the hello
// sha256-identical to a direct connection; no player sees the reset.
func TestL4RetryBackendThatAcceptsThenResets(t *testing.T) {
	t.Parallel()
	hello := tlstest.CaptureClientHello(t, &tls.Config{ServerName: "d2.game.test"})
	bad := acceptThenReset(t)
	good, got := proxyBackend(t, len(hello))
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
[routes.r]
listener = "public"
sni = ["d2.game.test"]
pool = "p"
[pools.p]
proxy_protocol = "v2"
backends = [{ address = %q }, { address = %q }]
`, bad.addr, good.addr))
	for i := range 4 {
		c := dial(t, l.addr("public"))
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		answer := make([]byte, 2)
		if _, err := io.ReadFull(c, answer); err != nil || string(answer) != "ok" {
			t.Fatalf("connection %d: the player got %q, %v instead of the good backend's answer", i, answer, err)
		}
		r := <-got
		must(t, r.err)
		if sha256.Sum256(r.payload) != sha256.Sum256(hello) {
			t.Fatalf("connection %d: the retried backend got a different hello", i)
		}
		if src, _, ok := r.header.TCPAddrs(); !ok || src.String() != c.LocalAddr().String() {
			t.Fatalf("connection %d: PROXY source %v, want %v", i, src, c.LocalAddr())
		}
		c.Close()
	}
	attempts := map[any]int{}
	for _, e := range l.waitAccess(t, 4) {
		attempts[fieldOf(e, "attempts")]++
	}
	if attempts[int64(2)] != 2 || attempts[int64(1)] != 2 {
		t.Fatalf("attempts per connection %v, want two retried and two first-try (round robin)", attempts)
	}
	if bad.accepts() != 2 {
		t.Fatalf("the resetting backend accepted %d connections, want 2", bad.accepts())
	}
}

// The same on an l7 route: a WebSocket upgrade sent to a backend that
// accepts and resets is retried on the next one instead of answering 502.
func TestL7RetryBackendThatAcceptsThenResets(t *testing.T) {
	t.Parallel()
	bad := acceptThenReset(t)
	addr, _, _ := dualWSBackend(t, "game.test")
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
[routes.game]
listener = "public"
sni = ["game.test"]
mode = "l7"
pool = "ws"
[pools.ws]
backends = [{ address = %q }, { address = %q }]
`, bad.addr, addr))
	for i := range 4 {
		ws, _ := wsDial(t, l.addr("public").String(), "game.test", "/ws")
		wsEcho(t, ws, fmt.Sprintf("player %d", i))
		ws.Close(websocket.StatusNormalClosure, "")
	}
	if bad.accepts() != 2 {
		t.Fatalf("the resetting backend accepted %d connections, want 2", bad.accepts())
	}
}
