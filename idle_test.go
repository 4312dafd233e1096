package main

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// An idle session, l4 or l7 (wss:// terminated by sluice), is held by its
// relay's two goroutines only: the goroutine that accepted it (its stack
// grown by the ClientHello peek, the TLS handshake and the dial) and, on l7,
// net/http's goroutine and buffers are gone once the tunnel runs. This is
// what an idle player costs (scripts/bench.sh idle-l4, idle-wss); the
// sessions still work afterwards and each writes its access line.
func TestIdleSessionHoldsOnlyRelayGoroutines(t *testing.T) {
	addr, _, _ := dualWSBackend(t, "game.test")
	for _, mode := range []string{"l4", "l7"} {
		t.Run(mode, func(t *testing.T) {
			l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
[routes.game]
listener = "public"
sni = ["game.test"]
mode = %q
pool = "ws"
[pools.ws]
backends = [{ address = %q }]
`, mode, addr))
			const n = 5
			fds0 := countFDs(t)
			var conns []*websocket.Conn
			for i := range n {
				ws, _ := wsDial(t, l.addr("public").String(), "game.test", "/ws")
				defer ws.CloseNow()
				wsEcho(t, ws, fmt.Sprintf("player %d", i))
				conns = append(conns, ws)
			}
			var relays, held int
			deadline := time.Now().Add(10 * time.Second)
			for {
				relays, held = 0, 0
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
					switch {
					case bytes.Contains(g, []byte("sluice/l4.(*relay).run")):
						relays++
					case bytes.Contains(g, []byte("sluice.(*session).serve")),
						bytes.Contains(g, []byte("sluice/l7.(*vconn)")),
						bytes.Contains(g, []byte("sluice/l7.(*Route).serveHTTP")):
						held++
					}
				}
				if (relays == 2*n && held == 0) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if relays != 2*n || held != 0 {
				t.Fatalf("%d idle sessions: %d relay goroutines (want %d), %d accept/HTTP goroutines still held (want 0)", n, relays, 2*n, held)
			}
			// RELIABILITY C11: 2 fds per idle session in sluice (its two
			// sockets; no pipe), plus the test's client and backend ends.
			if d := countFDs(t) - fds0; d != 4*n {
				t.Fatalf("%d idle sessions hold %d more fds, want %d (2 in sluice + 2 test ends each)", n, d, 4*n)
			}
			for i, ws := range conns {
				wsEcho(t, ws, fmt.Sprintf("player %d again", i))
				ws.Close(websocket.StatusNormalClosure, "")
			}
			// How the two ends close their sockets after the WebSocket
			// close handshake (FIN, or RST when a TLS record is still
			// unread) is their race; each session must end through its
			// relay with its bytes counted, not fail or time out.
			for _, e := range l.waitAccess(t, n) {
				r := fieldOf(e, "reason")
				if r != "eof" && r != "client_reset" && r != "backend_reset" || fieldOf(e, "bytes_out").(int64) == 0 {
					t.Errorf("access line %v", e.ContextMap())
				}
			}
		})
	}
}
