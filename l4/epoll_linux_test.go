//go:build linux

package l4

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var epollMode = modes[4]

// Rule 8 on the epoll engine: an idle TCP↔TCP relay holds no goroutine,
// and far less memory than the goroutine engine's two stacks. Both are
// measured the same way; the bounds are generous ratios, not exact figures
// (measured on amd64: ≈0.9 KiB per epoll relay against ≈6.5 KiB).
func TestEpollIdleRelayCost(t *testing.T) {
	checkLeaks(t)
	const relays = 300
	gh, gs, gg := idleRelayCost(t, tcpModes[0], relays)
	eh, es, eg := idleRelayCost(t, epollMode, relays)
	compareIdleCost(t, "relay", gh, gs, gg, eh, es, eg)
}

// compareIdleCost checks what idle relays of the two engines hold (per
// relay: heap, stacks, goroutines): none of the epoll engine's holds a
// goroutine, and all it holds is under a third of the goroutine engine's.
func compareIdleCost(t *testing.T, what string, gh, gs, gg, eh, es, eg float64) {
	t.Helper()
	t.Logf("per idle %s: goroutine engine %.0f B heap + %.0f B stacks, %.2f goroutines; epoll engine %.0f B heap + %.0f B stacks, %.2f goroutines",
		what, gh, gs, gg, eh, es, eg)
	if eg > 0.1 {
		t.Errorf("%.2f goroutines per idle epoll %s, want none", eg, what)
	}
	if gg < 1.9 {
		t.Errorf("%.2f goroutines per idle goroutine-engine %s, want 2: the comparison is off", gg, what)
	}
	if eh+es > (gh+gs)/3 {
		t.Errorf("epoll %s holds %.0f B idle, goroutine engine's %.0f B: want under a third", what, eh+es, gh+gs)
	}
}

// A Close from elsewhere (balancer's CloseConnections) ends an epoll relay
// as it ends a goroutine relay: an error with net.ErrClosed, and the other
// side closed.
func TestEpollForeignClose(t *testing.T) {
	checkLeaks(t)
	cc, rc := tcpPair(t)
	rb, bc := tcpPair(t)
	defer cc.Close()
	defer bc.Close()
	done := make(chan Stats, 1)
	Start(t.Context(), rc, rb, Options{Engine: EngineEpoll}, func(st Stats) { done <- st })
	// The relay runs: a message crosses.
	if _, err := cc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	bc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(bc, buf); err != nil {
		t.Fatal(err)
	}
	rb.Close()
	st := within(t, done, 10*time.Second, "relay end")
	if st.Reason != ReasonError || !errors.Is(st.Err, net.ErrClosed) {
		t.Errorf("reason %q err %v, want error/net.ErrClosed", st.Reason, st.Err)
	}
	cc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := cc.Read(buf); n != 0 || !isEOF(err) {
		t.Errorf("client read %d, %v; want EOF", n, err)
	}
}

// EngineEpoll on conns it cannot run (a wrapper, as for a *tls.Conn) falls
// back to the goroutine engine: the relay works, on the buffer path.
func TestEpollFallsBack(t *testing.T) {
	checkLeaks(t)
	cc, rc := tcpPair(t)
	rb, bc := tcpPair(t)
	defer cc.Close()
	defer bc.Close()
	done := make(chan Stats, 1)
	go func() { done <- Relay(context.Background(), wrapped{rc}, rb, Options{Engine: EngineEpoll}) }()
	if err := within(t, goSend(cc, 100*kib, 13, closeWrite), 10*time.Second, "send"); err != nil {
		t.Fatal(err)
	}
	r := within(t, goRecv(bc), 10*time.Second, "backend read")
	if r.n != 100*kib || r.sum != sumOf(100*kib, 13) || !isEOF(r.err) {
		t.Fatalf("backend got %d bytes (sum ok %v), %v", r.n, r.sum == sumOf(100*kib, 13), r.err)
	}
	bc.Close()
	st := within(t, done, 10*time.Second, "relay")
	if st.Reason != ReasonEOF || st.PathIn != PathBuffer || st.BytesIn != 100*kib {
		t.Errorf("stats %+v: want eof on the buffer path", st)
	}
}

