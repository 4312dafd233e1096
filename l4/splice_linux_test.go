//go:build linux

package l4

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"sluice/balancer/balancertest"
)

// ports are the two listening ports of h's loopback pairs: every socket of
// the relay under test (the test's two ends, the relay's two) has one of
// them at one end.
func (h *harness) ports() []int {
	return []int{h.clientRaw.RemoteAddr().(*net.TCPAddr).Port, h.backend.LocalAddr().(*net.TCPAddr).Port}
}

func pooledPipes() int {
	pipes.mu.Lock()
	defer pipes.mu.Unlock()
	return len(pipes.free)
}

// C11 / rule 8: an idle TCP↔TCP relay holds its two sockets, no pipe and
// no buffer.
// Every relay first moves data both ways (so each took pipes), then idles.
// Sockets are counted by the ports of the relays' pairs, so other sockets of
// the process do not move the count; pipes only the relays make (and this
// test runs alone: no t.Parallel).
func TestIdleRelayHoldsNoPipe(t *testing.T) {
	checkLeaks(t)
	for _, m := range tcpModes {
		t.Run(m.name, func(t *testing.T) {
			const relays = 100
			runtime.GC() // and again: finalizers may close what the first found
			runtime.GC()
			fds0 := balancertest.ReadFDs(t)
			pool0 := pooledPipes()
			bufs0 := recvBufsOut.Load()

			hs := make([]*harness, relays)
			msg := make([]byte, 4*kib)
			buf := make([]byte, len(msg))
			for i := range hs {
				h := startRelay(t, m, Options{})
				hs[i] = h
				for _, pair := range [][2]net.Conn{{h.client, h.backend}, {h.backend, h.client}} {
					if _, err := pair[0].Write(msg); err != nil {
						t.Fatal(err)
					}
					pair[1].SetReadDeadline(time.Now().Add(10 * time.Second))
					if _, err := io.ReadFull(pair[1], buf); err != nil {
						t.Fatal(err)
					}
				}
			}
			time.Sleep(100 * time.Millisecond) // let every direction park
			runtime.GC()
			runtime.GC()
			fds1 := balancertest.ReadFDs(t)
			pool1 := pooledPipes()

			var ports []int
			for _, h := range hs {
				ports = append(ports, h.ports()...)
			}
			sockets := fds1.Connected(ports...) - fds0.Connected(ports...)
			held := (fds1.Pipes - fds0.Pipes) - 2*(pool1-pool0) // pipe fds outside the pool
			t.Logf("%d idle relays: %d socket fds (%.1f per relay incl. the test's ends), +%d pipe fds, pool %d→%d pipes (cap %d)",
				relays, sockets, float64(sockets)/relays, fds1.Pipes-fds0.Pipes, pool0, pool1, pipePoolCap)
			if sockets != 4*relays {
				t.Errorf("socket fds grew by %d, want %d (2 relay ends + 2 test ends per relay)", sockets, 4*relays)
			}
			if held != 0 {
				t.Errorf("idle relays hold %d pipe fds outside the pool, want 0", held)
			}
			if bufs := recvBufsOut.Load() - bufs0; bufs != 0 {
				t.Errorf("idle relays hold %d recv buffers, want 0", bufs)
			}
			if pool1 > pipePoolCap {
				t.Errorf("pool holds %d pipes, cap %d", pool1, pipePoolCap)
			}
			for _, h := range hs {
				if !h.running() {
					t.Fatal("a relay ended while idle")
				}
			}
		})
	}
}

