package balancer

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseProxyProtocol(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    ProxyProtocol
		wantErr bool
	}{
		{name: "empty is none", in: "", want: ProxyNone},
		{name: "v1", in: "v1", want: ProxyV1},
		{name: "v2", in: "v2", want: ProxyV2},
		{name: "upper case rejected", in: "V2", wantErr: true},
		{name: "none spelled out rejected", in: "none", wantErr: true},
		{name: "v3", in: "v3", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseProxyProtocol(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrProxyProtocol) {
					t.Fatalf("err = %v, want ErrProxyProtocol", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestNewPool(t *testing.T) {
	if _, err := NewPool(PoolConfig{Name: "empty"}); err == nil {
		t.Error("empty pool accepted")
	}
	if _, err := NewPool(PoolConfig{Name: "x", Backends: backendsOf("")}); err == nil {
		t.Error("empty address accepted")
	}
	if _, err := NewPool(PoolConfig{Name: "x", Backends: backendsOf("a:1"), ProxyProtocol: 7}); !errors.Is(err, ErrProxyProtocol) {
		t.Errorf("bad proxy protocol: err = %v", err)
	}

	p := mustPool(t, PoolConfig{Name: "rooms", Backends: backendsOf("a:1", "b:2")})
	if p.Name() != "rooms" {
		t.Errorf("Name() = %q", p.Name())
	}
	if p.connectTimeout != DefaultConnectTimeout || p.connectBudget != DefaultConnectBudget {
		t.Errorf("defaults: timeout %v budget %v", p.connectTimeout, p.connectBudget)
	}
	// MaxAttempts defaults to 3 but is capped at the number of backends.
	if p.set.Load().maxAttempts != 2 {
		t.Errorf("maxAttempts = %d, want 2 (capped)", p.set.Load().maxAttempts)
	}
	bs := p.Backends()
	if len(bs) != 2 || bs[0].Addr() != "a:1" || bs[1].Addr() != "b:2" {
		t.Fatalf("Backends() = %v", bs)
	}
	bs[0] = nil // a copy: the pool is unaffected
	if p.Backends()[0] == nil {
		t.Error("Backends() returned the pool's own slice")
	}
}

// TestRoundRobin pins an even spread: 30 dials over 3 backends hit each
// exactly 10 times, counted both by the pool and by the backends.
func TestRoundRobin(t *testing.T) {
	tbs := []*testBackend{
		startBackend(t, "tcp", "127.0.0.1:0", false),
		startBackend(t, "tcp", "127.0.0.1:0", false),
		startBackend(t, "tcp", "127.0.0.1:0", false),
	}
	p := mustPool(t, PoolConfig{Name: "rr", Backends: backendsOf(tbs[0].addr(), tbs[1].addr(), tbs[2].addr())})

	leased := map[string]int{}
	for i := range 30 {
		l, err := p.Dial(context.Background(), DialRequest{Prefix: []byte{byte(i)}})
		if err != nil {
			t.Fatal(err)
		}
		if want := tbs[i%3].addr(); l.Backend.Addr() != want {
			t.Errorf("dial %d went to %s, want %s", i, l.Backend.Addr(), want)
		}
		leased[l.Backend.Addr()]++
		finish(t, l)
	}
	for i, tb := range tbs {
		if leased[tb.addr()] != 10 {
			t.Errorf("backend %d leased %d times, want 10", i, leased[tb.addr()])
		}
		for range 10 {
			if r := tb.next(t); r.err != nil || len(r.data) != 1 {
				t.Errorf("backend %d: %v, %d bytes", i, r.err, len(r.data))
			}
		}
		b := p.Backends()[i]
		if b.Dials() != 10 || b.Failures() != 0 || b.Active() != 10 {
			t.Errorf("backend %d: dials %d failures %d active %d", i, b.Dials(), b.Failures(), b.Active())
		}
	}
}

// TestPickerDistinct pins that the retries of one Dial each get a backend
// not tried before, for every algorithm, and -1 once all were tried.
func TestPickerDistinct(t *testing.T) {
	for _, algo := range algorithms {
		p := benchPool(t, algo, 5)
		for k := range 7 {
			req := DialRequest{HashKey: strconv.Itoa(k), HasHashKey: k%2 == 0}
			v, _ := p.view()
			var st pickState
			st.reset()
			for range len(p.backends()) {
				i := p.pick(p.set.Load(), &v, &st, &req)
				if i < 0 || st.has(i) {
					t.Fatalf("%v: pick %d after %v", algo, i, st.tried())
				}
				st.add(i)
			}
			if i := p.pick(p.set.Load(), &v, &st, &req); i != -1 {
				t.Errorf("%v: pick with all tried = %d, want -1", algo, i)
			}
		}
	}
}

func TestLeaseRelease(t *testing.T) {
	tb := startBackend(t, "tcp", "127.0.0.1:0", false)
	p := mustPool(t, PoolConfig{Name: "l", Backends: backendsOf(tb.addr())})
	b := p.Backends()[0]

	var leases []*Lease
	for range 3 {
		l, err := p.Dial(context.Background(), DialRequest{})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Conn.Close()
		leases = append(leases, l)
	}
	if b.Active() != 3 {
		t.Fatalf("Active() = %d, want 3", b.Active())
	}
	leases[0].Release()
	leases[0].Release() // idempotent
	if b.Active() != 2 {
		t.Fatalf("Active() after double Release = %d, want 2", b.Active())
	}
	// Release does not close the connection.
	if _, err := leases[0].Conn.Write([]byte("x")); err != nil {
		t.Errorf("conn closed by Release: %v", err)
	}
	leases[1].Release()
	leases[2].Release()
	if b.Active() != 0 {
		t.Fatalf("Active() = %d, want 0", b.Active())
	}
	var nilLease *Lease
	nilLease.Release() // no panic
}

func TestDialErrorMessage(t *testing.T) {
	a, b := closedAddr(t), closedAddr(t)
	p := mustPool(t, PoolConfig{Name: "down", Backends: backendsOf(a, b)})
	_, err := p.Dial(context.Background(), DialRequest{})
	msg := err.Error()
	for _, want := range []string{`balancer: pool "down"`, "2 connect attempts failed", a, b} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
}

func TestDialCanceledContext(t *testing.T) {
	tb := startBackend(t, "tcp", "127.0.0.1:0", false)
	p := mustPool(t, PoolConfig{Name: "c", Backends: backendsOf(tb.addr())})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.Dial(ctx, DialRequest{})
	var de *DialError
	if !errors.As(err, &de) || !errors.Is(err, context.Canceled) || len(de.Attempts) != 0 {
		t.Fatalf("err = %v, want DialError with Stop=Canceled and no attempts", err)
	}
	if b := p.Backends()[0]; b.Dials() != 0 {
		t.Errorf("dialed %d times with a canceled context", b.Dials())
	}
}

func TestProbe(t *testing.T) {
	tb := startBackend(t, "tcp", "127.0.0.1:0", false)
	p := mustPool(t, PoolConfig{Name: "p", Backends: backendsOf(tb.addr(), closedAddr(t))})
	up, down := p.Backends()[0], p.Backends()[1]
	if err := up.Probe(context.Background(), time.Second); err != nil {
		t.Errorf("probe of a listening backend: %v", err)
	}
	if r := tb.next(t); len(r.data) != 0 {
		t.Errorf("probe sent %q, want nothing", r.data)
	}
	err := down.Probe(context.Background(), time.Second)
	if err == nil || !strings.Contains(err.Error(), down.Addr()) {
		t.Errorf("probe of a closed port: %v", err)
	}
	if up.Dials()+down.Dials()+down.Failures() != 0 {
		t.Error("Probe touched the dial counters")
	}
}

// TestDialHostname pins that addresses are resolved at dial time.
func TestDialHostname(t *testing.T) {
	tb := startBackend(t, "tcp", "127.0.0.1:0", false)
	_, port, _ := strings.Cut(tb.addr(), ":")
	p := mustPool(t, PoolConfig{Name: "h", Backends: backendsOf("localhost:" + port)})
	l, err := p.Dial(context.Background(), DialRequest{Prefix: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	finish(t, l)
	if r := tb.next(t); string(r.data) != "hi" {
		t.Errorf("got %q", r.data)
	}
}
