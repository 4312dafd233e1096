package balancer

import (
	"strings"
	"testing"
)

// A sticky cookie value is opaque and stable: the same for the same pool
// name and address in any process (so N instances and reloads agree),
// different across pools and backends, and it names no address.
func TestStickyValueStable(t *testing.T) {
	mk := func(name string) *Pool {
		p, err := NewPool(PoolConfig{Name: name, StickyCookie: "S", Backends: []BackendConfig{{Address: "10.0.0.1:7000"}, {Address: "10.0.0.2:7000"}}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b, other := mk("rooms"), mk("rooms"), mk("lobby")
	for i := range a.backends() {
		v := a.backends()[i].Cookie()
		if len(v) != 16 || strings.Contains(v, "10.0.0") {
			t.Fatalf("cookie %q", v)
		}
		if v != b.backends()[i].Cookie() {
			t.Fatal("the same config gave another cookie value")
		}
		if v == other.backends()[i].Cookie() {
			t.Fatal("two pools share a cookie value")
		}
	}
	if a.backends()[0].Cookie() == a.backends()[1].Cookie() {
		t.Fatal("two backends share a cookie value")
	}
	// The pick follows a known value and ignores an unknown one.
	req := DialRequest{Sticky: a.backends()[1].Cookie()}
	for range 5 {
		if i := a.pickOnce(&req); i != 1 {
			t.Fatalf("sticky pick %d, want 1", i)
		}
	}
	req.Sticky = "0123456789abcdef"
	seen := map[int]bool{}
	for range 4 {
		seen[a.pickOnce(&req)] = true
	}
	if len(seen) != 2 {
		t.Fatalf("an unknown cookie was not balanced: %v", seen)
	}
}

// A backend's id names it in SetState, Status and its cookie: a backend
// that keeps its id keeps its cookie when its address changes.
func TestBackendID(t *testing.T) {
	mk := func(addr string) *Pool {
		p, err := NewPool(PoolConfig{Name: "rooms", Backends: []BackendConfig{{ID: "gs-1", Address: addr}, {Address: "10.0.0.9:7000"}}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := mk("10.0.0.1:7000"), mk("10.0.0.2:7000")
	if a.backends()[0].Cookie() != b.backends()[0].Cookie() {
		t.Fatal("the same id gave another cookie after an address change")
	}
	if a.backends()[1].ID() != "10.0.0.9:7000" {
		t.Fatalf("default id %q, want the address", a.backends()[1].ID())
	}
	if err := a.SetState("gs-1", Drain); err != nil {
		t.Fatal(err)
	}
	if err := a.SetState("10.0.0.9:7000", Maint); err != nil {
		t.Fatal(err)
	}
	st := a.Status()
	if st[0].ID != "gs-1" || st[0].AdminState != Drain || st[1].AdminState != Maint {
		t.Fatalf("status %+v", st)
	}
	if err := a.SetState("gs-2", Drain); err == nil {
		t.Fatal("an unknown id was accepted")
	}
}
