//go:build stress

package main

// Placement that N instances agree on (issue 12, part 6), end to end: three
// sluice child processes with the same file, in front of game servers that
// are child processes too (runEchoBackend: each answers with its id first),
// found through the SRV records of an in-process DNS server, each with an
// agent. A room is an SNI name (hash_key = "sni", an l4 passthrough route):
// the client sends a ClientHello for room-N.rooms.test through a random
// instance and reads which server answered.
//
//	go test -tags stress -run TestPlacementAgreement -v -count=1 .

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sluice/balancer"
	"sluice/balancer/balancertest"
	"sluice/balancer/discover/dnstest"
	"sluice/tlsutil/tlstest"
)

const (
	placementRooms     = 300
	placementPerRoom   = 5
	placementInstances = 3
	// The game servers' health checks: a dead one is DOWN on every
	// instance within fall × interval + timeout.
	placementFall     = 2
	placementInterval = 200 * time.Millisecond
)

// placementConfig is every instance's file but for its two addresses:
// hash_balance_factor = 1 is the tightest bound there is; bounded by each
// instance's own connection counts it would split rooms at once, bounded by
// the agents' loads (equal here) it moves nothing.
const placementConfig = `
[admin]
listen = %q
[log]
level = "warn"
[resolver]
servers = [%q]
[listeners.public]
address = %q
max_connections_per_ip = 0 # every player is 127.0.0.1
new_connections_per_ip = { rate = 0 }
[routes.rooms]
listener = "public"
sni = ["*.rooms.test"]
pool = "rooms"
[pools.rooms]
balance = "hash"
hash_key = "sni"
hash_balance_factor = 1.0
discover = "srv:_game._tcp.rooms.test"
resolve_interval = "1s"
health = { check = "tcp", interval = "200ms", timeout = "200ms", rise = 2, fall = 2 }
agent = { port = %d, interval = "200ms" }
`

// gameServer is one backend: a child process, its agent, its SRV record.
type gameServer struct {
	id     byte   // what it answers first
	host   string // its own loopback address, 127.0.0.N: the agent's port is the pool's
	addr   string // host:port
	target string // its SRV target
	kill   func()
	agent  *gameAgent
}

type placement struct {
	t         *testing.T
	dns       *dnstest.Server
	servers   []*gameServer
	instances []string // the instances' listeners
	admins    []string // their admin servers
	hellos    [][]byte // per room
}

// publish makes the SRV records name exactly servers.
func (pt *placement) publish(servers ...*gameServer) {
	var recs []dnstest.SRV
	for _, s := range servers {
		_, port, _ := net.SplitHostPort(s.addr)
		p, _ := strconv.Atoi(port)
		pt.dns.SetA(s.target, 1, s.host)
		recs = append(recs, dnstest.SRV{Target: s.target, Port: uint16(p), Priority: 10, Weight: 10})
	}
	pt.dns.SetSRV("_game._tcp.rooms.test", 1, recs...)
}

// connect sends room's hello through instance and returns the id of the
// server that answered, and the open connection.
func (pt *placement) connect(room, instance int) (byte, net.Conn, error) {
	c, err := net.DialTimeout("tcp", pt.instances[instance], 5*time.Second)
	if err != nil {
		return 0, nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(pt.hellos[room]); err != nil {
		c.Close()
		return 0, nil, err
	}
	var id [1]byte
	if _, err := io.ReadFull(c, id[:]); err != nil {
		c.Close()
		return 0, nil, err
	}
	c.SetDeadline(time.Time{})
	return id[0], c, nil
}

// round makes placementPerRoom connections for every room, each through a
// random instance, 32 at a time, and returns the ids that answered (0 for
// a failed connection). With hold the connections stay open until release
// is called: the instances count them as live players.
func (pt *placement) round(hold bool) (got [][placementPerRoom]byte, release func()) {
	got = make([][placementPerRoom]byte, placementRooms)
	var mu sync.Mutex
	var held []net.Conn
	jobs := make(chan [2]int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				id, c, err := pt.connect(j[0], rand.IntN(len(pt.instances)))
				if err != nil {
					continue
				}
				got[j[0]][j[1]] = id
				if hold {
					mu.Lock()
					held = append(held, c)
					mu.Unlock()
				} else {
					c.Close()
				}
			}
		}()
	}
	for room := range placementRooms {
		for k := range placementPerRoom {
			jobs <- [2]int{room, k}
		}
	}
	close(jobs)
	wg.Wait()
	return got, func() {
		for _, c := range held {
			c.Close()
		}
	}
}

