package discover_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"sluice/balancer"
	"sluice/balancer/discover/dnstest"
)

// Pool tests: a real balancer.Pool discovering from the in-process DNS
// server, with real loopback game servers, while the test changes the
// records. Waits are bounded polls, never fixed sleeps.

// echoServer is a loopback game server: it echoes every connection until
// EOF and counts what it accepted. stop closes the listener and every
// connection.
type echoServer struct {
	ln      net.Listener
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
	stopped bool
}

func startEcho(t *testing.T, addr string) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go e.acceptLoop()
	t.Cleanup(e.stop)
	return e
}

// restartEcho listens again on addr, retrying while a client socket of the
// test holds the port for a moment.
func restartEcho(t *testing.T, addr string) *echoServer {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			ln.Close()
			return startEcho(t, addr)
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

func (e *echoServer) port() uint16 {
	return uint16(e.ln.Addr().(*net.TCPAddr).Port)
}

func (e *echoServer) acceptLoop() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		if e.stopped {
			e.mu.Unlock()
			c.Close()
			continue
		}
		e.conns[c] = struct{}{}
		e.mu.Unlock()
		e.wg.Add(1)
		go e.serve(c)
	}
}

func (e *echoServer) serve(c net.Conn) {
	defer e.wg.Done()
	_, _ = io.Copy(c, c)
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
	c.Close()
}

func (e *echoServer) stop() {
	e.mu.Lock()
	e.stopped = true
	e.ln.Close()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// echoOnce reports whether one round trip over the lease's connection works.
func echoOnce(l *balancer.Lease) error {
	if err := l.Conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	msg := []byte("ping")
	if _, err := l.Conn.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(l.Conn, buf); err != nil {
		return err
	}
	if string(buf) != string(msg) {
		return errors.New("echo mismatch")
	}
	return nil
}

// eventLog records a pool's events.
type eventLog struct {
	mu  sync.Mutex
	evs []balancer.Event
}

func (l *eventLog) record(ev balancer.Event) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	l.mu.Unlock()
}

