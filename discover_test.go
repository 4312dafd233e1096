package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"sluice/balancer"
	"sluice/balancer/discover/dnstest"
)

// discoverConfig is one l4 listener in front of a pool that takes its
// backends from the SRV records of the test DNS server at %q.
const discoverConfig = `
drain_timeout = "1m"
[resolver]
servers = [%q]
[listeners.public]
address = "127.0.0.1:0"
plain_route = "raw"
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
discover = "srv:_game._tcp.rooms.test"
resolve_interval = "1s"
health = { check = "tcp", interval = "100ms", timeout = "100ms", rise = 1, fall = 2 }
`

// publishSRV makes the records name exactly the backends bs (targets
// gsI.rooms.test, all on 127.0.0.1), with TTL 1 s.
func publishSRV(dns *dnstest.Server, bs ...*backend) {
	var recs []dnstest.SRV
	for i, b := range bs {
		_, port, _ := net.SplitHostPort(b.addr)
		p, _ := strconv.Atoi(port)
		target := "gs" + port + ".rooms.test"
		dns.SetA(target, 1, "127.0.0.1")
		recs = append(recs, dnstest.SRV{Target: target, Port: uint16(p), Priority: 10, Weight: uint16(i + 1)})
	}
	dns.SetSRV("_game._tcp.rooms.test", 1, recs...)
}

// TestDiscoverThroughSluice: a running sluice follows the DNS records of a
// discover pool while players are connected: a new game server gets
// players; a removed one gets no new player while its player keeps
// playing; a resolver outage keeps the set, is logged and counted in
// sluice_discovery_failures_total; a reload during the outage keeps the
// discovered backends (Adopt) and serves on; the resolver's return is seen.
func TestDiscoverThroughSluice(t *testing.T) {
	t.Parallel()
	dns := dnstest.Start(t)
	b1, b2 := echoBackend(t), echoBackend(t)
	publishSRV(dns, b1)
	f := startFileLB(t, fmt.Sprintf(discoverConfig, dns.Addr))
	m := newMetrics(func() *Runtime { return f.rt.Load() })
	pool := func() *balancer.Pool { return f.rt.Load().Pools["p"] }
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 15s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	dials := func(b *backend) uint64 {
		if x := pool().Lookup(b.addr); x != nil {
			return x.Dials()
		}
		return 0
	}
	wait("the first answer", func() bool { return len(pool().Backends()) == 1 })
	live := dial(t, f.addr("public"))
	echoOnce(t, live)
	if dials(b1) != 1 {
		t.Fatalf("the first player was not sent to the discovered backend")
	}

	publishSRV(dns, b1, b2)
	wait("the added backend UP", func() bool { x := pool().Lookup(b2.addr); return x != nil && x.Healthy() })
	wait("a player on the added backend", func() bool {
		c := dial(t, f.addr("public"))
		echoOnce(t, c)
		c.Close()
		return dials(b2) > 0
	})

	publishSRV(dns, b2)
	wait("the removal", func() bool { return len(pool().Backends()) == 1 })
	before := dials(b1)
	for range 5 {
		c := dial(t, f.addr("public"))
		echoOnce(t, c)
		c.Close()
	}
	if dials(b1) != before {
		t.Errorf("the removed backend got %d new players", dials(b1)-before)
	}
	echoOnce(t, live) // the player on the removed backend plays on

	dns.Stop()
	wait("a failed lookup counted", func() bool {
		v, ok := lookup(gather(t, m), "sluice_discovery_failures_total", "pool=p", "reason=error")
		return ok && v >= 1
	})
	if v := value(t, m, "sluice_discovery_failing", "pool=p"); v != 1 {
		t.Errorf("sluice_discovery_failing = %v during the outage", v)
	}
	wait("the outage logged", func() bool {
		for _, e := range f.logs.All() {
			if r, _ := fieldOf(e, "reason").(string); strings.Contains(r, "keeping the last 1 discovered backends") {
				return true
			}
		}
		return false
	})
	must(t, f.reload())
	if got := len(pool().Backends()); got != 1 || pool().Backends()[0].Addr() != b2.addr {
		t.Fatalf("after a reload during the outage: %d backends", got)
	}
	c := dial(t, f.addr("public"))
	echoOnce(t, c)
	c.Close()
	echoOnce(t, live)

	dns.Restart()
	wait("the resolver's return", func() bool {
		v, ok := lookup(gather(t, m), "sluice_discovery_failing", "pool=p")
		return ok && v == 0
	})
	if v := value(t, m, "sluice_discovery_backends", "pool=p"); v != 1 {
		t.Errorf("sluice_discovery_backends = %v", v)
	}
}
