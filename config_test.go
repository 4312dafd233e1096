package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"go.uber.org/goleak"
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
accept_proxy = true
[listeners.c]
address = "127.0.0.1:8444"
trusted_cidrs = ["10.0.0.0/33"]
max_connections_per_ip = -1
new_connections_per_ip = { rate = 5 }
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
sticky_cookie = "bad cookie;"
backends = [{ address = "nohost" }, { address = "127.0.0.1:0" }, { id = "bad id/x", address = "127.0.0.1:1" }, { id = "127.0.0.1:1", address = "127.0.0.1:2" }]
[resolver]
servers = ["127.0.0.1:53", "dns.example:53"]
[tuning]
relay = "threads"
[pools.dns]
discover = "mx:rooms.test"
resolve_interval = "500ms"
[pools.dnsport]
discover = "a:gs.test"
[pools.static]
resolve_interval = "10s"
backends = [{ address = "127.0.0.1:9001" }]
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
		`listeners.b.trusted_cidrs: required with accept_proxy`,
		`listeners.c.trusted_cidrs[0]: "10.0.0.0/33" is not a CIDR prefix`,
		`listeners.c.trusted_cidrs: only used with accept_proxy = true`,
		`listeners.c.max_connections_per_ip: must be >= 0`,
		`listeners.c.new_connections_per_ip.burst: must be >= 1 with a rate`,
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
		`pools.bad.sticky_cookie: "bad cookie;" is not a valid cookie name`,
		`pools.bad.backends[0].address: invalid address "nohost"`,
		`pools.bad.backends[1].address: invalid port`,
		`pools.bad.backends[2].id: "bad id/x": use 1 to 64 letters`,
		`pools.bad.backends[3].id: id "127.0.0.1:1" is also backends[2]'s id or address`,
		`resolver.servers[1]: want an IP address and port`,
		`tuning.relay: must be goroutine or epoll; got "threads"`,
		`pools.dns.resolve_interval: must be at least 1s, got "500ms"`,
		`pools.dns.discover: "mx:rooms.test": want srv:NAME or a:NAME:PORT`,
		`pools.dnsport.discover: "a:gs.test": want a:NAME:PORT`,
		`pools.static.resolve_interval: only used with discover`,
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

// everythingConfig sets every key the config accepts (TestEverythingConfig
// holds it to that): TestCompileStartsNothing compiles every feature. Its
// files are relative to the config's directory.
const everythingConfig = `
drain_timeout = "30s"
max_connections = 1000
watch = true

[log]
level = "debug"
format = "console"

[admin]
listen = "0.0.0.0:0"
token = "secret"

[resolver]
servers = ["127.0.0.1:53", "[::1]:53"]

[tuning]
relay = "epoll"

[listeners.public]
address = "127.0.0.1:0"
tls = true
default_route = "game"
plain_route = "native"
hello_timeout = "2s"
max_hello_bytes = 4096
cert = "game.test.pem"
key = "game.test-key.pem"
tls_handshake_timeout = "3s"
header_timeout = "4s"
body_timeout = "5s"
accept_proxy = true
trusted_cidrs = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]
max_connections_per_ip = 64
new_connections_per_ip = { rate = 20, burst = 40 }
request_buffer_bytes = 65536
max_body_bytes = 1048576

[listeners.dev]
address = "127.0.0.1:0"
tls = false
default_route = "dev"
redirect_https = true
redirect_https_port = 8443

[listeners.ip]
address = "127.0.0.2:0"
plain_route = "plain"

[routes.game]
listener = "public"
sni = ["game.test", "*.game.test"]
mode = "l7"
pool = "ws"
cert = "game.test.pem"
key = "game.test-key.pem"
idle_timeout = "1m"
half_close_timeout = "2s"
write_stall_timeout = "3s"
http2 = true
locations = [
  { path = "/ws", pool = "ws", gzip = true },
  { path = "/static/", root = "web", headers = { "Cache-Control" = "max-age=3600" }, fallback = "index.html" },
  { path = "/old", redirect = "https://game.test/new" },
]

[routes.selfsigned]
listener = "public"
sni = ["self.test"]
mode = "l7"
pool = "ws"

[routes.echo]
listener = "public"
sni = ["echo.test", "*.echo.test"]
mode = "l4"
pool = "tls"

[routes.native]
listener = "public"
mode = "l4"
pool = "tcp"

[routes.dev]
listener = "dev"
mode = "l7"
pool = "ws"

[routes.plain]
listener = "ip"
mode = "l7"
pool = "ws"

[routes.ipgame]
listener = "ip"
sni = ["ip.test"]
mode = "l7"
locations = [{ path = "/", root = "web" }]

[pools.ws]
balance = "hash"
hash_key = "query:room"
hash_balance_factor = 1.5
proxy_protocol = "v1"
connect_timeout = "1s"
max_fails = 2
fail_timeout = "5s"
slow_start = "10s"
on_all_unhealthy = "try_all"
close_on_down = true
sticky_cookie = "SLUICE"
second_chance_status = 404
second_chance_window = "1h"
health = { check = "http", interval = "2s", timeout = "1s", rise = 2, fall = 3, path = "/healthz", host = "h.test", sni = "s.test", tls = true, status = "200-299" }
backends = [
  { id = "gs-1", address = "127.0.0.1:9301", weight = 2, max_connections = 100 },
  { address = "127.0.0.1:9302", backup = true },
]

[pools.tls]
balance = "least_conn"
health = { check = "tls" }
backends = [{ address = "127.0.0.1:9101" }]

[pools.tcp]
balance = "random_two"
proxy_protocol = "v2"
health = { check = "websocket", path = "/ws" }
agent = { port = 7001, interval = "3s", timeout = "500ms" }
discover = "srv:_game._tcp.rooms.test"
resolve_interval = "10s"
backends = [{ address = "localhost:9201" }]
`