// Many relays share a shard: concurrent ping-pongs on 50 epoll relays each
// get their own bytes back, in order.
func TestEpollManyRelays(t *testing.T) {
	checkLeaks(t)
	const relays, rounds = 50, 100
	errc := make(chan error, relays)
	for i := range relays {
		h := startRelay(t, epollMode, Options{})
		go echo(h.backend, 8)
		go func() {
			msg := make([]byte, 8)
			got := make([]byte, 8)
			for j := range rounds {
				msg[0], msg[7] = byte(i), byte(j)
				if _, err := h.client.Write(msg); err != nil {
					errc <- err
					return
				}
				h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(h.client, got); err != nil {
					errc <- err
					return
				}
				if got[0] != byte(i) || got[7] != byte(j) {
					errc <- errors.New("crossed messages")
					return
				}
			}
			errc <- nil
		}()
	}
	for range relays {
		if err := within(t, errc, 30*time.Second, "ping-pong"); err != nil {
			t.Fatal(err)
		}
	}
}

// Small round trips on every shard complete while a bulk transfer streams
// (whether the bulk paused by itself or used up its turns).
func TestBulkDoesNotStarveOthers(t *testing.T) {
	checkLeaks(t)
	for _, m := range tcpModes {
		t.Run(m.name, func(t *testing.T) {
			bulk := startRelay(t, m, Options{})
			stop := make(chan struct{})
			var moved atomic.Int64
			go func() {
				_, _ = io.Copy(io.Discard, bulk.backend)
			}()
			writer := make(chan error, 1)
			go func() {
				buf := make([]byte, 64*kib)
				for {
					select {
					case <-stop:
						writer <- closeWriteErr(bulk.client)
						return
					default:
					}
					n, err := bulk.client.Write(buf)
					moved.Add(int64(n))
					if err != nil {
						writer <- err
						return
					}
				}
			}()
			for moved.Load() < 4*mib { // streaming before the pings start
				time.Sleep(time.Millisecond)
			}
			// One relay per shard at least: the next Starts go round the
			// shards.
			shardsN := max(1, runtime.GOMAXPROCS(0))
			errc := make(chan error, shardsN+1)
			before := moved.Load()
			for range shardsN + 1 {
				h := startRelay(t, m, Options{})
				go echo(h.backend, 8)
				go func() {
					msg := make([]byte, 8)
					for range 200 {
						if _, err := h.client.Write(msg); err != nil {
							errc <- err
							return
						}
						h.client.SetReadDeadline(time.Now().Add(20 * time.Second))
						if _, err := io.ReadFull(h.client, msg); err != nil {
							errc <- err
							return
						}
					}
					errc <- nil
				}()
			}
			for range shardsN + 1 {
				if err := within(t, errc, 30*time.Second, "ping-pong beside the bulk"); err != nil {
					t.Fatal(err)
				}
			}
			during := moved.Load() - before
			close(stop)
			if err := within(t, writer, 10*time.Second, "bulk writer"); err != nil {
				t.Fatal(err)
			}
			if during == 0 {
				t.Error("the bulk transfer stood still while the pings ran: the test proves nothing")
			}
			t.Logf("%d MiB of bulk moved during the pings", during/mib)
		})
	}
}

func closeWriteErr(c net.Conn) error {
	closeWrite(c)
	return nil
}

