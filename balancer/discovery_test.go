package balancer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fakeSource is a Discoverer whose answer the test sets.
type fakeSource struct {
	mu    sync.Mutex
	found []BackendConfig
	ttl   time.Duration
	err   error
	calls int
}

func (f *fakeSource) Discover(context.Context) ([]BackendConfig, time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return slices.Clone(f.found), f.ttl, f.err
}

func (f *fakeSource) String() string { return "fake:test" }

func (f *fakeSource) set(err error, found ...BackendConfig) {
	f.mu.Lock()
	f.found, f.err = found, err
	f.mu.Unlock()
}

func addrsOf(bs []*Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Addr()
	}
	return out
}

// TestDiscoveryApply pins how an answer changes the set: configured
// backends stay first; a backend found again keeps its *Backend (health,
// counters, slots, admin state); a changed weight rebuilds it with that
// state; a new one starts UP before the pool ran checks; a removed one
// leaves the set in Drain and comes back as it was when found again.
func TestDiscoveryApply(t *testing.T) {
	src := &fakeSource{}
	var ev events
	p := mustPool(t, PoolConfig{Name: "d", Backends: backendsOf("10.0.0.1:1"), Discover: src, OnChange: ev.record})
	ctx := context.Background()

	src.set(nil, BackendConfig{Address: "10.0.0.3:1"}, BackendConfig{ID: "b.example:1", Address: "10.0.0.2:1"},
		BackendConfig{Address: "10.0.0.1:1"}) // a configured one: ignored
	p.Rediscover(ctx)
	if got := addrsOf(p.Backends()); !slices.Equal(got, []string{"10.0.0.1:1", "10.0.0.3:1", "10.0.0.2:1"}) {
		t.Fatalf("set %v: want the configured backend, then the found ones by id", got)
	}
	b2, b3 := p.Lookup("10.0.0.2:1"), p.Lookup("10.0.0.3:1")
	if b2.ID() != "b.example:1" || b3.ID() != "10.0.0.3:1" || !b2.Healthy() || !b3.Healthy() {
		t.Fatalf("found backends: %q %v, %q %v", b2.ID(), b2.Healthy(), b3.ID(), b3.Healthy())
	}
	b2.dials.Store(5)
	b3.live.active.Add(1)
	_ = p.SetState("b.example:1", Maint)

	// Same answer in another order: nothing changes.
	src.set(nil, BackendConfig{ID: "b.example:1", Address: "10.0.0.2:1"}, BackendConfig{Address: "10.0.0.3:1"})
	p.Rediscover(ctx)
	if p.Lookup("10.0.0.2:1") != b2 || p.Lookup("10.0.0.3:1") != b3 {
		t.Fatal("an unchanged answer replaced backends")
	}
	if st, _ := p.Discovery(); st.Changes != 1 || st.Lookups != 2 || st.Backends != 2 {
		t.Errorf("discovery status %+v", st)
	}

	// A new weight: a new Backend with the old one's state and connections.
	src.set(nil, BackendConfig{ID: "b.example:1", Address: "10.0.0.2:1", Weight: 3}, BackendConfig{Address: "10.0.0.3:1"})
	p.Rediscover(ctx)
	nb2 := p.Lookup("10.0.0.2:1")
	if nb2 == b2 || nb2.Weight() != 3 || nb2.Dials() != 5 || nb2.AdminState() != Maint || nb2.live != b2.live {
		t.Fatalf("reweighted backend: same %v weight %d dials %d admin %v", nb2 == b2, nb2.Weight(), nb2.Dials(), nb2.AdminState())
	}

	// 10.0.0.3 removed: out of the set, Drain, its connection still counted.
	src.set(nil, BackendConfig{ID: "b.example:1", Address: "10.0.0.2:1", Weight: 3})
	p.Rediscover(ctx)
	if got := addrsOf(p.Backends()); !slices.Equal(got, []string{"10.0.0.1:1", "10.0.0.2:1"}) {
		t.Fatalf("after removal: %v", got)
	}
	if b3.AdminState() != Drain || p.Lookup("10.0.0.3:1") != b3 {
		t.Fatalf("removed backend: admin %v, lookup %v", b3.AdminState(), p.Lookup("10.0.0.3:1"))
	}
	if st, _ := p.Discovery(); st.Draining != 1 {
		t.Errorf("draining %d, want 1", st.Draining)
	}
	// Found again while it drains: the same backend, Ready again.
	src.set(nil, BackendConfig{ID: "b.example:1", Address: "10.0.0.2:1", Weight: 3}, BackendConfig{Address: "10.0.0.3:1"})
	p.Rediscover(ctx)
	if p.Lookup("10.0.0.3:1") != b3 || b3.AdminState() != Ready {
		t.Fatalf("reclaimed backend: same %v, admin %v", p.Lookup("10.0.0.3:1") == b3, b3.AdminState())
	}
	// Removed with no connection: kept, draining, for its key window
	// (RemovedKeyWindow without a DrainTimeout), out of Backends; forgotten
	// after it (TestRemovedKeepsKeys).
	b3.live.active.Add(-1)
	src.set(nil, BackendConfig{ID: "b.example:1", Address: "10.0.0.2:1", Weight: 3})
	p.Rediscover(ctx)
	p.Rediscover(ctx)
	st := p.RemovedStatus()
	if p.Lookup("10.0.0.3:1") != b3 || len(st) != 1 || st[0].KeysUntil.IsZero() || slices.Contains(p.Backends(), b3) {
		t.Errorf("a removed backend in its key window: lookup %v, removed status %+v", p.Lookup("10.0.0.3:1"), st)
	}
	if !slices.Contains(p.inSet(), b3) || b3.AdminState() != Drain {
		t.Errorf("a removed backend in its key window: in the set %v, state %v", slices.Contains(p.inSet(), b3), b3.AdminState())
	}
	var kinds []string
	for _, e := range ev.list() {
		kinds = append(kinds, e.Kind.String()+" "+e.Backend)
	}
	want := []string{"added 10.0.0.3:1", "added b.example:1", "removed 10.0.0.3:1", "removed 10.0.0.3:1"}
	if !slices.Equal(kinds, want) {
		t.Errorf("events %q, want %q", kinds, want)
	}
}

