package balancer

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestPassiveDown: a refused backend is DOWN after MaxFails failed dials
// (one event, reason names the count), gets no dial afterwards, and with no
// active check comes back after FailTimeout.
func TestPassiveDown(t *testing.T) {
	good := startSink(t)
	refused := closedAddr(t)
	var ev events
	p := mustPool(t, PoolConfig{
		Name: "passive", Backends: []BackendConfig{{Address: refused}, {Address: good.addr()}},
		FailTimeout: 300 * time.Millisecond, OnChange: ev.record,
	})
	bad := p.backends()[0]
	for range 30 {
		if b := dialDone(t, p, DialRequest{}); b != p.backends()[1] {
			t.Fatalf("lease on %s", b.Addr())
		}
	}
	if bad.Dials() != DefaultMaxFails || bad.Healthy() {
		t.Fatalf("refused backend: %d dials, healthy %v; want %d dials and DOWN", bad.Dials(), bad.Healthy(), DefaultMaxFails)
	}
	evs := ev.list()
	if len(evs) != 1 || evs[0].Healthy || !strings.HasPrefix(evs[0].Reason, "5 consecutive connect failures: ") {
		t.Fatalf("events %+v", evs)
	}
	waitFor(t, 2*time.Second, "revival after FailTimeout", func() bool { return p.Status()[0].Healthy })
	if evs := ev.list(); len(evs) != 2 || !evs[1].Healthy {
		t.Fatalf("events %+v", evs)
	}
}

// TestPassiveObserve: resets before the first byte count as failures; bytes
// from the backend end the streak.
func TestPassiveObserve(t *testing.T) {
	s := startSink(t)
	p := mustPool(t, PoolConfig{Name: "observe", Backends: backendsOf(s.addr()), MaxFails: 3})
	b := p.backends()[0]
	use := func(bytes int64, reset bool) {
		l, err := p.Dial(context.Background(), DialRequest{})
		if err != nil {
			t.Fatal(err)
		}
		l.Observe(bytes, reset)
		l.Observe(100, false) // only the first call counts
		l.Conn.Close()
		l.Release()
	}
	use(0, true)
	use(0, true)
	use(10, false) // streak ends
	use(0, true)
	use(0, true)
	if !b.Healthy() {
		t.Fatal("DOWN without 3 consecutive failures")
	}
	use(0, true)
	if b.Healthy() {
		t.Fatal("3 resets before the first byte did not mark it DOWN")
	}
}

// TestCapacity: 2 backends with MaxConnections 2: the 5th concurrent Dial
// fails with ErrFull (and ErrNoBackend) without dialling, and succeeds once
// a lease is released.
func TestCapacity(t *testing.T) {
	ss := sinks(t, 2)
	bs := sinkConfigs(ss)
	for i := range bs {
		bs[i].MaxConnections = 2
	}
	for _, algo := range algorithms {
		t.Run(algo.String(), func(t *testing.T) {
			p := mustPool(t, PoolConfig{Name: "cap", Backends: bs, Balance: algo})
			var held []*Lease
			for range 4 {
				held = append(held, dialHold(t, p, DialRequest{HashKey: "k", HasHashKey: true}))
			}
			_, err := p.Dial(context.Background(), DialRequest{HashKey: "k", HasHashKey: true})
			if !errors.Is(err, ErrFull) || !errors.Is(err, ErrNoBackend) {
				t.Fatalf("5th dial: %v, want ErrFull", err)
			}
			if d := p.backends()[0].Dials() + p.backends()[1].Dials(); d != 4 {
				t.Errorf("%d dials, want 4", d)
			}
			held[0].Conn.Close()
			held[0].Release()
			if l := dialHold(t, p, DialRequest{HashKey: "k", HasHashKey: true}); l.Backend != held[0].Backend {
				t.Errorf("freed slot on %s, lease on %s", held[0].Backend.Addr(), l.Backend.Addr())
			}
		})
	}
}

// TestBackup: the backup gets nothing while a primary is healthy, everything
// when all primaries are DOWN, and nothing again once one is back.
func TestBackup(t *testing.T) {
	ss := sinks(t, 3)
	bs := sinkConfigs(ss)
	bs[2].Backup = true
	p := mustPool(t, PoolConfig{Name: "backup", Backends: bs})
	a, b, backup := p.backends()[0], p.backends()[1], p.backends()[2]
	for range 10 {
		if dialDone(t, p, DialRequest{}) == backup {
			t.Fatal("backup used while primaries are healthy")
		}
	}
	p.setHealth(a, false, "test", false)
	for range 10 {
		if dialDone(t, p, DialRequest{}) != b {
			t.Fatal("want the remaining primary")
		}
	}
	p.setHealth(b, false, "test", false)
	for range 10 {
		if dialDone(t, p, DialRequest{}) != backup {
			t.Fatal("want the backup with all primaries DOWN")
		}
	}
	p.setHealth(a, true, "test", false)
	if dialDone(t, p, DialRequest{}) != a {
		t.Fatal("backup still used after a primary came back")
	}
}

