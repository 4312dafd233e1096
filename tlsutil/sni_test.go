package tlsutil

import (
	"regexp"
	"strings"
	"testing"
)

// TestNormalizeSNI pins the normalization rules (RELIABILITY T7).
func TestNormalizeSNI(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	name253 := label63 + "." + label63 + "." + label63 + "." + strings.Repeat("b", 61)
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"example.com", "example.com", true},
		{"GAME.Example.COM", "game.example.com", true},
		{"localhost", "localhost", true},
		{"xn--jeu--epa.example", "xn--jeu--epa.example", true},
		{"_dmarc.example.com", "_dmarc.example.com", true},
		{"a_b.example", "a_b.example", true},
		{"a-b.example", "a-b.example", true},
		{"1.example.com", "1.example.com", true},
		{"example.1a", "example.1a", true},
		{"example.0xg", "example.0xg", true},
		{label63 + ".example", label63 + ".example", true},
		{name253, name253, true},
		{"", "", false},
		{"example.com.", "", false},
		{".example.com", "", false},
		{"a..b", "", false},
		{".", "", false},
		{"-a.example", "", false},
		{"a-.example", "", false},
		{"example-", "", false},
		{strings.Repeat("a", 64) + ".example", "", false},
		{name253 + "b", "", false},
		{"jeu-\xc3\xa9.example", "", false},
		{"\xff.example", "", false},
		{"a\x00.example", "", false},
		{"a/b", "", false},
		{"a b", "", false},
		{"a:443", "", false},
		{"127.0.0.1", "", false},
		{"1.2.3", "", false},
		{"10", "", false},
		{"0x7f.1", "", false},
		{"foo.0x7F", "", false},
		{"foo.0x", "", false},
		{"::1", "", false},
		{"[::1]", "", false},
		{"fe80::1%eth0", "", false},
		{"*.example.com", "", false},
	}
	for _, c := range cases {
		got, ok := NormalizeSNI(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("NormalizeSNI(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = NormalizeSNI("game.example.com") }); n != 0 {
		t.Errorf("lower-case name: %v allocs", n)
	}
}

func TestEscapeForLog(t *testing.T) {
	cases := []struct {
		in   string
		max  int
		want string
	}{
		{"example.com", 256, "example.com"},
		{"a\nb", 256, `a\nb`},
		{"\x1b[31mred", 256, `\x1b[31mred`},
		{"a\\b", 256, `a\\b`},
		{"jeu-\xc3\xa9", 256, `jeu-\xc3\xa9`},
		{"\x00\t\r\x7f", 256, `\x00\t\r\x7f`},
		{strings.Repeat("a", 300), 255, strings.Repeat("a", 255)},
		{"abc\x01", 5, "abc"}, // never cuts inside an escape
		{"abc\x01", 7, `abc\x01`},
		{"abc", 0, "abc"},
	}
	for _, c := range cases {
		if got := EscapeForLog(c.in, c.max); got != c.want {
			t.Errorf("EscapeForLog(%q, %d) = %q, want %q", c.in, c.max, got, c.want)
		}
	}
}

var sniPattern = regexp.MustCompile(`^[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$`)

// FuzzNormalizeSNI: no panic; idempotent; output empty or a lower-case
// dotted name of at most 253 bytes. EscapeForLog output is printable ASCII
// within its cap.
func FuzzNormalizeSNI(f *testing.F) {
	for _, s := range []string{"example.com", "GAME.Example.COM", "example.com.", "127.0.0.1", "[::1]", "jeu-\xc3\xa9.example",
		"xn--jeu--epa.example", "_acme.example", "a..b", "-a", strings.Repeat("a", 64), "\x1b[31m\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := NormalizeSNI(s)
		if !ok {
			if got != "" {
				t.Fatalf("invalid but returned %q", got)
			}
		} else {
			if len(got) > 253 || !sniPattern.MatchString(got) {
				t.Fatalf("NormalizeSNI(%q) = %q", s, got)
			}
			if !strings.EqualFold(got, s) {
				t.Fatalf("NormalizeSNI(%q) = %q changes more than case", s, got)
			}
			if again, ok2 := NormalizeSNI(got); again != got || !ok2 {
				t.Fatalf("not idempotent: %q -> %q -> %q, %v", s, got, again, ok2)
			}
		}
		e := EscapeForLog(s, 255)
		if len(e) > 255 {
			t.Fatalf("EscapeForLog: %d bytes", len(e))
		}
		for i := 0; i < len(e); i++ {
			if e[i] < 0x20 || e[i] > 0x7e {
				t.Fatalf("EscapeForLog(%q) = %q", s, e)
			}
		}
	})
}
