package l7

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sluice/balancer"
)

// Per-request balancing (issue 10): every plain HTTP request picks its
// backend by the pool's balance and hash key, while connections to each
// backend are pooled and reused.

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func countedBackend(t *testing.T) (*wsBackend, *atomic.Int32) {
	n := new(atomic.Int32)
	return startWSBackend(t, func(ln net.Listener) net.Listener { return countingListener{ln, n} }), n
}

func poolOf(t testing.TB, cfg balancer.PoolConfig, maxConns int, addrs ...string) *balancer.Pool {
	t.Helper()
	for _, a := range addrs {
		cfg.Backends = append(cfg.Backends, balancer.BackendConfig{Address: a, MaxConnections: maxConns})
	}
	cfg.Name = "test"
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 2 * time.Second
	}
	p, err := balancer.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// get sends one request and returns the backend that answered it.
func get(t *testing.T, hc *http.Client, method, url string, body io.Reader) string {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d %q", method, url, resp.StatusCode, b)
	}
	return resp.Header.Get("X-Backend")
}

// 40 requests on one client keep-alive connection, round robin over two
// backends: 20 each (it was 40 on one: the backend was chosen per backend
// connection), over at most a couple of backend connections each.
func TestPlainRoundRobinPerRequest(t *testing.T) {
	checkLeaks(t)
	a, na := countedBackend(t)
	b, nb := countedBackend(t)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(),
		Pool: poolOf(t, balancer.PoolConfig{Balance: balancer.RoundRobin}, 0, a.addr, b.addr)})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	got := map[string]int{}
	for range 40 {
		got[get(t, hc, "GET", l.url("/api/state"), nil)]++
	}
	if got[a.addr] != 20 || got[b.addr] != 20 {
		t.Fatalf("requests per backend: %v, want 20 each", got)
	}
	if na.Load() > 2 || nb.Load() > 2 {
		t.Fatalf("backend connections: %d and %d for 40 sequential requests: not reused", na.Load(), nb.Load())
	}
}

// The same hash key reaches the same backend over any client connection,
// and different keys spread.
func TestPlainHashKeyPerRequest(t *testing.T) {
	checkLeaks(t)
	a, _ := countedBackend(t)
	b, _ := countedBackend(t)
	hk, err := balancer.ParseHashKey("query:uid")
	if err != nil {
		t.Fatal(err)
	}
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(),
		Pool: poolOf(t, balancer.PoolConfig{Balance: balancer.Hash, HashKey: hk}, 0, a.addr, b.addr)})
	owner := map[string]string{}
	used := map[string]bool{}
	for c := range 3 {
		hc := l.httpClient() // a new client connection each round
		for u := range 20 {
			uid := string(rune('a'+u)) + "-player"
			be := get(t, hc, "GET", l.url("/socket.io/?EIO=4&transport=polling&uid="+uid), nil)
			if prev, ok := owner[uid]; ok && prev != be {
				t.Fatalf("connection %d: uid %s went to %s, before to %s", c, uid, be, prev)
			}
			owner[uid] = be
			used[be] = true
		}
		hc.CloseIdleConnections()
	}
	if len(used) != 2 {
		t.Fatalf("20 keys all on %v", used)
	}
}

// A backend that refuses is replaced by the next choice for each request,
// bodies included (nothing of the body was read when the dial failed).
func TestPlainRequestRetriesRefusedBackend(t *testing.T) {
	checkLeaks(t)
	live, _ := countedBackend(t)
	dead := refusedAddr(t)
	p := poolOf(t, balancer.PoolConfig{Balance: balancer.RoundRobin, MaxFails: 1000}, 0, dead, live.addr)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: p})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	for i := range 6 {
		var body io.Reader
		method := "GET"
		if i%2 == 1 {
			method, body = "POST", strings.NewReader(strings.Repeat("x", 1000))
		}
		if be := get(t, hc, method, l.url("/api/move"), body); be != live.addr {
			t.Fatalf("request %d answered by %q", i, be)
		}
	}
	var refused uint64
	for _, s := range p.Status() {
		if s.Address == dead {
			refused = s.Failures
		}
	}
	if refused == 0 {
		t.Fatal("no request tried the refusing backend: round robin was not per request")
	}
	for _, r := range live.requests() {
		if r.Method == "POST" && r.ContentLength != 1000 {
			t.Fatalf("a retried POST reached the backend with length %d", r.ContentLength)
		}
	}
}

// An idle pooled backend connection is not a player: with max_connections
// = 1, requests from two client connections take turns on the one slot.
func TestPlainIdlePooledConnHoldsNoSlot(t *testing.T) {
	checkLeaks(t)
	a, _ := countedBackend(t)
	p := poolOf(t, balancer.PoolConfig{Balance: balancer.RoundRobin}, 1, a.addr)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: p})
	h1, h2 := l.httpClient(), l.httpClient()
	defer h1.CloseIdleConnections()
	defer h2.CloseIdleConnections()
	for range 5 {
		get(t, h1, "GET", l.url("/a"), nil)
		get(t, h2, "GET", l.url("/b"), nil)
	}
	if act := p.Status()[0].Active; act != 0 {
		t.Fatalf("active %d with no request in flight", act)
	}
}
