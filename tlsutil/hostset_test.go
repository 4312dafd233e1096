package tlsutil

import (
	"maps"
	"testing"
)

func TestHostSet(t *testing.T) {
	var s HostSet[string]
	for raw, v := range map[string]string{"game.example.com": "exact", "*.example.com": "wild", "*.b.example.com": "deeper"} {
		p, err := ParseHostPattern(raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, added := s.Add(p, v); !added {
			t.Fatalf("%s not added", raw)
		}
	}
	p, _ := ParseHostPattern("Game.Example.COM")
	if prev, added := s.Add(p, "again"); added || prev != "exact" {
		t.Fatalf("duplicate: added %v, prev %q", added, prev)
	}
	for name, want := range map[string]string{
		"game.example.com":   "exact",
		"a.example.com":      "wild",
		"a.b.example.com":    "deeper",
		"b.example.com":      "wild",
		"example.com":        "",
		"x.a.example.com":    "", // one label only
		"":                   "",
		"com":                "",
		"other.example.org":  "",
		"game.example.com.x": "",
	} {
		got, ok := s.Lookup(name)
		if ok != (want != "") || got != want {
			t.Errorf("Lookup(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
	if s.Len() != 3 {
		t.Fatalf("Len = %d", s.Len())
	}
	all := map[string]string{}
	for p, v := range s.All() {
		all[p.String()] = v
	}
	want := map[string]string{"game.example.com": "exact", "*.example.com": "wild", "*.b.example.com": "deeper"}
	if !maps.Equal(all, want) {
		t.Fatalf("All = %v", all)
	}
	var empty HostSet[int]
	if _, ok := empty.Lookup("a.b"); ok || empty.Len() != 0 {
		t.Fatal("zero set not empty")
	}
}

func TestParseHostPattern(t *testing.T) {
	for _, bad := range []string{"", "*", "*.", "a.*.com", "**.a.com", "*a.com", "1.2.3.4", "a..b", "[::1]", "ex ample.com"} {
		if p, err := ParseHostPattern(bad); err == nil {
			t.Errorf("ParseHostPattern(%q) = %+v, want an error", bad, p)
		}
	}
	p, err := ParseHostPattern("*.EXAMPLE.com")
	if err != nil || p != (HostPattern{Name: "example.com", Wildcard: true}) || p.String() != "*.example.com" {
		t.Fatalf("got %+v, %v", p, err)
	}
}
