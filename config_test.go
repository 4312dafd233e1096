package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const validConfig = `
drain_timeout = "30s"
[listeners.public]
address = "127.0.0.1:0"
default_route = "d"
[routes.d]
listener = "public"
sni = ["game.example.com", "*.game.example.com"]
pool = "p"
[pools.p]
backends = [{ address = "127.0.0.1:9001" }]
`

func TestConfigValid(t *testing.T) {
	c, err := DecodeConfig([]byte(validConfig))
	must(t, err)
	rt, err := c.Validate()
	must(t, err)
	defer rt.Close()
	tab := &rt.Listeners["public"].table
	for sni, want := range map[string]string{
		"game.example.com":     "d",
		"x.game.example.com":   "d",
		"a.b.game.example.com": "d", // no wildcard match (one label only): the default route
		"":                     "d",
	} {
		if r := tab.lookup(sni); r == nil || r.name != want {
			t.Errorf("lookup(%q) = %v", sni, r)
		}
	}
	if rt.DrainTimeout.String() != "30s" {
		t.Errorf("drain_timeout = %v", rt.DrainTimeout)
	}
}

func TestRouteLookupPrecedence(t *testing.T) {
	c, err := DecodeConfig([]byte(`
[listeners.l]
address = "127.0.0.1:0"
[routes.exact]
listener = "l"
sni = ["a.example.com"]
pool = "p"
[routes.wild]
listener = "l"
sni = ["*.example.com"]
pool = "p"
[pools.p]
backends = [{ address = "127.0.0.1:9001" }]
`))
	must(t, err)
	rt, err := c.Validate()
	must(t, err)
	tab := &rt.Listeners["l"].table
	for sni, want := range map[string]string{
		"a.example.com":   "exact",
		"b.example.com":   "wild",
		"example.com":     "",
		"x.a.example.com": "",
		"":                "",
	} {
		r := tab.lookup(sni)
		got := ""
		if r != nil {
			got = r.name
		}
		if got != want {
			t.Errorf("lookup(%q) = %q, want %q", sni, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { tab.lookup("b.example.com") }); n != 0 {
		t.Errorf("lookup allocates %v times", n)
	}
}

// Every semantic problem is reported at once, each with its key path.
func TestConfigReportsAllProblems(t *testing.T) {
	c, err := DecodeConfig([]byte(`
drain_timeout = "-1s"
[log]
level = "loud"
[listeners.a]
address = "127.0.0.1:8443"
hello_timeout = "soon"
default_route = "ghost"
max_hello_bytes = 100000
[listeners.b]
address = "127.0.0.1:8443"
[routes.one]
listener = "a"
sni = ["game.example.com", "*.*.example.com", "127.0.0.1", "bad_name!.com"]
pool = "nope"
idle_timeout = "0s"
[routes.two]
listener = "a"
sni = ["GAME.example.com"]
mode = "l5"
pool = "empty"
[routes.three]
listener = "missing"
pool = "bad"
[pools.empty]
backends = []
[pools.bad]
connect_timeout = "3"
proxy_protocol = "v3"
balance = "fastest"
backends = [{ address = "nohost" }, { address = "127.0.0.1:0" }]
`))
	must(t, err)
	_, err = c.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`drain_timeout: duration must be positive`,
		`log.level: must be one of`,
		`listeners.a.hello_timeout: invalid duration "soon"`,
		`listeners.a.default_route: unknown route "ghost"`,
		`listeners.a.max_hello_bytes: must be between`,
		`listeners.b.address: address "127.0.0.1:8443" is also used by listeners.a`,
		`routes.one.sni[1]: "*.*.example.com": a wildcard may only be a single leading label`,
		`routes.one.sni[2]: "127.0.0.1" is not a valid host name`,
		`routes.one.sni[3]: "bad_name!.com" is not a valid host name`,
		`routes.one.pool: unknown pool "nope"`,
		`routes.one.idle_timeout: duration must be positive`,
		`routes.two.sni[0]: "GAME.example.com" is already routed by routes.one`,
		`routes.two.mode: must be "l4" or "l7"`,
		`pools.empty.backends: pool has no backends`,
		`routes.three.listener: unknown listener "missing"`,
		`pools.bad.connect_timeout: invalid duration "3"`,
		`pools.bad.proxy_protocol: must be`,
		`pools.bad.balance: must be round_robin, least_conn, random_two or hash; got "fastest"`,
		`pools.bad.backends[0].address: invalid address "nohost"`,
		`pools.bad.backends[1].address: invalid port`,
		`routes.three.sni: route has no sni and is not the default_route or plain_route`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing problem %q in:\n%s", want, msg)
		}
	}
}