// A direction parked for readability wakes for data that arrived while it
// was pumping (edge-triggered netpoller: readiness must never be assumed).
func TestNoLostWakeup(t *testing.T) {
	checkLeaks(t)
	for _, m := range tcpModes {
		t.Run(m.name, func(t *testing.T) {
			h := startRelay(t, m, Options{})
			buf := make([]byte, 1)
			for i := range 2000 {
				if _, err := h.client.Write([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
				h.backend.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(h.backend, buf); err != nil || buf[0] != byte(i) {
					t.Fatalf("message %d: %v %v", i, buf, err)
				}
			}
		})
	}
}

// T18: when no pipe can be made (EMFILE), chunks go through a buffer, the
// data stays exact and SpliceFallbacks counts them.
func TestSpliceFallbackWithoutPipes(t *testing.T) {
	checkLeaks(t)
	for _, m := range tcpModes {
		t.Run(m.name, func(t *testing.T) {
			pipes.drain()
			old := newPipe
			newPipe = func() (*pipe, error) { return nil, unix.EMFILE }
			defer func() { newPipe = old }()

			h := startRelay(t, m, Options{})
			const n = 2 * mib
			got := goRecv(h.backend)
			if err := within(t, goSend(h.client, n, 11, closeWrite), 20*time.Second, "send"); err != nil {
				t.Fatal(err)
			}
			r := within(t, got, 20*time.Second, "backend read")
			if r.n != n || r.sum != sumOf(n, 11) || !isEOF(r.err) {
				t.Fatalf("backend got %d bytes (sum ok %v), %v", r.n, r.sum == sumOf(n, 11), r.err)
			}
			h.backend.Close()
			st := h.wait(t)
			if st.Reason != ReasonEOF || st.PathIn != PathSplice || st.BytesIn != n || st.SpliceFallbacks == 0 {
				t.Errorf("stats %+v: want eof, splice path, %d bytes, fallbacks > 0", st, n)
			}
		})
	}
}

// Small messages on TCP↔TCP go through recv/send (no pipe, path buffer);
// a 1 MiB burst in between switches that direction to splice and back, and
// every byte arrives in order.
func TestAdaptiveSmallBulkSmall(t *testing.T) {
	checkLeaks(t)
	for _, m := range tcpModes {
		t.Run(m.name, func(t *testing.T) {
			h := startRelay(t, m, Options{})
			go echo(h.backend, 100)
			msg := make([]byte, 100)
			buf := make([]byte, 100)
			pingPong := func(round int) {
				t.Helper()
				for i := range 50 {
					msg[0], msg[99] = byte(round), byte(i)
					if _, err := h.client.Write(msg); err != nil {
						t.Fatal(err)
					}
					h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
					if _, err := io.ReadFull(h.client, buf); err != nil || buf[0] != byte(round) || buf[99] != byte(i) {
						t.Fatalf("round %d message %d: %v", round, i, err)
					}
				}
			}
			pingPong(0)
			// 1 MiB as 100-byte echoes would take long: send it in one go, read it
			// back concurrently (echo answers per 100 bytes, so bulk builds up in
			// the relay's receive queue when the client writes faster than the
			// backend echoes).
			const n = 100 * 10486 // ≈1 MiB, a multiple of 100
			got := make(chan recvResult, 1)
			go func() { got <- recvAll(io.LimitReader(h.client, n)) }()
			if _, err := sendN(h.client, n, 12); err != nil {
				t.Fatal(err)
			}
			h.client.SetReadDeadline(time.Now().Add(20 * time.Second))
			if r := within(t, got, 20*time.Second, "echo read"); r.n != n || r.sum != sumOf(n, 12) {
				t.Fatalf("echo: %d bytes (sum ok %v), %v", r.n, r.sum == sumOf(n, 12), r.err)
			}
			pingPong(1)
			h.client.Close()
			st := h.wait(t)
			t.Logf("stats %+v", st)
			if want := int64(n + 100*100); st.BytesIn != want || st.BytesOut != want {
				t.Errorf("bytes in/out %d/%d, want %d", st.BytesIn, st.BytesOut, want)
			}
			if st.PathIn != PathSplice || st.SplicedIn == 0 {
				t.Errorf("client→backend: path %v, %d bytes spliced; want splice for the burst", st.PathIn, st.SplicedIn)
			}
			if st.SplicedIn == st.BytesIn {
				t.Errorf("client→backend spliced all %d bytes, want the small messages through recv/send", st.BytesIn)
			}
			if n := recvBufsOut.Load(); n != 0 {
				t.Errorf("%d recv buffers not given back", n)
			}
		})
	}
}

// 64-byte messages on TCP↔TCP never take a pipe: path buffer, 0 spliced.
func TestAdaptiveSmallOnly(t *testing.T) {
	checkLeaks(t)
	for _, m := range tcpModes {
		t.Run(m.name, func(t *testing.T) {
			h := startRelay(t, m, Options{})
			go echo(h.backend, 64)
			msg := make([]byte, 64)
			for range 200 {
				if _, err := h.client.Write(msg); err != nil {
					t.Fatal(err)
				}
				h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(h.client, msg); err != nil {
					t.Fatal(err)
				}
			}
			h.client.Close()
			st := h.wait(t)
			if st.PathIn != PathBuffer || st.PathOut != PathBuffer || st.SplicedIn != 0 || st.SplicedOut != 0 {
				t.Errorf("stats %+v: want buffer paths, nothing spliced", st)
			}
			if st.BytesIn != 200*64 || st.BytesOut != 200*64 {
				t.Errorf("bytes in/out %d/%d", st.BytesIn, st.BytesOut)
			}
		})
	}
}
