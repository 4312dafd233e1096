package main

import (
	"bytes"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"sluice/balancer/balancertest"
)

// An idle session, l4 or l7 (wss:// terminated by sluice), is held by its
// relay only (on Linux no goroutine, elsewhere two): the goroutine that
// accepted it (its stack grown by the ClientHello peek, the TLS handshake
// and the dial) and, on l7, net/http's goroutine and buffers are gone once
// the tunnel runs. This is
// what an idle player costs (scripts/bench.sh idle-l4, idle-wss); the
// sessions still work afterwards and each writes its access line.
//
// Only what belongs to the sessions under test is counted: goroutines
// started after the baseline, and sockets on this subtest's listener port
// or the backend's port. Earlier tests winding down (their relays, their
// backends' conns) cannot move the counts, and the test runs alone (no
// t.Parallel).
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
			ports := []int{l.addr("public").(*net.TCPAddr).Port, portOf(t, addr)}
			pipes0 := balancertest.ReadFDs(t).Pipes
			old := goroutineIDs()
			var conns []*websocket.Conn
			for i := range n {
				ws, _ := wsDial(t, l.addr("public").String(), "game.test", "/ws")
				defer ws.CloseNow()
				wsEcho(t, ws, fmt.Sprintf("player %d", i))
				conns = append(conns, ws)
			}
			// RELIABILITY C11: 2 fds per idle session in sluice (its two
			// sockets; no pipe), plus the test's client and backend ends.
			// On Linux both an l4 session and a wss:// tunnel (the
			// *tls.Conn driven through l7's recordWriter) run on the epoll
			// relay (the default [tuning] relay): no goroutine of their
			// own. Elsewhere the goroutine relay has two per session.
			wantRelays := 2 * n
			if runtime.GOOS == "linux" {
				wantRelays = 0
			}
			var relays, held, sockets int
			deadline := time.Now().Add(10 * time.Second)
			for {
				relays, held = 0, 0
				for id, g := range goroutines() {
					if old[id] {
						continue
					}
					switch {
					case bytes.Contains(g, []byte("sluice/l4.(*relay).run")):
						relays++
					case bytes.Contains(g, []byte("sluice.(*session).serve")),
						bytes.Contains(g, []byte("sluice/l7.(*vconn)")),
						bytes.Contains(g, []byte("sluice/l7.(*Route).serveHTTP")):
						held++
					}
				}
				sockets = balancertest.ReadFDs(t).Connected(ports...)
				if (relays == wantRelays && held == 0 && sockets == 4*n) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if relays != wantRelays || held != 0 {
				t.Fatalf("%d idle sessions: %d relay goroutines (want %d), %d accept/HTTP goroutines still held (want 0)", n, relays, wantRelays, held)
			}
			if sockets != 4*n {
				t.Fatalf("%d idle sessions hold %d socket fds on ports %v, want %d (2 in sluice + 2 test ends each)", n, sockets, ports, 4*n)
			}
			if d := balancertest.ReadFDs(t).Pipes - pipes0; d > 0 {
				t.Fatalf("%d idle sessions: %d more pipe fds, want none", n, d)
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

// goroutines returns the stack of every goroutine by its id.
func goroutines() map[uint64][]byte {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	gs := map[uint64][]byte{}
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		// "goroutine 42 [IO wait]:"
		f := bytes.Fields(g)
		if len(f) < 2 || string(f[0]) != "goroutine" {
			continue
		}
		if id, err := strconv.ParseUint(string(f[1]), 10, 64); err == nil {
			gs[id] = g
		}
	}
	return gs
}

// goroutineIDs is the set of goroutines running now: ids are never reused,
// so a goroutine not in it started later.
func goroutineIDs() map[uint64]bool {
	ids := map[uint64]bool{}
	for id := range goroutines() {
		ids[id] = true
	}
	return ids
}

// portOf is the port of a host:port address.
func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	must(t, err)
	n, err := strconv.Atoi(p)
	must(t, err)
	return n
}