// TestDiscoveryKeepsLastSet: an error or an empty answer never empties the
// pool; each is counted, and the outage is reported once, then its end.
func TestDiscoveryKeepsLastSet(t *testing.T) {
	src := &fakeSource{}
	var ev events
	p := mustPool(t, PoolConfig{Name: "k", Discover: src, OnChange: ev.record})
	ctx := context.Background()
	if _, err := p.Dial(ctx, DialRequest{}); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("before the first answer: %v, want ErrNoBackend", err)
	}
	src.set(nil, backendsOf("10.0.0.1:1", "10.0.0.2:1")...)
	p.Rediscover(ctx)
	src.set(errors.New("SERVFAIL"))
	p.Rediscover(ctx)
	p.Rediscover(ctx)
	src.set(nil)
	p.Rediscover(ctx)
	if got := addrsOf(p.Backends()); len(got) != 2 {
		t.Fatalf("set after failures: %v", got)
	}
	st, _ := p.Discovery()
	if st.Failures != 2 || st.Empty != 1 || !st.Failing || st.LastError != "SERVFAIL" || st.Lookups != 4 {
		t.Errorf("status %+v", st)
	}
	src.set(nil, backendsOf("10.0.0.2:1")...)
	p.Rediscover(ctx)
	var kinds []string
	for _, e := range ev.list() {
		kinds = append(kinds, e.Kind.String())
	}
	want := []string{"added", "added", "discovery_failed", "discovery_ok", "removed"}
	if !slices.Equal(kinds, want) {
		t.Errorf("events %q, want %q", kinds, want)
	}
	if st, _ := p.Discovery(); st.Failing || st.LastSuccess.IsZero() {
		t.Errorf("after recovery: %+v", st)
	}
}

// TestDiscoveryNext pins the TTL rule: the interval, or a shorter TTL,
// never below the floor.
func TestDiscoveryNext(t *testing.T) {
	d := &discovery{interval: 5 * time.Second, minDelay: time.Second}
	for _, tt := range []struct{ ttl, want time.Duration }{
		{-1, 5 * time.Second},
		{30 * time.Second, 5 * time.Second},
		{3 * time.Second, 3 * time.Second},
		{0, time.Second},
		{200 * time.Millisecond, time.Second},
	} {
		if got := d.next(tt.ttl); got != tt.want {
			t.Errorf("ttl %v: next %v, want %v", tt.ttl, got, tt.want)
		}
	}
	d.interval = 100 * time.Millisecond // shorter than the floor: the interval wins
	if got := d.next(0); got != 100*time.Millisecond {
		t.Errorf("short interval: %v", got)
	}
}