// echoByte checks that l's connection is still open: it can write.
func connWorks(l *Lease) bool {
	_, err := l.Conn.Write([]byte("x"))
	return err == nil
}

// TestDrain: a draining backend gets no new leases; its live conns keep
// working and Active reaches 0 as they are released. Maint with
// MaintCloseAfter closes live conns after the delay.
func TestDrain(t *testing.T) {
	ss := sinks(t, 2)
	p := mustPool(t, PoolConfig{Name: "drain", Backends: sinkConfigs(ss), Balance: LeastConn, MaintCloseAfter: 100 * time.Millisecond})
	a := p.backends()[0]
	var onA []*Lease
	for len(onA) < 3 {
		if l := dialHold(t, p, DialRequest{}); l.Backend == a {
			onA = append(onA, l)
		}
	}
	if err := p.SetState(a.Addr(), Drain); err != nil {
		t.Fatal(err)
	}
	if err := p.SetState("nope:1", Drain); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("unknown backend: %v", err)
	}
	for range 10 {
		if dialHold(t, p, DialRequest{}).Backend == a {
			t.Fatal("draining backend got a new lease")
		}
	}
	for _, l := range onA {
		if !connWorks(l) {
			t.Fatal("draining closed a live connection")
		}
	}
	if st := p.Status()[0]; st.AdminState != Drain || st.Active != 3 {
		t.Fatalf("status %+v", st)
	}
	for _, l := range onA {
		l.Conn.Close()
		l.Release()
	}
	if st := p.Status()[0]; st.Active != 0 {
		t.Fatalf("active %d after releases", st.Active)
	}

	// Maint + close-after.
	if err := p.SetState(a.Addr(), Ready); err != nil {
		t.Fatal(err)
	}
	var again []*Lease
	for len(again) < 2 {
		if l := dialHold(t, p, DialRequest{}); l.Backend == a {
			again = append(again, l)
		}
	}
	start := time.Now()
	if err := p.SetState(a.Addr(), Maint); err != nil {
		t.Fatal(err)
	}
	for _, l := range again {
		_ = l.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := l.Conn.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("read on a maint conn: %v, want use of closed connection", err)
		}
	}
	if took := time.Since(start); took < 90*time.Millisecond {
		t.Errorf("closed after %v, before MaintCloseAfter", took)
	}
	p.Close() // stops timers; idempotent with Cleanup's
}

// TestCloseConnections closes live leases on demand.
func TestCloseConnections(t *testing.T) {
	s := startSink(t)
	p := mustPool(t, PoolConfig{Name: "cc", Backends: backendsOf(s.addr())})
	l1, l2 := dialHold(t, p, DialRequest{}), dialHold(t, p, DialRequest{})
	l2.Conn.Close()
	l2.Release()
	if n, err := p.CloseConnections(s.addr()); n != 1 || err != nil {
		t.Fatalf("closed %d, %v; want 1", n, err)
	}
	if connWorks(l1) {
		t.Error("connection still open")
	}
}