func (l *eventLog) count(kind balancer.EventKind, backend string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.evs {
		if ev.Kind == kind && (backend == "" || ev.Backend == backend) {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ids(p *balancer.Pool) map[string]bool {
	out := map[string]bool{}
	for _, b := range p.Backends() {
		out[b.ID()] = true
	}
	return out
}

// dialID dials the pool and returns the id of the backend the player got;
// the connection is closed and released at once.
func dialID(t *testing.T, p *balancer.Pool) string {
	t.Helper()
	l, err := p.Dial(context.Background(), balancer.DialRequest{})
	if err != nil {
		t.Fatal(err)
	}
	l.Conn.Close()
	l.Release()
	return l.Backend.ID()
}

// fleet is n echo servers published as targets gsI.rooms.test of one SRV
// name on the test DNS server.
type fleet struct {
	dns     *dnstest.Server
	name    string
	servers []*echoServer
}

func newFleet(t *testing.T, n int) *fleet {
	f := &fleet{dns: dnstest.Start(t), name: "_game._tcp.rooms.test"}
	for i := range n {
		e := startEcho(t, "127.0.0.1:0")
		f.servers = append(f.servers, e)
		f.dns.SetA(f.target(i), 30, "127.0.0.1")
	}
	return f
}

func (f *fleet) target(i int) string { return "gs" + strconv.Itoa(i) + ".rooms.test" }

// id is the backend id discovery gives server i.
func (f *fleet) id(i int) string {
	return f.target(i) + ":" + strconv.Itoa(int(f.servers[i].port()))
}

// publish makes the SRV records name exactly servers idx, at priority 10,
// or at 20 (backups) for those in backup.
func (f *fleet) publish(ttl uint32, idx []int, backup ...int) {
	var recs []dnstest.SRV
	for _, i := range idx {
		prio := uint16(10)
		for _, b := range backup {
			if b == i {
				prio = 20
			}
		}
		recs = append(recs, dnstest.SRV{Target: f.target(i), Port: f.servers[i].port(), Priority: prio, Weight: 1})
	}
	f.dns.SetSRV(f.name, ttl, recs...)
}

func (f *fleet) pool(t *testing.T, ev *eventLog, mod func(*balancer.PoolConfig)) *balancer.Pool {
	t.Helper()
	cfg := balancer.PoolConfig{
		Name:            "rooms",
		Discover:        source(t, "srv:"+f.name, resolver(t, f.dns.Addr)),
		ResolveInterval: 20 * time.Millisecond,
		Health:          balancer.HealthConfig{Check: balancer.CheckTCP, Interval: 20 * time.Millisecond, Timeout: 500 * time.Millisecond, Rise: 2, Fall: 2},
		OnChange:        ev.record,
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := balancer.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(p.Close)
	return p
}

// TestPoolFollowsDNS: a backend added to the SRV records joins the running
// pool, is health-checked before it takes players, then gets them; a
// backend removed from the records gets no new player while a player
// connected through it keeps playing; the backend that stayed keeps its
// counters.
func TestPoolFollowsDNS(t *testing.T) {
	f := newFleet(t, 3)
	f.publish(30, []int{0, 1})
	var ev eventLog
	p := f.pool(t, &ev, nil)
	waitFor(t, "the first answer", func() bool { return len(p.Backends()) == 2 })
	got := map[string]int{}
	for range 4 {
		got[dialID(t, p)]++
	}
	if got[f.id(0)] != 2 || got[f.id(1)] != 2 {
		t.Fatalf("players on %v, want 2 on each of %s and %s", got, f.id(0), f.id(1))
	}
	kept := p.Lookup(f.servers[1].addr())

	// Added while it does not listen yet (registered before it is ready):
	// it starts DOWN and no player is even tried on it; once it listens,
	// its checks bring it UP and it gets players.
	addr2 := f.servers[2].addr()
	f.servers[2].stop()
	f.publish(30, []int{0, 1, 2})
	waitFor(t, "the added backend", func() bool { return ids(p)[f.id(2)] })
	// Events are delivered after the set is swapped: wait for it.
	waitFor(t, "its added event", func() bool { return ev.count(balancer.EventAdded, f.id(2)) == 1 })
	added := p.Lookup(addr2)
	for range 20 {
		dialID(t, p)
	}
	if added.Healthy() || added.Dials() != 0 {
		t.Fatalf("a new backend that does not listen: healthy %v, %d connect attempts", added.Healthy(), added.Dials())
	}
	f.servers[2] = restartEcho(t, addr2)
	waitFor(t, "its checks to pass", added.Healthy)
	waitFor(t, "its UP event", func() bool { return ev.count(balancer.EventHealth, addr2) == 1 })
	waitFor(t, "a player on the added backend", func() bool { return dialID(t, p) == f.id(2) })

	// Removed, with a player on it.
	var live *balancer.Lease
	for live == nil {
		l, err := p.Dial(context.Background(), balancer.DialRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if l.Backend.ID() == f.id(0) {
			live = l
			continue
		}
		l.Conn.Close()
		l.Release()
	}
	defer live.Release()
	defer live.Conn.Close()
	f.publish(30, []int{1, 2})
	waitFor(t, "the removal", func() bool { return !ids(p)[f.id(0)] })
	removed := live.Backend
	dials := removed.Dials()
	for range 20 {
		if id := dialID(t, p); id == f.id(0) {
			t.Fatal("a removed backend got a new player")
		}
	}
	if removed.Dials() != dials {
		t.Errorf("dials to the removed backend went %d → %d", dials, removed.Dials())
	}
	if err := echoOnce(live); err != nil {
		t.Fatalf("the player on the removed backend lost its connection: %v", err)
	}
	if st, _ := p.Discovery(); st.Draining != 1 || st.Backends != 2 {
		t.Errorf("discovery %+v, want 2 backends and 1 draining", st)
	}
	if p.Lookup(f.servers[1].addr()) != kept || kept.Dials() < 2 {
		t.Error("the backend that stayed was replaced or lost its counters")
	}
	waitFor(t, "the removed event", func() bool { return ev.count(balancer.EventRemoved, f.id(0)) == 1 })
}

// TestPoolDrainTimeout: a removed backend's players are disconnected at
// DrainTimeout, not before the removal.
func TestPoolDrainTimeout(t *testing.T) {
	f := newFleet(t, 2)
	f.publish(30, []int{0, 1})
	var ev eventLog
	p := f.pool(t, &ev, func(c *balancer.PoolConfig) {
		c.Balance = balancer.LeastConn
		c.DrainTimeout = 100 * time.Millisecond
	})
	waitFor(t, "the first answer", func() bool { return len(p.Backends()) == 2 })
	var leases []*balancer.Lease
	for range 2 {
		l, err := p.Dial(context.Background(), balancer.DialRequest{})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release()
		defer l.Conn.Close()
		leases = append(leases, l)
	}
	gone, stays := leases[0], leases[1]
	if gone.Backend == stays.Backend {
		t.Fatal("least_conn put both players on one backend")
	}
	var keep int
	for i := range f.servers {
		if f.id(i) == stays.Backend.ID() {
			keep = i
		}
	}
	if err := echoOnce(gone); err != nil {
		t.Fatal(err)
	}
	f.publish(30, []int{keep})
	waitFor(t, "the drain timeout to close the removed backend's player", func() bool { return echoOnce(gone) != nil })
	if err := echoOnce(stays); err != nil {
		t.Errorf("the player on the backend that stayed: %v", err)
	}
}

// TestPoolSRVPriorities: the lowest SRV priority is the primary set; a
// higher one is a backup that takes players only while no primary is
// healthy.
func TestPoolSRVPriorities(t *testing.T) {
	f := newFleet(t, 3)
	f.publish(30, []int{0, 1, 2}, 2)
	var ev eventLog
	p := f.pool(t, &ev, nil)
	waitFor(t, "the first answer", func() bool { return len(p.Backends()) == 3 })
	backup := p.Lookup(f.servers[2].addr())
	if !backup.Backup() || p.Lookup(f.servers[0].addr()).Backup() {
		t.Fatal("priority 20 is not the backup, or 10 is")
	}
	for range 10 {
		if dialID(t, p) == f.id(2) {
			t.Fatal("the backup got a player while primaries are healthy")
		}
	}
	f.servers[0].stop()
	f.servers[1].stop()
	waitFor(t, "the primaries DOWN", func() bool {
		return !p.Lookup(f.servers[0].addr()).Healthy() && !p.Lookup(f.servers[1].addr()).Healthy()
	})
	for range 5 {
		if id := dialID(t, p); id != f.id(2) {
			t.Fatalf("with every primary down a player went to %s", id)
		}
	}
}

// TestPoolKeepsSetWhenDNSFails: a resolver that is down, answers SERVFAIL,
// or answers with no record (NXDOMAIN, or the name without SRV records)
// never empties the pool: players keep being served by the last set, each
// failed lookup is counted, and the outage is reported once, then its end.
func TestPoolKeepsSetWhenDNSFails(t *testing.T) {
	f := newFleet(t, 2)
	f.publish(30, []int{0, 1})
	var ev eventLog
	p := f.pool(t, &ev, nil)
	waitFor(t, "the first answer", func() bool { return len(p.Backends()) == 2 })
	src := "srv:" + f.name

	steps := []struct {
		name        string
		break_, fix func()
		errors      bool // counted as Failures (else Empty)
	}{
		{"resolver down", f.dns.Stop, f.dns.Restart, true},
		{"SERVFAIL", func() { f.dns.SetMode(dnstest.ServFail) }, func() { f.dns.SetMode(dnstest.Answer) }, true},
		{"NXDOMAIN", func() { f.dns.Delete(f.name) }, func() { f.publish(30, []int{0, 1}) }, false},
		{"no SRV record", func() { f.publish(30, nil) }, func() { f.publish(30, []int{0, 1}) }, false},
	}
	for i, st := range steps {
		before, _ := p.Discovery()
		st.break_()
		waitFor(t, st.name+": two failed lookups", func() bool {
			now, _ := p.Discovery()
			if st.errors {
				return now.Failures >= before.Failures+2
			}
			return now.Empty >= before.Empty+2
		})
		if got := len(p.Backends()); got != 2 {
			t.Fatalf("%s: %d backends, want the last 2 kept", st.name, got)
		}
		if now, _ := p.Discovery(); !now.Failing || (st.errors && now.LastError == "") {
			t.Errorf("%s: status %+v", st.name, now)
		}
		for range 4 {
			dialID(t, p) // players are still served
		}
		if n := ev.count(balancer.EventDiscoveryFailed, src); n != i+1 {
			t.Errorf("%s: %d failure events in all, want one per outage (%d)", st.name, n, i+1)
		}
		st.fix()
		waitFor(t, st.name+": recovery", func() bool { now, _ := p.Discovery(); return !now.Failing })
		waitFor(t, st.name+": its event", func() bool { return ev.count(balancer.EventDiscoveryOK, src) == i+1 })
	}
	// Working again: a change applies.
	f.publish(30, []int{1})
	waitFor(t, "a change after the outages", func() bool { return len(p.Backends()) == 1 })
}

// TestPoolHonoursTTL: with a long ResolveInterval, a short record TTL
// brings the next lookup forward, but never closer than 1 s to the last
// (TTL 0 included).
func TestPoolHonoursTTL(t *testing.T) {
	f := newFleet(t, 2)
	f.publish(1, []int{0})
	var ev eventLog
	p := f.pool(t, &ev, func(c *balancer.PoolConfig) { c.ResolveInterval = time.Hour })
	waitFor(t, "the first answer", func() bool { return len(p.Backends()) == 1 })
	f.publish(0, []int{0, 1})
	waitFor(t, "the change, within the 1s TTL", func() bool { return len(p.Backends()) == 2 })
	waitFor(t, "two lookups after the TTL 0 answer", func() bool {
		n := 0
		for _, q := range f.dns.Queries() {
			if q.Name == f.name+"." {
				n++
			}
		}
		return n >= 4
	})
	var last time.Time
	for _, q := range f.dns.Queries() {
		if q.Name != f.name+"." {
			continue
		}
		if !last.IsZero() && q.Time.Sub(last) < 900*time.Millisecond {
			t.Errorf("lookups %v apart: the 1s floor was not kept", q.Time.Sub(last))
		}
		last = q.Time
	}
}

// TestPoolOverTCP: truncated UDP answers are asked again over TCP, and the
// pool follows the records the same way.
func TestPoolOverTCP(t *testing.T) {
	f := newFleet(t, 2)
	f.dns.SetTruncate(true)
	f.publish(30, []int{0, 1})
	var ev eventLog
	p := f.pool(t, &ev, nil)
	waitFor(t, "the answer over TCP", func() bool { return len(p.Backends()) == 2 })
	tcp := 0
	for _, q := range f.dns.Queries() {
		if q.Net == "tcp" {
			tcp++
		}
	}
	if tcp == 0 {
		t.Fatal("no query over TCP")
	}
	f.publish(30, []int{1})
	waitFor(t, "a removal over TCP", func() bool { return len(p.Backends()) == 1 })
}

// TestPoolDiscoverA: discover = "a:NAME:PORT" makes every address of the
// name a backend; a new address joins and gets players.
func TestPoolDiscoverA(t *testing.T) {
	one := startEcho(t, "127.0.0.1:0")
	port := strconv.Itoa(int(one.port()))
	two := startEcho(t, "127.0.0.2:"+port) // same port on another loopback address
	srv := dnstest.Start(t)
	srv.SetA("gs.test", 30, "127.0.0.1")
	var ev eventLog
	p, err := balancer.NewPool(balancer.PoolConfig{
		Name:            "a",
		Discover:        source(t, "a:gs.test:"+port, resolver(t, srv.Addr)),
		ResolveInterval: 20 * time.Millisecond,
		Health:          balancer.HealthConfig{Check: balancer.CheckTCP, Interval: 20 * time.Millisecond, Timeout: 500 * time.Millisecond},
		OnChange:        ev.record,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	defer p.Close()
	waitFor(t, "the first answer", func() bool { return len(p.Backends()) == 1 })
	srv.SetA("gs.test", 30, "127.0.0.1", "127.0.0.2")
	waitFor(t, "the second address", func() bool { return ids(p)[two.addr()] })
	waitFor(t, "a player on it", func() bool { return dialID(t, p) == two.addr() })
}
