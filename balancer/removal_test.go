package balancer_test

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"sluice/balancer"
	"sluice/balancer/discover"
	"sluice/balancer/discover/dnstest"
)

// Removal by discovery (issue 12, part 7): a backend that leaves the DNS
// records keeps its keys for its key window, the same on every instance
// that saw the change, while its checks go on. Real pools discovering from
// the in-process DNS server, real loopback game servers; the test changes
// the records and makes each pool look them up (Rediscover) when it wants.

// roomServer is a loopback game server: it accepts and holds connections
// until stop, which closes the listener and them.
type roomServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
	once  sync.Once
}

func startRoomServer(t *testing.T) *roomServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &roomServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *roomServer) stop() {
	s.once.Do(func() {
		s.ln.Close()
		s.wg.Wait()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
}

func (s *roomServer) port() uint16 { return uint16(s.ln.Addr().(*net.TCPAddr).Port) }

// roomFleet is n game servers published as the SRV targets gsI.rooms.test.
type roomFleet struct {
	dns     *dnstest.Server
	servers []*roomServer
}

const roomsSRV = "_game._tcp.rooms.test"

func newRoomFleet(t *testing.T, n int) *roomFleet {
	f := &roomFleet{dns: dnstest.Start(t)}
	for i := range n {
		f.servers = append(f.servers, startRoomServer(t))
		f.dns.SetA(f.target(i), 3600, "127.0.0.1")
	}
	return f
}

func (f *roomFleet) target(i int) string { return "gs" + strconv.Itoa(i) + ".rooms.test" }

// id is the backend id discovery gives server i.
func (f *roomFleet) id(i int) string {
	return f.target(i) + ":" + strconv.Itoa(int(f.servers[i].port()))
}

// publish makes the SRV records name exactly servers idx.
func (f *roomFleet) publish(idx ...int) {
	var recs []dnstest.SRV
	for _, i := range idx {
		recs = append(recs, dnstest.SRV{Target: f.target(i), Port: f.servers[i].port(), Priority: 10, Weight: 1})
	}
	f.dns.SetSRV(roomsSRV, 3600, recs...)
}

// pool is one sluice instance's pool over the fleet: hash on the room,
// TCP checks every 20 ms, looked up at Start and then when the test calls
// Rediscover (the records' TTL and the interval are an hour).
func (f *roomFleet) pool(t *testing.T, drain time.Duration, ev *roomEvents) *balancer.Pool {
	t.Helper()
	r, err := discover.NewResolver([]string{f.dns.Addr})
	if err != nil {
		t.Fatal(err)
	}
	src, err := discover.New("srv:"+roomsSRV, r)
	if err != nil {
		t.Fatal(err)
	}
	cfg := balancer.PoolConfig{
		Name: "rooms", Discover: src, ResolveInterval: time.Hour, DrainTimeout: drain,
		Balance: balancer.Hash, HashKey: balancer.HashKey{Kind: balancer.HashQuery, Name: "room"},
		Health: balancer.HealthConfig{Check: balancer.CheckTCP, Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 2, Fall: 2},
	}
	if ev != nil {
		cfg.OnChange = ev.record
	}
	p, err := balancer.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(p.Close)
	waitUntil(t, "the first answer", func() bool { return len(p.Backends()) == len(f.servers) })
	return p
}

// reference is a pool of servers idx configured statically with the ids
// discovery gives them: where the keys go when the others are not there.
func (f *roomFleet) reference(t *testing.T, idx ...int) *balancer.Pool {
	t.Helper()
	var bcs []balancer.BackendConfig
	for _, i := range idx {
		bcs = append(bcs, balancer.BackendConfig{ID: f.id(i), Address: "127.0.0.1:" + strconv.Itoa(int(f.servers[i].port()))})
	}
	p, err := balancer.NewPool(balancer.PoolConfig{Name: "ref", Backends: bcs, Balance: balancer.Hash,
		HashKey: balancer.HashKey{Kind: balancer.HashQuery, Name: "room"}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type roomEvents struct {
	mu  sync.Mutex
	evs []balancer.Event
}

func (e *roomEvents) record(ev balancer.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *roomEvents) has(kind balancer.EventKind, backend string, healthy bool) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.evs {
		if ev.Kind == kind && ev.Backend == backend && ev.Healthy == healthy {
			return true
		}
	}
	return false
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialRoom connects a player of room key (unkeyed when key is "") and
// returns the id of the backend it got; the connection ends at once.
func dialRoom(t *testing.T, p *balancer.Pool, key string) string {
	t.Helper()
	l, err := p.Dial(context.Background(), balancer.DialRequest{HashKey: key, HasHashKey: key != ""})
	if err != nil {
		t.Fatalf("room %q: %v", key, err)
	}
	l.Conn.Close()
	l.Release()
	return l.Backend.ID()
}

func roomKeys() []string {
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = "room-" + strconv.Itoa(i)
	}
	return keys
}

func owners(t *testing.T, p *balancer.Pool, keys []string) map[string]string {
	t.Helper()
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k] = dialRoom(t, p, k)
	}
	return out
}

// removed returns p's removed backend id, which must be the only one.
func removed(t *testing.T, p *balancer.Pool, id string) balancer.BackendStatus {
	t.Helper()
	st := p.RemovedStatus()
	if len(st) != 1 || st[0].ID != id {
		t.Fatalf("removed backends %+v, want %s", st, id)
	}
	for _, b := range p.Status() {
		if b.ID == id {
			t.Fatalf("%s listed both among the backends and the removed", id)
		}
	}
	return st[0]
}

// TestRemovedKeepsKeys: two pools (two sluice instances) over 4 servers;
// server 0 leaves the records, and the pools look them up at different
// times. Until its key window (DrainTimeout from the removal) ends, its
// rooms keep going to it from both pools, unkeyed players never do, and
// the other rooms stay where they were; then it leaves both sets and its
// rooms move to their next backend, the same on both pools.
func TestRemovedKeepsKeys(t *testing.T) {
	f := newRoomFleet(t, 4)
	f.publish(0, 1, 2, 3)
	a, b := f.pool(t, 3*time.Second, nil), f.pool(t, 3*time.Second, nil)
	keys := roomKeys()
	before := owners(t, a, keys)
	gone := f.id(0)
	var its []string
	for _, k := range keys {
		if before[k] == gone {
			its = append(its, k)
		}
	}
	if len(its) == 0 {
		t.Fatal("no room on server 0")
	}

	f.publish(1, 2, 3)
	a.Rediscover(context.Background())
	untilA := removed(t, a, gone).KeysUntil
	if untilA.IsZero() {
		t.Fatal("a removed backend without a key window")
	}
	// In the window: a dial that ended before untilA was picked in it.
	checked := 0
	check := func(p *balancer.Pool, name string) {
		for _, k := range keys {
			id := dialRoom(t, p, k)
			if !time.Now().Before(untilA) {
				return
			}
			checked++
			if id != before[k] {
				t.Fatalf("%s: room %s went %s → %s in the removed backend's key window", name, k, before[k], id)
			}
		}
		for range 20 {
			id := dialRoom(t, p, "")
			if !time.Now().Before(untilA) {
				return
			}
			if id == gone {
				t.Fatalf("%s: an unkeyed player went to the removed backend", name)
			}
		}
	}
	check(a, "pool a")
	b.Rediscover(context.Background()) // later than a
	untilB := removed(t, b, gone).KeysUntil
	if untilB.Before(untilA) {
		t.Fatalf("key windows: b's ends at %v, before a's %v", untilB, untilA)
	}
	check(b, "pool b")
	check(a, "pool a")
	if checked == 0 {
		t.Fatal("no room checked within the key window")
	}
	if st := removed(t, a, gone); st.AdminState != balancer.Drain || !st.Healthy {
		t.Fatalf("removed backend in its window: %v, healthy %v", st.AdminState, st.Healthy)
	}

	// After the window: gone from both, its rooms on their next backend.
	waitUntil(t, "the end of both key windows", func() bool {
		return len(a.RemovedStatus()) == 0 && len(b.RemovedStatus()) == 0
	})
	ref := f.reference(t, 1, 2, 3)
	afterA, afterB, want := owners(t, a, keys), owners(t, b, keys), owners(t, ref, keys)
	for _, k := range keys {
		if afterA[k] != want[k] || afterB[k] != want[k] {
			t.Fatalf("room %s after the window: pool a %s, pool b %s, want %s (was %s)", k, afterA[k], afterB[k], want[k], before[k])
		}
		if before[k] != gone && afterA[k] != before[k] {
			t.Fatalf("room %s moved %s → %s though its backend stayed", k, before[k], afterA[k])
		}
	}
}

// TestRemovedDownMovesKeys: without a DrainTimeout the key window is
// RemovedKeyWindow; the removed backend's checks go on, and when it stops
// answering them it turns DOWN and its rooms move at once to their next
// backend.
func TestRemovedDownMovesKeys(t *testing.T) {
	f := newRoomFleet(t, 4)
	f.publish(0, 1, 2, 3)
	var ev roomEvents
	p := f.pool(t, 0, &ev)
	keys := roomKeys()
	before := owners(t, p, keys)
	gone := f.id(0)

	f.publish(1, 2, 3)
	t0 := time.Now()
	p.Rediscover(context.Background())
	t1 := time.Now()
	st := removed(t, p, gone)
	if st.KeysUntil.Before(t0.Add(balancer.RemovedKeyWindow)) || st.KeysUntil.After(t1.Add(balancer.RemovedKeyWindow)) {
		t.Fatalf("key window ends %v, want the removal + %v", st.KeysUntil, balancer.RemovedKeyWindow)
	}
	if got := owners(t, p, keys); got[keys[0]] != before[keys[0]] {
		t.Fatalf("room %s went %s → %s in the key window", keys[0], before[keys[0]], got[keys[0]])
	} else {
		for _, k := range keys {
			if got[k] != before[k] {
				t.Fatalf("room %s went %s → %s in the key window", k, before[k], got[k])
			}
		}
	}

	f.servers[0].stop()
	waitUntil(t, "the removed backend DOWN by its checks", func() bool { return !removed(t, p, gone).Healthy })
	waitUntil(t, "its DOWN event", func() bool {
		return ev.has(balancer.EventHealth, "127.0.0.1:"+strconv.Itoa(int(f.servers[0].port())), false)
	})
	ref := f.reference(t, 1, 2, 3)
	after, want := owners(t, p, keys), owners(t, ref, keys)
	for _, k := range keys {
		if after[k] != want[k] {
			t.Fatalf("room %s with its backend DOWN: %s, want %s (was %s)", k, after[k], want[k], before[k])
		}
	}
}

// TestRemovedFoundAgain: a removed backend found again in its key window
// is taken back, ready; its rooms never moved, and unkeyed players reach
// it again.
func TestRemovedFoundAgain(t *testing.T) {
	f := newRoomFleet(t, 4)
	f.publish(0, 1, 2, 3)
	p := f.pool(t, time.Hour, nil)
	keys := roomKeys()
	before := owners(t, p, keys)
	gone := f.id(0)

	f.publish(1, 2, 3)
	p.Rediscover(context.Background())
	removed(t, p, gone)
	for k, id := range owners(t, p, keys) {
		if id != before[k] {
			t.Fatalf("room %s went %s → %s while removed", k, before[k], id)
		}
	}

	f.publish(0, 1, 2, 3)
	p.Rediscover(context.Background())
	if st := p.RemovedStatus(); len(st) != 0 {
		t.Fatalf("removed backends %+v after it was found again", st)
	}
	found := false
	for _, st := range p.Status() {
		if st.ID == gone {
			found = true
			if st.AdminState != balancer.Ready || !st.Healthy {
				t.Fatalf("found again: %v, healthy %v", st.AdminState, st.Healthy)
			}
		}
	}
	if !found {
		t.Fatal("found again, not among the backends")
	}
	for k, id := range owners(t, p, keys) {
		if id != before[k] {
			t.Fatalf("room %s went %s → %s after it was found again", k, before[k], id)
		}
	}
	reached := false
	for range 200 {
		if dialRoom(t, p, "") == gone {
			reached = true
			break
		}
	}
	if !reached {
		t.Fatal("no unkeyed player reached the backend found again in 200")
	}
}