// TestAllUnhealthy: Reject fails at once with 0 dials; TryAll dials anyway
// and succeeds when one backend is actually alive.
func TestAllUnhealthy(t *testing.T) {
	alive := startSink(t)
	addrs := []string{closedAddr(t), alive.addr(), closedAddr(t)}
	for _, mode := range []AllUnhealthy{Reject, TryAll} {
		t.Run(mode.String(), func(t *testing.T) {
			p := mustPool(t, PoolConfig{Name: "all", Backends: backendsOf(addrs...), OnAllUnhealthy: mode})
			for _, b := range p.backends() {
				p.setHealth(b, false, "test", false)
			}
			for range 20 {
				l, err := p.Dial(context.Background(), DialRequest{})
				if mode == Reject {
					if !errors.Is(err, ErrUnhealthy) || !errors.Is(err, ErrNoBackend) {
						t.Fatalf("err %v, want ErrUnhealthy", err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("try_all: %v", err)
				}
				l.Conn.Close()
				l.Release()
			}
			var dials uint64
			for _, b := range p.backends() {
				dials += b.Dials()
			}
			if mode == Reject && dials != 0 {
				t.Errorf("reject dialled %d times", dials)
			}
		})
	}
	if m, err := ParseAllUnhealthy("try_all"); m != TryAll || err != nil {
		t.Error("ParseAllUnhealthy")
	}
}

// TestSlowStart: right after coming UP a backend gets clearly fewer picks
// than its equal share (about 1/10 of its weight: < 25 % of 200 picks), and
// its full share (50 % ± 2) once SlowStart has passed.
func TestSlowStart(t *testing.T) {
	for _, algo := range []Algorithm{RoundRobin, LeastConn, RandomTwo} {
		t.Run(algo.String(), func(t *testing.T) {
			const window = 300 * time.Millisecond
			p := mustPool(t, PoolConfig{Name: "slow", Backends: backendsOf("10.0.0.1:1", "10.0.0.2:1"), Balance: algo, SlowStart: window})
			b := p.backends()[1]
			share := func() int {
				n := 0
				for range 200 {
					i := p.pickOnce(&DialRequest{})
					// least_conn / random_two see load: hold what was picked
					p.backends()[i].live.active.Add(1)
					if i == 1 {
						n++
					}
				}
				for _, x := range p.backends() {
					x.live.active.Store(0)
				}
				return n
			}
			p.setHealth(b, false, "test", false)
			p.setHealth(b, true, "test", false)
			if n := share(); n >= 50 {
				t.Errorf("right after UP: %d of 200 picks, want < 50", n)
			}
			time.Sleep(window + 50*time.Millisecond)
			if n := share(); n < 96 || n > 104 {
				t.Errorf("after slow start: %d of 200 picks, want ~100", n)
			}
		})
	}
}

// TestAdopt: a new pool takes over health, admin state and counters of
// backends with the same address; new addresses start fresh.
func TestAdopt(t *testing.T) {
	old := mustPool(t, PoolConfig{Name: "p", Backends: backendsOf("10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1")})
	old.setHealth(old.backends()[0], false, "test", false)
	_ = old.SetState("10.0.0.2:1", Drain)
	old.backends()[1].dials.Store(7)
	nu := mustPool(t, PoolConfig{Name: "p", Backends: backendsOf("10.0.0.2:1", "10.0.0.1:1", "10.0.0.4:1")})
	nu.Adopt(old)
	st := nu.Status()
	if st[0].AdminState != Drain || st[0].Dials != 7 || !st[0].Healthy {
		t.Errorf("10.0.0.2: %+v", st[0])
	}
	if st[1].Healthy || st[1].AdminState != Ready {
		t.Errorf("10.0.0.1: %+v", st[1])
	}
	if !st[2].Healthy || st[2].AdminState != Ready {
		t.Errorf("10.0.0.4: %+v", st[2])
	}
	// Only 10.0.0.4 is usable.
	if i := nu.pickOnce(&DialRequest{}); i != 2 {
		t.Errorf("picked %d, want 2", i)
	}
}

// TestCloseOnDown: with CloseOnDown, live conns of a backend that goes DOWN
// are closed; without, they survive.
func TestCloseOnDown(t *testing.T) {
	s := startSink(t)
	for _, closeOnDown := range []bool{false, true} {
		p := mustPool(t, PoolConfig{Name: "cod", Backends: backendsOf(s.addr()), CloseOnDown: closeOnDown, OnAllUnhealthy: TryAll})
		l := dialHold(t, p, DialRequest{})
		p.setHealth(p.backends()[0], false, "test", false)
		if connWorks(l) == closeOnDown {
			t.Errorf("CloseOnDown %v: conn open %v", closeOnDown, !closeOnDown)
		}
	}
}

func TestStartCloseLifecycle(t *testing.T) {
	s := startSink(t)
	p := mustPool(t, PoolConfig{Name: "life", Backends: backendsOf(s.addr()), Health: HealthConfig{Check: CheckTCP, Interval: 10 * time.Millisecond}})
	p.Close()
	p.Start() // after Close: no-op
	p.Close()
	q := mustPool(t, PoolConfig{Name: "none", Backends: backendsOf(s.addr())})
	q.Start() // CheckNone: no goroutine
	q.Start()
	q.Close()
	dialDone(t, q, DialRequest{}) // Dial works after Close
}

// Adopt shares the connections in flight: a lease taken from the old pool
// counts against MaxConnections in the new one and releases there.
func TestAdoptSharesLiveConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	cfg := PoolConfig{Name: "p", Backends: []BackendConfig{{Address: ln.Addr().String(), MaxConnections: 1}}}
	old, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	lease, err := old.Dial(context.Background(), DialRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Conn.Close()

	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Adopt(old)
	if got := p.Status()[0].Active; got != 1 {
		t.Fatalf("new pool counts %d active, want the 1 from before the reload", got)
	}
	if _, err := p.Dial(context.Background(), DialRequest{}); !errors.Is(err, ErrFull) {
		t.Fatalf("dial over the adopted slot: %v, want ErrFull", err)
	}
	if n, err := p.CloseConnections(ln.Addr().String()); err != nil || n != 1 {
		t.Fatalf("CloseConnections on the new pool reached %d (%v), want the old lease", n, err)
	}
	lease.Release()
	if got := p.Status()[0].Active; got != 0 {
		t.Fatalf("after release: %d active", got)
	}
}