// everythingConfig sets every key of the Config type (a key added to the
// schema belongs there too, so that the pure phase is proven on it).
func TestEverythingConfig(t *testing.T) {
	var c Config
	if _, err := toml.Decode(everythingConfig, &c); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	setKeys(reflect.ValueOf(c), "", set)
	for _, key := range configKeys(reflect.TypeOf(c), "") {
		if !set[key] {
			t.Errorf("everythingConfig does not set %s", key)
		}
	}
}

// setKeys marks in set the key path ("pools.health.check", without table
// names or indexes) of every non-zero field under v.
func setKeys(v reflect.Value, path string, set map[string]bool) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			setKeys(v.Elem(), path, set)
		}
	case reflect.Map:
		for it := v.MapRange(); it.Next(); {
			setKeys(it.Value(), path, set)
		}
	case reflect.Slice:
		for i := range v.Len() {
			setKeys(v.Index(i), path, set)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if key := tomlKey(v.Type().Field(i)); key != "" {
				set[path+key] = set[path+key] || !v.Field(i).IsZero()
				setKeys(v.Field(i), path+key+".", set)
			}
		}
	}
}

// configKeys returns the key paths of every field under typ, as setKeys
// spells them.
func configKeys(typ reflect.Type, path string) []string {
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Map || typ.Kind() == reflect.Slice {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct {
		return nil
	}
	var keys []string
	for i := range typ.NumField() {
		if key := tomlKey(typ.Field(i)); key != "" {
			keys = append(keys, path+key)
			keys = append(keys, configKeys(typ.Field(i).Type, path+key+".")...)
		}
	}
	return keys
}

func tomlKey(f reflect.StructField) string {
	key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if key == "-" {
		return ""
	}
	return key
}

// The pure phase starts nothing (issue 9): compiling the shipped
// config.toml, everythingConfig and an invalid config, and -check, leave no
// goroutine behind; it binds nothing and builds no pool or server either, which would
// start some. Build on the same Compiled does start goroutines (the l7
// routes' HTTP servers), and the same check sees them.
func TestCompileStartsNothing(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "game.test")
	must(t, os.Mkdir(filepath.Join(dir, "web"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "web", "index.html"), []byte("<h1>game</h1>"), 0o644))
	path := filepath.Join(dir, "everything.toml")
	must(t, os.WriteFile(path, []byte(everythingConfig), 0o644))
	bad, err := DecodeConfig([]byte(strings.ReplaceAll(everythingConfig, `"127.0.0.1:9302"`, `"127.0.0.1:0"`)))
	must(t, err)
	before := goleak.IgnoreCurrent()

	if _, _, err := CompileFile("config.toml"); err != nil {
		t.Fatal(err)
	}
	_, everything, err := CompileFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Compile(); err == nil {
		t.Fatal("invalid config compiled")
	}
	var out bytes.Buffer
	if rc := run([]string{"-check", "-config", path}, &out, &out); rc != 0 {
		t.Fatalf("-check: rc %d: %s", rc, out.String())
	}
	goleak.VerifyNone(t, before)

	rt, err := everything.Build()
	must(t, err)
	if goleak.Find(before) == nil {
		t.Error("Build started no goroutine: the check above cannot see one")
	}
	rt.Close()
	goleak.VerifyNone(t, before)
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

// The location keys of issue 10 part 4 (headers, gzip, fallback) and
// redirect_https_port: defaults, and every problem with its key path.
func TestLocationHTTPKeys(t *testing.T) {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "web", "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "web", "index.html"), []byte("<h1>game</h1>"), 0o644))
	const head = `
[listeners.a]
address = "127.0.0.1:0"
tls = false
default_route = "r"
[pools.p]
backends = [{ address = "127.0.0.1:9001" }]
[routes.r]
listener = "a"
mode = "l7"
`
	compile := func(body string) (*Compiled, error) {
		path := filepath.Join(dir, "c.toml")
		must(t, os.WriteFile(path, []byte(head+body), 0o644))
		_, cc, err := CompileFile(path)
		return cc, err
	}
	cc, err := compile(`locations = [
  { path = "/static/", root = "web", fallback = "index.html", headers = { "cache-control" = "max-age=3600", X-Frame-Options = "DENY" } },
  { path = "/api/", pool = "p" },
  { path = "/raw/", root = "web", gzip = false },
  { path = "/zip/", pool = "p", gzip = true },
]`)
	must(t, err)
	got := map[string]locationSpec{}
	for _, l := range cc.routeSpecs["r"].locations {
		got[l.path] = l
	}
	if l := got["/static/"]; !l.gzip || l.fallback != "index.html" || l.headers["cache-control"] != "max-age=3600" || l.headers["X-Frame-Options"] != "DENY" {
		t.Errorf("/static/: %+v", l)
	}
	if got["/api/"].gzip || got["/raw/"].gzip || !got["/zip/"].gzip || got["/api/"].headers != nil {
		t.Errorf("gzip defaults: %+v", got)
	}
	if cc.listenerSpecs["a"].redirectPort != 0 {
		t.Errorf("redirect port %d", cc.listenerSpecs["a"].redirectPort)
	}

	_, err = compile(`locations = [
  { path = "/a/", root = "web", headers = { "Bad Name" = "x", Connection = "close", X-Evil = "a\r\nSet-Cookie: x=1", X-Empty = " ", Content-Length = "5" } },
  { path = "/b/", root = "web", headers = { "x-dup" = "1", "X-Dup" = "2" }, fallback = "missing.html" },
  { path = "/c/", pool = "p", fallback = "index.html" },
  { path = "/d/", redirect = "https://example.com/", gzip = true },
  { path = "/e/", root = "web", fallback = "../c.toml" },
  { path = "/f/", root = "web", fallback = "sub" },
  { path = "/g/", root = "web", fallback = ".env" },
]
[listeners.b]
address = "127.0.0.1:0"
tls = false
redirect_https_port = 8443
[listeners.c]
address = "127.0.0.1:0"
tls = false
redirect_https = true
redirect_https_port = 70000
`)
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`routes.r.locations[0].headers: header name "Bad Name" is not a token`,
		`routes.r.locations[0].headers: header "Connection" is hop-by-hop`,
		`routes.r.locations[0].headers: header "Content-Length" is hop-by-hop or frames the body`,
		`routes.r.locations[0].headers: header "X-Evil": value has a control character`,
		`routes.r.locations[0].headers: header "X-Empty": empty value`,
		`routes.r.locations[1].headers: "X-Dup" and "x-dup" are the same header`,
		`routes.r.locations[1].fallback: "` + filepath.Join(dir, "web", "missing.html") + `" is not a file`,
		`routes.r.locations[2].fallback: only for a root location`,
		`routes.r.locations[3].gzip: a redirect has no body to compress`,
		`routes.r.locations[4].fallback: "../c.toml" must be a file path under root`,
		`routes.r.locations[5].fallback: "` + filepath.Join(dir, "web", "sub") + `" is not a file`,
		`routes.r.locations[6].fallback: ".env" must be a file path under root`,
		`listeners.b.redirect_https_port: only used with redirect_https = true`,
		`listeners.c.redirect_https_port: must be between 1 and 65535, got 70000`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing problem %q in:\n%s", want, msg)
		}
	}
}