// agreed returns each room's server when every connection of the round
// reached the same one, and the rooms where they did not (or failed).
func agreed(got [][placementPerRoom]byte) (owner []byte, split []int) {
	owner = make([]byte, len(got))
	for room, ids := range got {
		owner[room] = ids[0]
		for _, id := range ids {
			if id == 0 || id != ids[0] {
				split = append(split, room)
				owner[room] = 0
				break
			}
		}
	}
	return owner, split
}

// state reads instance i's GET /api/v1/state.
func (pt *placement) state(i int) (stateJSON, error) {
	var st stateJSON
	resp, err := adminClient.Get("http://" + pt.admins[i] + "/api/v1/state")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// everyInstance waits until cond holds for every instance's rooms pool.
func (pt *placement) everyInstance(what string, cond func(bs []backendJSON) bool) {
	pt.t.Helper()
	waitUntil(pt.t, 30*time.Second, what, func() bool {
		for i := range pt.instances {
			st, err := pt.state(i)
			if err != nil || len(st.Pools) != 1 || !cond(st.Pools[0].Backends) {
				return false
			}
		}
		return true
	})
}

// settle samples rounds until every room's connections agree (and, if
// avoid is not 0, none reaches server avoid), for at most 60 s; it returns
// the owners and how long it took.
func (pt *placement) settle(what string, avoid byte) ([]byte, time.Duration) {
	pt.t.Helper()
	start := time.Now()
	for rounds := 1; ; rounds++ {
		got, _ := pt.round(false)
		owner, split := agreed(got)
		if len(split) == 0 && !slices.Contains(owner, avoid) {
			pt.t.Logf("%s: the instances agree on every room after %v (%d rounds)", what, time.Since(start).Round(time.Millisecond), rounds)
			return owner, time.Since(start)
		}
		if time.Since(start) > 60*time.Second {
			pt.t.Fatalf("%s: after 60 s, %d rooms still split (e.g. room %d: %q)", what, len(split), split[0], got[split[0]][:])
		}
	}
}

// ids returns the ids discovery gave the servers (SRV target:port), as the
// first instance reports them.
func (pt *placement) ids() map[byte]string {
	pt.t.Helper()
	st, err := pt.state(0)
	must(pt.t, err)
	ids := map[byte]string{}
	for _, b := range st.Pools[0].Backends {
		for _, s := range pt.servers {
			if b.Address == s.addr {
				ids[s.id] = b.ID
			}
		}
	}
	return ids
}

// predict returns each room's server as one sluice computes it over
// servers (all up and ready): what the instances must agree on.
func (pt *placement) predict(ids map[byte]string, servers ...*gameServer) []byte {
	pt.t.Helper()
	cfg := balancer.PoolConfig{Name: "rooms", Balance: balancer.Hash, HashKey: balancer.HashKey{Kind: balancer.HashSNI}}
	byID := map[string]byte{}
	for _, s := range servers {
		cfg.Backends = append(cfg.Backends, balancer.BackendConfig{ID: ids[s.id], Address: s.addr, Weight: 10})
		byID[ids[s.id]] = s.id
	}
	p, err := balancer.NewPool(cfg)
	must(pt.t, err)
	defer p.Close()
	out := make([]byte, placementRooms)
	for room := range out {
		req := balancer.DialRequest{HashKey: fmt.Sprintf("room-%d.rooms.test", room), HasHashKey: true}
		c, err := p.NewChooser(&req).Next(context.Background())
		must(pt.t, err)
		out[room] = byID[c.Backend.ID()]
		c.Release()
	}
	return out
}

// mismatch returns the rooms whose owner is not the predicted one.
func mismatch(owner, want []byte) []int {
	var bad []int
	for room := range owner {
		if owner[room] != want[room] {
			bad = append(bad, room)
		}
	}
	return bad
}

func count(owner []byte) map[byte]int {
	n := map[byte]int{}
	for _, o := range owner {
		n[o]++
	}
	return n
}

// counts formats count(owner) for the log: "A:81 B:65 ...".
func counts(owner []byte) string {
	n := count(owner)
	var out []string
	for _, id := range slices.Sorted(maps.Keys(n)) {
		out = append(out, fmt.Sprintf("%c:%d", id, n[id]))
	}
	return strings.Join(out, " ")
}

func TestPlacementAgreement(t *testing.T) {
	pt := &placement{t: t, dns: dnstest.Start(t)}
	for room := range placementRooms {
		pt.hellos = append(pt.hellos, tlstest.ChromeLikeHello(fmt.Sprintf("room-%d.rooms.test", room)))
	}
	// Five game servers, each on a loopback address of its own (an agent
	// port is the pool's, on every backend's host) and on a fixed port
	// below the ephemeral range: a discovered backend's id is its
	// target:port, and fixed ids make the room counts the same every run.
	hosts := make([]string, 5)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("127.0.0.%d", 61+i)
	}
	agentPort := balancertest.SharedPort(t, hosts...)
	for i, h := range hosts {
		addr := net.JoinHostPort(h, strconv.Itoa(27061+i))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the fixed address %s is taken: %v", addr, err)
		}
		ln.Close()
		id := byte('A' + i)
		cmd := startEchoProcess(t, addr, string(id))
		s := &gameServer{id: id, host: h, addr: addr, target: fmt.Sprintf("gs-%c.rooms.test", 'a'+i),
			kill: func() { cmd.Process.Signal(syscall.SIGKILL); cmd.Wait() }}
		// Every server reports the same load: the bound moves no room.
		s.agent = startGameAgent(t, net.JoinHostPort(h, strconv.Itoa(agentPort)), "up ready 100% maxconn:0 load:10\n")
		pt.servers = append(pt.servers, s)
	}
	pt.publish(pt.servers[:4]...)

	for range placementInstances {
		listen, adm := freePort(t), freePort(t)
		_, out := startProcess(t, fmt.Sprintf(placementConfig, adm, pt.dns.Addr, listen, agentPort), 0)
		waitListening(t, listen, out)
		pt.instances = append(pt.instances, listen)
		pt.admins = append(pt.admins, adm)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("instance %s:\n%s", listen, out.String())
			}
		})
	}
	pt.everyInstance("4 backends up with their agents' reports on every instance", func(bs []backendJSON) bool {
		up := 0
		for _, b := range bs {
			if b.Healthy && b.Agent != nil && b.Agent.Load != nil && *b.Agent.Load == 10 {
				up++
			}
		}
		return up == 4
	})
	ids := pt.ids()
	t.Logf("backend ids: %q", ids)

	// 1. Every room's 5 connections, held open together (1,500 live
	// players, spread unevenly over the instances), reach one server.
	got, release := pt.round(true)
	owner, split := agreed(got)
	release()
	if len(split) > 0 {
		t.Fatalf("%d of %d rooms split over servers, e.g. room %d: %q", len(split), placementRooms, split[0], got[split[0]][:])
	}
	before := count(owner)
	t.Logf("rooms per server: %s", counts(owner))
	if bad := mismatch(owner, pt.predict(ids, pt.servers[:4]...)); len(bad) > 0 {
		t.Fatalf("%d rooms not where one sluice would send them, e.g. room %d on %c", len(bad), bad[0], owner[bad[0]])
	}

	// 2. SIGKILL the server with the most rooms: only its rooms move, and
	// every instance agrees on where.
	victim := pt.servers[0]
	for _, s := range pt.servers[:4] {
		if before[s.id] > before[victim.id] {
			victim = s
		}
	}
	victim.kill()
	victim.agent.stop() // a dead server's agent does not answer either
	after, took := pt.settle(fmt.Sprintf("after SIGKILL of %c", victim.id), victim.id)
	pt.everyInstance("the killed server DOWN on every instance", func(bs []backendJSON) bool {
		for _, b := range bs {
			if b.Address == victim.addr {
				return !b.Healthy
			}
		}
		return false
	})
	t.Logf("SIGKILL of %c (%d rooms): every moved room agreed on %v after the kill (fall × interval + 1 s = %v)",
		victim.id, before[victim.id], took.Round(time.Millisecond), placementFall*placementInterval+time.Second)
	// Retries sent its rooms to their next server before the checks said
	// DOWN; once every instance says so, the rooms stay there.
	got, _ = pt.round(false)
	if again, split := agreed(got); len(split) > 0 || !slices.Equal(again, after) {
		t.Errorf("with the killed server DOWN everywhere: %d rooms split, %d moved again", len(split), len(mismatch(again, after)))
	}
	moved := 0
	for room := range owner {
		if after[room] != owner[room] {
			moved++
			if owner[room] != victim.id {
				t.Errorf("room %d moved from %c to %c: only the killed server's rooms may move", room, owner[room], after[room])
			}
		}
	}
	if share := before[victim.id]; moved != share {
		t.Errorf("%d rooms moved, want exactly the killed server's %d", moved, share)
	}
	var survivors []*gameServer
	for _, s := range pt.servers[:4] {
		if s != victim {
			survivors = append(survivors, s)
		}
	}
	if bad := mismatch(after, pt.predict(ids, survivors...)); len(bad) > 0 {
		t.Errorf("%d rooms not where one sluice without %c would send them, e.g. room %d on %c", len(bad), victim.id, bad[0], after[bad[0]])
	}

	// 3. A fifth server joins through discovery: only rooms it wins move,
	// all to it, and every instance agrees.
	joiner := pt.servers[4]
	pt.publish(pt.servers...)
	pt.everyInstance("the new server UP on every instance", func(bs []backendJSON) bool {
		for _, b := range bs {
			if b.Address == joiner.addr {
				return b.Healthy && b.Agent != nil && b.Agent.Reports > 0
			}
		}
		return false
	})
	joined, _ := pt.settle(fmt.Sprintf("after %c joined", joiner.id), victim.id)
	ids = pt.ids()
	// Its share is the rooms it wins in rendezvous order over the servers
	// up (one sluice's placement): those move, and nothing else.
	predicted := pt.predict(ids, append(survivors, joiner)...)
	share := count(predicted)[joiner.id]
	moved = 0
	for room := range after {
		if joined[room] != after[room] {
			moved++
			if joined[room] != joiner.id {
				t.Errorf("room %d moved from %c to %c: only to the new server", room, after[room], joined[room])
			}
		}
	}
	t.Logf("%c joined: %d rooms moved to it (its share: %d, 1/%d of the rooms is %d); rooms per server %s",
		joiner.id, moved, share, len(survivors)+1, placementRooms/(len(survivors)+1), counts(joined))
	if moved == 0 || moved > share+placementRooms*2/100 {
		t.Errorf("%d rooms moved to the new server, want 1 to its share %d + 2 %%", moved, share)
	}
	if bad := mismatch(joined, predicted); len(bad) > 0 {
		t.Errorf("%d rooms not where one sluice would send them, e.g. room %d on %c", len(bad), bad[0], joined[bad[0]])
	}
}
