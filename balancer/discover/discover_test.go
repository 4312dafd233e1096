package discover_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"sluice/balancer"
	"sluice/balancer/discover"
	"sluice/balancer/discover/dnstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func resolver(t *testing.T, servers ...string) *discover.Resolver {
	t.Helper()
	r, err := discover.NewResolver(servers)
	if err != nil {
		t.Fatal(err)
	}
	r.Timeout = 300 * time.Millisecond // Drop mode: fail fast
	return r
}

func source(t *testing.T, spec string, r *discover.Resolver) *discover.Source {
	t.Helper()
	s, err := discover.New(spec, r)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNew(t *testing.T) {
	r := resolver(t)
	for _, tt := range []struct {
		spec string
		ok   bool
	}{
		{"srv:_game._tcp.rooms.default.svc.cluster.local", true},
		{"srv:_game._tcp.rooms.test.", true},
		{"a:gs.internal:7000", true},
		{"a:gs.internal", false},        // no port
		{"a:gs.internal:0", false},      // port 0
		{"a:gs.internal:70000", false},  // port out of range
		{"a:10.0.0.1:7000", false},      // an address: belongs in backends
		{"srv:", false},                 // no name
		{"srv:.", false},                // the root
		{"srv:a..b", false},             // empty label
		{"dns:gs.internal:7000", false}, // unknown kind
		{"gs.internal:7000", false},
		{"", false},
	} {
		t.Run(tt.spec, func(t *testing.T) {
			s, err := discover.New(tt.spec, r)
			if (err == nil) != tt.ok {
				t.Fatalf("New(%q): %v", tt.spec, err)
			}
			if err == nil && s.String() != tt.spec {
				t.Errorf("String() = %q", s.String())
			}
			if err != nil && !strings.HasPrefix(err.Error(), "discover: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
	for _, bad := range []string{"127.0.0.1", "dns.example:53", "127.0.0.1:0", ":53"} {
		if _, err := discover.NewResolver([]string{bad}); err == nil {
			t.Errorf("resolver %q accepted", bad)
		}
	}
}

// TestDiscoverSRV pins what SRV records become: ids TARGET:PORT, the
// target's address (additional section or asked for), weights (0 counts
// as 1), the lowest priority as primaries and every other as backups,
// target "." and vanished targets skipped, and the shortest TTL.
func TestDiscoverSRV(t *testing.T) {
	srv := dnstest.Start(t)
	name := "_game._tcp.rooms.test"
	srv.SetSRV(name, 30,
		dnstest.SRV{Target: "gs2.rooms.test", Port: 7002, Priority: 10, Weight: 0},
		dnstest.SRV{Target: "GS1.rooms.test", Port: 7001, Priority: 10, Weight: 3},
		dnstest.SRV{Target: "spare.rooms.test", Port: 7009, Priority: 20, Weight: 1},
		dnstest.SRV{Target: "gone.rooms.test", Port: 7003, Priority: 10, Weight: 1},
		dnstest.SRV{Target: ".", Port: 7004, Priority: 10, Weight: 1},
	)
	srv.SetA("gs1.rooms.test", 7, "127.0.0.11", "127.0.0.10")
	srv.SetA("gs2.rooms.test", 30, "::1")
	srv.SetA("spare.rooms.test", 30, "127.0.0.20")
	want := []balancer.BackendConfig{
		{ID: "gs2.rooms.test:7002", Address: "[::1]:7002", Weight: 1},
		{ID: "gs1.rooms.test:7001", Address: "127.0.0.10:7001", Weight: 3},
		{ID: "spare.rooms.test:7009", Address: "127.0.0.20:7009", Weight: 1, Backup: true},
	}
	for _, additional := range []bool{true, false} {
		srv.SetAdditional(additional)
		before := len(srv.Queries())
		got, ttl, err := source(t, "srv:"+name, resolver(t, srv.Addr)).Discover(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("additional %v: got %+v\nwant %+v", additional, got, want)
		}
		if ttl != 7*time.Second {
			t.Errorf("additional %v: ttl %v, want the shortest, 7s", additional, ttl)
		}
		asked := len(srv.Queries()) - before
		// With it: SRV, and A of gone.rooms.test (NXDOMAIN: no AAAA).
		// Without: also A of gs1 and spare, A and AAAA of gs2 (no A).
		if wantAsked := map[bool]int{true: 2, false: 6}[additional]; asked != wantAsked {
			t.Errorf("additional %v: %d queries, want %d", additional, asked, wantAsked)
		}
	}
}

// TestDiscoverA: every A and AAAA address of the name, on the port.
func TestDiscoverA(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetA("gs.test", 12, "127.0.0.2", "::1", "127.0.0.1")
	got, ttl, err := source(t, "a:gs.test:7000", resolver(t, srv.Addr)).Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []balancer.BackendConfig{{Address: "127.0.0.1:7000"}, {Address: "127.0.0.2:7000"}, {Address: "[::1]:7000"}}
	if !slices.Equal(got, want) || ttl != 12*time.Second {
		t.Errorf("got %+v, ttl %v", got, ttl)
	}
}

// TestDiscoverFailures: a name that does not exist or has no record is an
// empty answer (nil error: the pool keeps its set); SERVFAIL, REFUSED, no
// answer and no server are errors that name the server.
func TestDiscoverFailures(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetA("other.test", 5, "127.0.0.1") // exists, no SRV
	r := resolver(t, srv.Addr)
	ctx := context.Background()
	for _, spec := range []string{"srv:nothing.test", "srv:other.test", "a:nothing.test:1"} {
		got, _, err := source(t, spec, r).Discover(ctx)
		if err != nil || len(got) != 0 {
			t.Errorf("%s: %v, %v; want an empty answer", spec, got, err)
		}
	}
	for _, mode := range []dnstest.Mode{dnstest.ServFail, dnstest.Refuse, dnstest.Drop} {
		srv.SetMode(mode)
		if _, _, err := source(t, "a:other.test:1", r).Discover(ctx); err == nil || !strings.Contains(err.Error(), srv.Addr) {
			t.Errorf("mode %d: %v, want an error naming the server", mode, err)
		}
	}
	srv.SetMode(dnstest.Answer)
	srv.Stop()
	if _, _, err := source(t, "a:other.test:1", r).Discover(ctx); err == nil {
		t.Error("no server: no error")
	}
}

// TestDiscoverTCP: a truncated UDP answer is asked again over TCP.
func TestDiscoverTCP(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetSRV("_game._tcp.big.test", 5, dnstest.SRV{Target: "gs.big.test", Port: 7000, Weight: 1})
	srv.SetA("gs.big.test", 5, "127.0.0.1")
	srv.SetTruncate(true)
	got, _, err := source(t, "srv:_game._tcp.big.test", resolver(t, srv.Addr)).Discover(context.Background())
	if err != nil || len(got) != 1 {
		t.Fatalf("got %+v, %v", got, err)
	}
	var nets []string
	for _, q := range srv.Queries() {
		nets = append(nets, q.Net)
	}
	if !slices.Equal(nets, []string{"udp", "tcp"}) {
		t.Errorf("queries over %v, want udp then tcp", nets)
	}
}

// TestResolverFallback: servers are asked in order until one answers.
func TestResolverFallback(t *testing.T) {
	down, failing, good := dnstest.Start(t), dnstest.Start(t), dnstest.Start(t)
	down.Stop()
	failing.SetMode(dnstest.ServFail)
	good.SetA("gs.test", 5, "127.0.0.1")
	got, _, err := source(t, "a:gs.test:1", resolver(t, down.Addr, failing.Addr, good.Addr)).Discover(context.Background())
	if err != nil || len(got) != 1 {
		t.Fatalf("got %+v, %v", got, err)
	}
	if len(failing.Queries()) == 0 {
		t.Error("the second server was not asked")
	}
	_, _, err = source(t, "a:gs.test:1", resolver(t, down.Addr, failing.Addr)).Discover(context.Background())
	if err == nil || !strings.Contains(err.Error(), down.Addr) || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("all failing: %v, want each server's error", err)
	}
	if errors.Unwrap(err) == nil {
		t.Error("the error does not wrap the causes")
	}
}