// TestHashAcrossSwap: rendezvous moves only the keys of a removed backend
// (each to its own next choice) and, when one is added, only keys to it;
// also when the added backend's weight makes the set weighted.
func TestHashAcrossSwap(t *testing.T) {
	src := &fakeSource{}
	p := mustPool(t, PoolConfig{Name: "h", Discover: src, Balance: Hash, HashKey: HashKey{Kind: HashQuery, Name: "room"}})
	var cfgs []BackendConfig
	for i := range 5 {
		cfgs = append(cfgs, BackendConfig{ID: "gs" + strconv.Itoa(i) + ":7000", Address: "10.0.0." + strconv.Itoa(i+1) + ":7000"})
	}
	place := func() map[string]string {
		out := map[string]string{}
		for k := range 2000 {
			key := "room-" + strconv.Itoa(k)
			i := p.pickOnce(&DialRequest{HashKey: key, HasHashKey: true})
			out[key] = p.inSet()[i].ID()
		}
		return out
	}
	src.set(nil, cfgs[:4]...)
	p.Rediscover(context.Background())
	before := place()

	src.set(nil, append(slices.Clone(cfgs[:4]), BackendConfig{ID: cfgs[4].ID, Address: cfgs[4].Address, Weight: 2})...)
	p.Rediscover(context.Background())
	after := place()
	moved := 0
	for k, id := range after {
		if id != before[k] {
			moved++
			if id != cfgs[4].ID {
				t.Fatalf("key %s moved %s → %s, not to the added backend", k, before[k], id)
			}
		}
	}
	if moved < 2000/6/2 || moved > 2000*2/6*3/2 { // ~1/3 of the keys for weight 2 of 6
		t.Errorf("%d keys moved to the added backend", moved)
	}

	src.set(nil, cfgs[1:4]...) // gs0 and gs4 leave
	p.Rediscover(context.Background())
	final := place()
	for k, id := range final {
		if was := after[k]; was != cfgs[0].ID && was != cfgs[4].ID && id != was {
			t.Fatalf("key %s moved %s → %s though its backend stayed", k, was, id)
		}
	}
}

// TestRoundRobinAcrossSwap: smooth round robin keeps the backends' places
// over a swap and gives an added backend exactly its share from then on.
func TestRoundRobinAcrossSwap(t *testing.T) {
	src := &fakeSource{}
	p := mustPool(t, PoolConfig{Name: "rr", Discover: src})
	src.set(nil, backendsOf("10.0.0.1:1", "10.0.0.2:1")...)
	p.Rediscover(context.Background())
	for range 3 { // odd: the rotation is mid-way at the swap
		p.pickOnce(&DialRequest{})
	}
	src.set(nil, BackendConfig{Address: "10.0.0.1:1"}, BackendConfig{Address: "10.0.0.2:1"}, BackendConfig{Address: "10.0.0.3:1", Weight: 2})
	p.Rediscover(context.Background())
	// Smooth WRR converges within one round of sum(weights) picks after a
	// change; from then on every run of 4 picks gives exactly 1, 1, 2.
	for range 4 {
		p.pickOnce(&DialRequest{})
	}
	for round := range 5 {
		n := map[string]int{}
		for range 4 {
			n[p.backends()[p.pickOnce(&DialRequest{})].Addr()]++
		}
		if n["10.0.0.1:1"] != 1 || n["10.0.0.2:1"] != 1 || n["10.0.0.3:1"] != 2 {
			t.Fatalf("round %d: %v", round, n)
		}
	}
}