// A direction with more queued than turnBytes, and room for it on the other
// side, moves one turn and queues itself behind the shard's other relays
// (it would not see another edge for what is already queued), and every
// byte still arrives.
func TestEpollTurns(t *testing.T) {
	checkLeaks(t)
	cc, rc := tcpPair(t)
	rb, bc := tcpPair(t)
	defer cc.Close()
	defer bc.Close()
	const n = 2 * mib
	for _, err := range []error{rb.SetWriteBuffer(4 * mib), rc.SetReadBuffer(4 * mib), cc.SetWriteBuffer(4 * mib)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	sent := goSend(cc, n, 14, closeWrite)
	// Wait until the relay's client socket holds more than a turn.
	raw, _ := rc.SyscallConn()
	q := 0
	for range 5000 {
		raw.Control(func(fd uintptr) { q, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if q > 2*turnBytes {
			break
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("%d KiB queued before the relay starts", q/kib)
	turns0 := turnsQueued.Load()
	got := goRecv(bc)
	done := make(chan Stats, 1)
	Start(t.Context(), rc, rb, Options{Engine: EngineEpoll}, func(st Stats) { done <- st })
	if err := within(t, sent, 20*time.Second, "send"); err != nil {
		t.Fatal(err)
	}
	r := within(t, got, 20*time.Second, "backend read")
	if r.n != n || r.sum != sumOf(n, 14) || !isEOF(r.err) {
		t.Fatalf("backend got %d bytes (sum ok %v), %v", r.n, r.sum == sumOf(n, 14), r.err)
	}
	bc.Close()
	if st := within(t, done, 10*time.Second, "relay"); st.Reason != ReasonEOF || st.BytesIn != n {
		t.Errorf("stats %+v", st)
	}
	if turnsQueued.Load() == turns0 {
		t.Error("no turn queued: a direction with more than turnBytes ready ran to EAGAIN alone")
	}
}

// The wss:// shape on the epoll engine: an idle relay whose client end is a
// *tls.Conn over a NonblockingTransport holds no goroutine and no buffer,
// against two goroutines and a 2 KiB buffer on the goroutine engine. The
// bound is a generous ratio of the two (both include the relay's *tls.Conn
// state, about 3 KiB, which is not the engine's to shrink).
func TestEpollIdleTLSRelayCost(t *testing.T) {
	checkLeaks(t)
	const relays = 200
	gh, gs, gg := idleTLSRelayCost(t, false, relays)
	eh, es, eg := idleTLSRelayCost(t, true, relays)
	compareIdleCost(t, "TLS relay", gh, gs, gg, eh, es, eg)
}

// idleTLSRelayCost is idleRelayCost for TLS↔TCP relays: over an nbConn
// on the epoll engine if nb, else the goroutine engine. The TLS handshakes
// are done before the first snapshot: only the relays count.
func idleTLSRelayCost(tb testing.TB, nb bool, n int) (heap, stack, goroutines float64) {
	tb.Helper()
	es := make([]idleEnds, n)
	for i := range es {
		cc, rc := tcpPair(tb)
		rb, bc := tcpPair(tb)
		var under net.Conn = rc
		if nb {
			under = &nbConn{Conn: rc}
		}
		client, server := tlsPair(tb, cc, under)
		es[i] = idleEnds{client: client, relayClient: server, relayBackend: rb, backend: bc, raw: cc}
	}
	engine := EngineGoroutine
	if nb {
		engine = EngineEpoll
	}
	return idleCost(tb, es, engine)
}

// Records crypto/tls read ahead before the relay started (a client that
// pipelines messages behind its upgrade request) raise no epoll event of
// their own: the engine reads the *tls.Conn once at the start, so they
// reach the backend without the client sending more.
func TestEpollTLSBufferedBeforeStart(t *testing.T) {
	checkLeaks(t)
	cc, rc := tcpPair(t)
	rb, bc := tcpPair(t)
	defer cc.Close()
	defer bc.Close()
	client, server := tlsPair(t, cc, &nbConn{Conn: rc})
	// Two records, both in the socket before the server reads the first.
	for _, m := range []string{"A", "second record"} {
		if _, err := client.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	one := make([]byte, 1)
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(server, one); err != nil || one[0] != 'A' {
		t.Fatalf("first record: %q, %v", one, err)
	}
	done := make(chan Stats, 1)
	Start(t.Context(), server, rb, Options{Engine: EngineEpoll}, func(st Stats) { done <- st })
	got := make([]byte, len("second record"))
	bc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(bc, got); err != nil || string(got) != "second record" {
		t.Fatalf("backend got %q, %v; want the record read ahead", got, err)
	}
	client.Close()
	bc.Close()
	st := within(t, done, 10*time.Second, "relay end")
	if st.PathIn != PathBuffer || st.BytesIn != int64(len(got)) {
		t.Errorf("stats %+v", st)
	}
}

// The relays of mode epoll-shed, the only ones here with an Owner, shed
// their conns as they start.
func init() { shedAtStart = true }

// A relay that shed its conns (an idle L4 player's, or a wss:// tunnel's
// backend side) is ended by its owner through Kill, as a closed conn ends
// one that did not: an error with net.ErrClosed, and both peers closed.
func TestEpollShedKill(t *testing.T) {
	checkLeaks(t)
	for _, m := range modes[8:] {
		t.Run(m.name, func(t *testing.T) { testShedKill(t, m) })
	}
}

func testShedKill(t *testing.T, m mode) {
	h := startRelay(t, m, Options{})
	// The relay runs: a message crosses each way.
	for _, dir := range [][2]net.Conn{{h.client, h.backend}, {h.backend, h.client}} {
		if _, err := dir[0].Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		dir[1].SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(dir[1], make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
	}
	k := h.owner.killer()
	if k == nil {
		t.Fatal("the relay did not detach")
	}
	k.Kill()
	st := h.wait(t)
	if st.Reason != ReasonError || !errors.Is(st.Err, net.ErrClosed) {
		t.Errorf("reason %q err %v, want error/net.ErrClosed", st.Reason, st.Err)
	}
	for name, c := range map[string]net.Conn{"client": h.client, "backend": h.backend} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || !isEOF(err) {
			t.Errorf("%s read %d, %v; want EOF", name, n, err)
		}
	}
}

// A backend's last bytes and its FIN reach the client in one segment, as
// HAProxy sends them: the relay sends the bytes that came with the FIN with
// MSG_MORE and its shutdown adds the FIN to them. The client, which sends
// nothing, then receives exactly two segments: the SYN-ACK and data+FIN
// (three when the FIN goes alone). Loopback delivers a write within the
// call, so the backend's answer and FIN are both queued before the relay
// starts and its first event carries both.
func TestEpollFINRidesWithLastBytes(t *testing.T) {
	checkLeaks(t)
	for _, shed := range []bool{false, true} {
		cc, rc := tcpPair(t)
		rb, bc := tcpPair(t)
		if _, err := bc.Write([]byte("answer")); err != nil {
			t.Fatal(err)
		}
		if err := bc.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		done := make(chan Stats, 1)
		opts := Options{Engine: EngineEpoll}
		if shed {
			opts.Owner, opts.ShedClient = &testOwner{}, true
		}
		Start(t.Context(), rc, rb, opts, func(st Stats) { done <- st }) // sheds at once with an Owner (shedAtStart)
		cc.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(cc)
		if err != nil || string(got) != "answer" {
			t.Fatalf("client read %q, %v", got, err)
		}
		rawc, _ := cc.SyscallConn()
		var info *unix.TCPInfo
		var ierr error
		rawc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
		if ierr != nil {
			t.Fatal(ierr)
		}
		if info.Data_segs_in != 1 || info.Segs_in != 2 {
			t.Errorf("shed %v: the client received %d segments, %d with data; want 2 (SYN-ACK, data+FIN) and 1",
				shed, info.Segs_in, info.Data_segs_in)
		}
		cc.CloseWrite()
		st := within(t, done, 10*time.Second, "relay end")
		if st.Reason != ReasonEOF || st.BytesOut != 6 {
			t.Errorf("shed %v: stats %+v, want eof with 6 bytes out", shed, st)
		}
		cc.Close()
		bc.Close()
	}
}

// The relay suite runs in one more mode on Linux: the backend handed to
// StartSockets as a descriptor, as the l4 path hands it the raw dial's.
func init() {
	modes = append(modes, mode{name: "epoll-fd", path: PathSplice, start: true, engine: EngineEpoll, shed: true, fd: true})
	tcpModes = append(tcpModes, modes[len(modes)-1])
	// Both sides as descriptors: the l4 path's raw accept and raw dial.
	modes = append(modes, mode{name: "epoll-fds", path: PathSplice, start: true, engine: EngineEpoll, shed: true, fd: true, cfd: true})
	tcpModes = append(tcpModes, modes[len(modes)-1])
}

// startFDFromConn returns a Start that gives StartSockets a duplicate of the
// backend conn's descriptor and closes the conn: the relay owns the only
// descriptor of that socket, as it owns a raw dial's.
func startFDFromConn(tb testing.TB, m mode) func(ctx context.Context, client, backend net.Conn, opts Options, done func(Stats)) {
	dup := func(c net.Conn) int {
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			tb.Fatal(err)
		}
		fd := -1
		var derr error
		rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
		if derr != nil {
			tb.Fatal(derr)
		}
		c.Close()
		return fd
	}
	return func(ctx context.Context, client, backend net.Conn, opts Options, done func(Stats)) {
		cs := Socket{Conn: client, FD: -1}
		if m.cfd {
			cs = Socket{FD: dup(client)}
		}
		bs := Socket{FD: dup(backend)}
		if !StartSockets(ctx, cs, bs, opts, done) {
			unix.Close(bs.FD)
			tb.Fatal("StartSockets did not start")
		}
	}
}

// fdOf returns c's descriptor number; c keeps it open.
func fdOf(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	rc.Control(func(s uintptr) { fd = int(s) })
	return fd
}

// WaitFD, the raw dial's wait: writable at once on a connected socket;
// readable when the peer writes (EPOLLIN alone: the raw dial's sign that
// the backend answered), and when it closes (with EPOLLRDHUP); the
// deadline's error when nothing comes; ctx's error when ctx ends. The
// shard goroutines it started are gone afterwards (checkLeaks).
func TestWaitFD(t *testing.T) {
	checkLeaks(t)
	a, b := tcpPair(t)
	defer a.Close()
	defer b.Close()
	fd := fdOf(t, a)
	ctx := t.Context()
	if ev, err := WaitFD(ctx, fd, true, time.Now().Add(10*time.Second)); err != nil || ev&unix.EPOLLOUT == 0 {
		t.Fatalf("write wait on a connected socket: %#x, %v", ev, err)
	}
	if ev, err := WaitFD(ctx, fd, false, time.Now().Add(50*time.Millisecond)); !errors.Is(err, os.ErrDeadlineExceeded) || ev != 0 {
		t.Fatalf("read wait with nothing to read: %#x, %v, want the deadline's error", ev, err)
	}
	go b.Write([]byte("x"))
	if ev, err := WaitFD(ctx, fd, false, time.Now().Add(10*time.Second)); err != nil || ev != unix.EPOLLIN {
		t.Fatalf("read wait while the peer writes: %#x, %v, want EPOLLIN alone", ev, err)
	}
	var one [1]byte
	if n, _ := a.Read(one[:]); n != 1 {
		t.Fatal("the byte is not there")
	}
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(20*time.Millisecond, cancel)
	if _, err := WaitFD(cctx, fd, false, time.Time{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("read wait under a cancelled ctx: %v, want context.Canceled", err)
	}
	go b.Close()
	if ev, err := WaitFD(ctx, fd, false, time.Now().Add(10*time.Second)); err != nil || ev&unix.EPOLLRDHUP == 0 {
		t.Fatalf("read wait while the peer closes: %#x, %v, want EPOLLRDHUP", ev, err)
	}
}

// pingThenEOF sends "ping" from the client end cc through a relay to the
// backend end bc, half-closes both and returns the relay's Stats.
func pingThenEOF(t *testing.T, cc, bc *net.TCPConn, done <-chan Stats) Stats {
	t.Helper()
	if _, err := cc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	bc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(bc, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	cc.CloseWrite()
	bc.CloseWrite()
	return within(t, done, 10*time.Second, "relay end")
}

// dupClose returns a descriptor of its own for c's socket and closes c.
func dupClose(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	fd, err := unix.FcntlInt(uintptr(fdOf(t, c)), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	return fd
}

// refuser is an Owner that refuses Detach: the backend's connection was
// closed (CloseConnections) before the relay started.
type refuser struct{}

func (refuser) Detach(Killer) bool { return false }

// StartSockets with a backend descriptor and an Owner that refuses ends the relay at once, as killed,
// closing both sides; with one that accepts, the relay sets the backend's
// deferred options (Options.BackendOptions) on its descriptor once it has
// lived optionsDelay.
func TestStartSocketsOwner(t *testing.T) {
	checkLeaks(t)
	dupOf := func(c *net.TCPConn) int { return dupClose(t, c) }

	cc, rc := tcpPair(t)
	rb, bc := tcpPair(t)
	done := make(chan Stats, 1)
	if !StartSockets(t.Context(), Socket{Conn: rc, FD: -1}, Socket{FD: dupOf(rb)}, Options{Engine: EngineEpoll, Owner: refuser{}}, func(st Stats) { done <- st }) {
		t.Fatal("StartSockets did not start")
	}
	st := within(t, done, 10*time.Second, "relay end")
	if st.Reason != ReasonError || !errors.Is(st.Err, net.ErrClosed) {
		t.Errorf("reason %q err %v, want error/net.ErrClosed", st.Reason, st.Err)
	}
	for _, c := range []*net.TCPConn{cc, bc} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || !isEOF(err) {
			t.Errorf("peer read %d, %v; want EOF", n, err)
		}
		c.Close()
	}

	defer func(d time.Duration) { optionsDelay = d }(optionsDelay)
	optionsDelay = 10 * time.Millisecond
	cc, rc = tcpPair(t)
	rb, bc = tcpPair(t)
	defer cc.Close()
	defer bc.Close()
	fd := dupOf(rb)
	set := make(chan int, 2)
	opts := Options{Engine: EngineEpoll, Owner: &testOwner{}, IdleTimeout: time.Second,
		BackendOptions: func(fd int) error { set <- fd; return nil }}
	if !StartSockets(t.Context(), Socket{Conn: rc, FD: -1}, Socket{FD: fd}, opts, func(st Stats) { done <- st }) {
		t.Fatal("StartSockets did not start")
	}
	if got := within(t, set, 10*time.Second, "BackendOptions"); got != fd {
		t.Errorf("BackendOptions got descriptor %d, want the backend's %d", got, fd)
	}
	if st := pingThenEOF(t, cc, bc, done); st.Reason != ReasonEOF || len(set) != 0 {
		t.Errorf("reason %q, BackendOptions calls after the first: %d; want eof and 0", st.Reason, len(set))
	}
}

// A WaitFD woken by its event leaves the descriptor in its shard's epoll
// set, disarmed (waitRegs): the next WaitFD on it and the relay that takes
// it re-arm that registration (MOD) and work as with a fresh one; a
// descriptor closed meanwhile leaves a stale entry that the next user of
// its number gets past (MOD finds nothing, ADD). Each wait also reports
// no event that was not there.
func TestWaitFDRegistrationReused(t *testing.T) {
	checkLeaks(t)
	dupOf := func(c *net.TCPConn) int { return dupClose(t, c) }
	ctx := t.Context()
	cc, rc := tcpPair(t)
	rb, bc := tcpPair(t)
	defer cc.Close()
	defer bc.Close()
	fd := dupOf(rb)
	if _, err := WaitFD(ctx, fd, true, time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if waitReg(fd, false) == nil {
		t.Fatal("a wait woken by its event left no registration to re-arm")
	}
	if ev, err := WaitFD(ctx, fd, false, time.Now().Add(20*time.Millisecond)); !errors.Is(err, os.ErrDeadlineExceeded) || ev != 0 {
		t.Fatalf("re-armed read wait with nothing to read: %#x, %v", ev, err)
	}
	if waitReg(fd, false) != nil {
		t.Fatal("a wait that timed out kept its registration")
	}
	if _, err := bc.Write([]byte("h")); err != nil {
		t.Fatal(err)
	}
	if ev, err := WaitFD(ctx, fd, false, time.Now().Add(10*time.Second)); err != nil || ev != unix.EPOLLIN {
		t.Fatalf("read wait: %#x, %v", ev, err)
	}
	done := make(chan Stats, 1)
	if !StartSockets(ctx, Socket{Conn: rc, FD: -1}, Socket{FD: fd}, Options{Engine: EngineEpoll, IdleTimeout: time.Minute},
		func(st Stats) { done <- st }) {
		t.Fatal("StartSockets did not start")
	}
	if waitReg(fd, false) != nil {
		t.Fatal("the relay did not take the registration")
	}
	// The relay gets the byte that woke the wait, and what follows, both ways.
	cc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(cc, make([]byte, 1)); err != nil {
		t.Fatalf("the backend's first byte: %v", err)
	}
	if st := pingThenEOF(t, cc, bc, done); st.Reason != ReasonEOF {
		t.Errorf("reason %q, want eof", st.Reason)
	}

	// A stale entry: the descriptor closed after its wait, its number
	// taken by a new socket.
	a, b := tcpPair(t)
	defer b.Close()
	fd = dupOf(a)
	if _, err := WaitFD(ctx, fd, true, time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	a2, b2 := tcpPair(t)
	defer b2.Close()
	fd2 := dupOf(a2)
	defer unix.Close(fd2)
	if fd2 != fd {
		t.Skipf("descriptor %d not reused (got %d)", fd, fd2)
	}
	if _, err := b2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if ev, err := WaitFD(ctx, fd2, false, time.Now().Add(10*time.Second)); err != nil || ev != unix.EPOLLIN {
		t.Fatalf("wait on a reused descriptor number: %#x, %v", ev, err)
	}
}