// http2 (issue 10 part 4): on by default for l7 routes (a cleartext one
// ignores it: no h2c), off with http2 = false; an l4 route or a cleartext
// listener's route cannot ask for it.
func TestRouteHTTP2Key(t *testing.T) {
	const head = `
[listeners.tls]
address = "127.0.0.1:0"
[listeners.clear]
address = "127.0.0.1:0"
tls = false
[pools.p]
backends = [{ address = "127.0.0.1:9001" }]
`
	compile := func(body string) (*Compiled, error) {
		c, err := DecodeConfig([]byte(head + body))
		if err != nil {
			return nil, err
		}
		return c.Compile()
	}
	cc, err := compile(`
[routes.on]
listener = "tls"
sni = ["on.example.com"]
mode = "l7"
pool = "p"
[routes.off]
listener = "tls"
sni = ["off.example.com"]
mode = "l7"
pool = "p"
http2 = false
[routes.passthrough]
listener = "tls"
sni = ["l4.example.com"]
pool = "p"
[routes.plain]
listener = "clear"
sni = ["plain.example.com"]
mode = "l7"
pool = "p"
`)
	must(t, err)
	for name, want := range map[string]bool{"on": true, "off": false, "passthrough": false, "plain": true} {
		if got := cc.routeSpecs[name].http2; got != want {
			t.Errorf("routes.%s: http2 %v, want %v", name, got, want)
		}
	}
	_, err = compile(`
[routes.l4]
listener = "tls"
sni = ["l4.example.com"]
pool = "p"
http2 = true
[routes.h2c]
listener = "clear"
sni = ["plain.example.com"]
mode = "l7"
pool = "p"
http2 = true
`)
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{
		`routes.l4.http2: only for mode = "l7"`,
		`routes.h2c.http2: listener "clear" is cleartext HTTP (tls = false): no h2c`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing problem %q in:\n%s", want, err)
		}
	}
}