// TestSwapUnderLoad races picks, dials and claims against set swaps (run
// with -race): every pick names a backend of the set it loaded, and picks
// stay allocation-free.
func TestSwapUnderLoad(t *testing.T) {
	ss := sinks(t, 4)
	for _, algo := range algorithms {
		t.Run(algo.String(), func(t *testing.T) {
			src := &fakeSource{}
			p := mustPool(t, PoolConfig{Name: "swap", Discover: src, Balance: algo, HashKey: HashKey{Kind: HashSNI}})
			cfgs := sinkConfigs(ss)
			src.set(nil, cfgs...)
			p.Rediscover(context.Background())
			stop := make(chan struct{})
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for w := range 4 {
				wg.Go(func() {
					for k := 0; ; k++ {
						select {
						case <-stop:
							return
						default:
						}
						req := DialRequest{HashKey: fmt.Sprint(w, k), HasHashKey: true}
						if k%8 == 0 {
							l, err := p.Dial(context.Background(), req)
							if err != nil {
								errs <- err
								return
							}
							l.Conn.Close()
							l.Release()
							continue
						}
						ch := p.NewChooser(&req)
						c, err := ch.Next(context.Background())
						if err != nil {
							errs <- err
							return
						}
						c.Release()
					}
				})
			}
			for i := range 200 {
				next := slices.Clone(cfgs[i%3 : i%3+2]) // always two of them
				next[0].Weight = 1 + i%2                // and a reweighted one: rebuilt
				src.set(nil, next...)
				p.Rediscover(context.Background())
			}
			close(stop)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if n := testing.AllocsPerRun(200, func() { p.pickOnce(&DialRequest{HashKey: "x", HasHashKey: true}) }); n != 0 {
				t.Errorf("pick allocates %v times", n)
			}
		})
	}
}

// TestDiscoveryChecksNewBackends: once the pool has discovered backends and
// runs active checks, a backend found later starts DOWN, is checked at
// once, and takes players only after Rise passing checks; one removed is
// checked for its key window (DrainTimeout), then no more.
func TestDiscoveryChecksNewBackends(t *testing.T) {
	ss := sinks(t, 3)
	src := &fakeSource{ttl: -1}
	var mu sync.Mutex
	checks := map[string]int{}
	pass := map[string]bool{ss[0].addr(): true, ss[1].addr(): true}
	p := mustPool(t, PoolConfig{
		Name: "c", Discover: src, ResolveInterval: 20 * time.Millisecond, DrainTimeout: 100 * time.Millisecond,
		Health: HealthConfig{Interval: 20 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 2, Fall: 2,
			checkFunc: func(_ context.Context, b *Backend) error {
				mu.Lock()
				defer mu.Unlock()
				checks[b.Addr()]++
				if !pass[b.Addr()] {
					return errors.New("not yet")
				}
				return nil
			}},
	})
	src.set(nil, sinkConfigs(ss[:2])...)
	p.Start()
	defer p.Close()
	waitFor(t, 5*time.Second, "first answer", func() bool { return len(p.Backends()) == 2 })
	src.set(nil, sinkConfigs(ss)...)
	waitFor(t, 5*time.Second, "third backend", func() bool { return len(p.Backends()) == 3 })
	b := p.Lookup(ss[2].addr())
	if b.Healthy() {
		t.Fatal("a backend found after the first answer is UP before any check")
	}
	waitFor(t, 5*time.Second, "its checks", func() bool { mu.Lock(); defer mu.Unlock(); return checks[ss[2].addr()] >= 2 })
	for range 10 {
		if dialDone(t, p, DialRequest{}) == b {
			t.Fatal("a backend failing its checks got a player")
		}
	}
	mu.Lock()
	pass[ss[2].addr()] = true
	mu.Unlock()
	waitFor(t, 5*time.Second, "UP", b.Healthy)
	waitFor(t, 5*time.Second, "a player on it", func() bool { return dialDone(t, p, DialRequest{}) == b })

	src.set(nil, sinkConfigs(ss[1:])...)
	waitFor(t, 5*time.Second, "removal", func() bool { return len(p.Backends()) == 2 })
	mu.Lock()
	n := checks[ss[0].addr()]
	mu.Unlock()
	waitFor(t, 5*time.Second, "checks in its key window", func() bool { mu.Lock(); defer mu.Unlock(); return checks[ss[0].addr()] > n })
	waitFor(t, 5*time.Second, "the end of its key window", func() bool { return len(p.RemovedStatus()) == 0 })
	mu.Lock()
	n = checks[ss[0].addr()]
	mu.Unlock()
	time.Sleep(100 * time.Millisecond) // 5 intervals: a running check loop would count
	mu.Lock()
	if m := checks[ss[0].addr()]; m > n+1 {
		t.Errorf("a removed backend is still checked: %d → %d", n, m)
	}
	mu.Unlock()
}