func TestConfigStrictDecode(t *testing.T) {
	_, err := DecodeConfig([]byte(validConfig + "\n[pools.q]\nconect_timeout = \"1s\"\n"))
	if err == nil || !strings.Contains(err.Error(), "pools.q.conect_timeout: unknown key") {
		t.Fatalf("unknown key: %v", err)
	}
	_, err = DecodeConfig([]byte("[listeners.a]\naddress = \n"))
	if err == nil || !strings.HasPrefix(err.Error(), "2:") {
		t.Fatalf("syntax error without line:col: %v", err)
	}
}

// The command line: -check, -version, and a bad config exits 1 with one
// readable line per problem and no panic (RELIABILITY G11).
func TestRunFlags(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	must(t, os.WriteFile(good, []byte(validConfig), 0o644))
	must(t, os.WriteFile(bad, []byte("[listeners.a]\naddress = \"x\"\nbogus = 1\n"), 0o644))

	var out, errOut bytes.Buffer
	if rc := run([]string{"-version"}, &out, &errOut); rc != 0 || !strings.HasPrefix(out.String(), "sluice ") {
		t.Fatalf("-version: rc %d, %q", rc, out.String())
	}
	out.Reset()
	if rc := run([]string{"-check", "-config", good}, &out, &errOut); rc != 0 {
		t.Fatalf("-check good: rc %d, %s", rc, errOut.String())
	}
	for _, args := range [][]string{{"-check", "-config", bad}, {"-config", bad}} {
		errOut.Reset()
		if rc := run(args, &out, &errOut); rc != 1 {
			t.Fatalf("%v: rc %d, want 1", args, rc)
		}
		s := errOut.String()
		for _, want := range []string{
			bad + ": listeners.a.bogus: unknown key",
		} {
			if !strings.Contains(s, want) {
				t.Fatalf("%v: output lacks %q:\n%s", args, want, s)
			}
		}
		if strings.Contains(s, "goroutine") || strings.Contains(s, "panic") {
			t.Fatalf("stack trace printed:\n%s", s)
		}
	}
	errOut.Reset()
	must(t, os.WriteFile(bad, []byte("[listeners.a]\naddress = \"x\"\n"), 0o644))
	run([]string{"-check", "-config", bad}, &out, &errOut)
	if !strings.Contains(errOut.String(), bad+": listeners.a.address: invalid address") {
		t.Fatalf("semantic error output:\n%s", errOut.String())
	}
	errOut.Reset()
	if rc := run([]string{"-config", filepath.Join(dir, "missing.toml")}, &out, &errOut); rc != 1 {
		t.Fatalf("missing file: rc %d", rc)
	}
}

// The shipped config.toml is valid.
func TestShippedConfigValid(t *testing.T) {
	_, rt, err := LoadConfig("config.toml")
	if err != nil {
		t.Fatal(err)
	}
	rt.Close()
}

func BenchmarkRouteLookup(b *testing.B) {
	c, err := DecodeConfig([]byte(`
[listeners.l]
address = "127.0.0.1:0"
default_route = "d"
[routes.exact]
listener = "l"
sni = ["a.example.com", "b.example.com", "c.example.com"]
pool = "p"
[routes.wild]
listener = "l"
sni = ["*.game.example.com"]
pool = "p"
[routes.d]
listener = "l"
pool = "p"
[pools.p]
backends = [{ address = "127.0.0.1:9001" }]
`))
	if err != nil {
		b.Fatal(err)
	}
	rt, err := c.Validate()
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	tab := &rt.Listeners["l"].table
	for _, name := range []string{"b.example.com", "room7.game.example.com", "unknown.test"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if tab.lookup(name) == nil {
					b.Fatal("no route")
				}
			}
		})
	}
}