// TestDiscoveryDrainTimeout: the connections of a removed backend keep
// working until DrainTimeout, then are closed; those of a kept one are not.
func TestDiscoveryDrainTimeout(t *testing.T) {
	ss := sinks(t, 2)
	src := &fakeSource{}
	p := mustPool(t, PoolConfig{Name: "dt", Discover: src, Balance: LeastConn, DrainTimeout: 50 * time.Millisecond})
	defer p.Close()
	src.set(nil, sinkConfigs(ss)...)
	p.Rediscover(context.Background())
	la, lb := dialHold(t, p, DialRequest{}), dialHold(t, p, DialRequest{})
	if la.Backend == lb.Backend {
		t.Fatal("least_conn put both on one backend")
	}
	src.set(nil, BackendConfig{Address: lb.Backend.Addr()})
	p.Rediscover(context.Background())
	if !connWorks(la) {
		t.Fatal("a removed backend's connection was closed at once")
	}
	waitFor(t, 5*time.Second, "drain close", func() bool { return !connWorks(la) })
	if !connWorks(lb) {
		t.Error("a kept backend's connection was closed")
	}
}

// TestAdoptDiscovered: a reloaded pool with the same source starts with the
// discovered backends and their state, the draining ones and the counters.
func TestAdoptDiscovered(t *testing.T) {
	ss := sinks(t, 2)
	src := &fakeSource{}
	old := mustPool(t, PoolConfig{Name: "a", Discover: src})
	src.set(nil, sinkConfigs(ss)...)
	old.Rediscover(context.Background())
	old.setHealth(old.Lookup(ss[0].addr()), false, "test", false)
	l := dialHold(t, old, DialRequest{})
	src.set(nil, BackendConfig{Address: ss[0].addr()}) // ss[1] leaves, with l on it
	old.Rediscover(context.Background())
	if l.Backend.Addr() != ss[1].addr() {
		t.Fatalf("lease on %s", l.Backend.Addr())
	}

	nu := mustPool(t, PoolConfig{Name: "a", Discover: src, DrainTimeout: time.Hour})
	nu.Adopt(old)
	old.Close()
	if got := addrsOf(nu.Backends()); !slices.Equal(got, []string{ss[0].addr()}) {
		t.Fatalf("adopted set %v", got)
	}
	if nu.Backends()[0].Healthy() {
		t.Error("health not carried over")
	}
	st, _ := nu.Discovery()
	if st.Draining != 1 || st.Lookups != 2 || st.Backends != 1 {
		t.Errorf("adopted discovery %+v", st)
	}
	if n, err := nu.CloseConnections(ss[1].addr()); n != 1 || err != nil {
		t.Errorf("CloseConnections of the draining backend: %d, %v", n, err)
	}
	nu.Close()

	other := mustPool(t, PoolConfig{Name: "a", Discover: &otherSource{}})
	other.Adopt(old)
	if len(other.Backends()) != 0 {
		t.Error("adopted the discovered set of another source")
	}
}

type otherSource struct{ fakeSource }

func (*otherSource) String() string { return "fake:other" }

// TestAdoptHandsOnDraining: a reload whose pool no longer discovers (or
// discovers elsewhere) still takes over the backends the old pool's
// discovery removed: with their key window, their connections closed at the old deadline
// though the old pool is closed, and CloseConnections reaches them.
func TestAdoptHandsOnDraining(t *testing.T) {
	ss := sinks(t, 2)
	src := &fakeSource{}
	old := mustPool(t, PoolConfig{Name: "h", Discover: src, DrainTimeout: 100 * time.Millisecond})
	src.set(nil, sinkConfigs(ss[:1])...)
	old.Rediscover(context.Background())
	l := dialHold(t, old, DialRequest{})
	src.set(nil, sinkConfigs(ss[1:])...)
	old.Rediscover(context.Background()) // ss[0] leaves, with l on it

	nu := mustPool(t, PoolConfig{Name: "h", Backends: sinkConfigs(ss[1:])}) // discover removed
	nu.Adopt(old)
	old.Close() // stops old's timers
	defer nu.Close()
	// In its key window: nu's own Backend, with old's connections, in
	// nu's set for keyed picks.
	if b := nu.Lookup(ss[0].addr()); b == nil || b.live != l.Backend.live || b.AdminState() != Drain || !slices.Contains(nu.inSet(), b) {
		t.Fatal("the draining backend was not handed on")
	}
	waitFor(t, 5*time.Second, "the drain close, from the new pool", func() bool { return !connWorks(l) })
}
