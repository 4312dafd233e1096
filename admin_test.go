package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"sluice/balancer"
	"sluice/balancer/discover/dnstest"
)

// adminLB is an in-process sluice with its admin server on a port of its own.
type adminLB struct {
	*lb
	m    *metrics
	adm  *admin
	base string // http://127.0.0.1:port
}

// startAdmin runs cfg like startLB, plus the admin server on 127.0.0.1:0.
// reload is what POST /api/v1/reload calls (nil: not available).
func startAdmin(t *testing.T, cfg string, reload func() error) *adminLB {
	t.Helper()
	l := startLB(t, cfg)
	m := l.metrics
	a := newAdmin(l.server, m, reload)
	addr, err := a.start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop) // before the LB's shutdown (cleanups run last first)
	return &adminLB{lb: l, m: m, adm: a, base: "http://" + addr.String()}
}

// adminClient keeps no idle connections: nothing outlives a test (goleak).
var adminClient = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

type answer struct {
	code int
	body string
	hdr  http.Header
}

func (a *adminLB) do(t *testing.T, method, path string, hdr ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, a.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, string(body), resp.Header}
}

func (a *adminLB) state(t *testing.T) stateJSON {
	t.Helper()
	ans := a.do(t, "GET", "/api/v1/state")
	if ans.code != http.StatusOK {
		t.Fatalf("GET /api/v1/state: %d %s", ans.code, ans.body)
	}
	var st stateJSON
	if err := json.Unmarshal([]byte(ans.body), &st); err != nil {
		t.Fatalf("state JSON: %v\n%s", err, ans.body)
	}
	return st
}

func findBackend(st stateJSON, pool, addr string) *backendJSON {
	for _, p := range st.Pools {
		if p.Name != pool {
			continue
		}
		for i := range p.Backends {
			if p.Backends[i].Address == addr {
				return &p.Backends[i]
			}
		}
	}
	return nil
}

// adminConfig: one TLS listener with an l4 passthrough route by SNI, an l7
// route with locations (the default route), a raw TCP plain route, and
// three pools; backends are real echo servers.
func adminConfig(t *testing.T, extra string) (cfg string, echo1, echo2 string) {
	echo1, echo2 = echoBackend(t).addr, echoBackend(t).addr
	web := t.TempDir()
	return fmt.Sprintf(`
%s
[listeners.public]
address = "127.0.0.1:0"
default_route = "game"
plain_route = "native"
[routes.game]
listener = "public"
sni = ["game.test"]
mode = "l7"
[[routes.game.locations]]
path = "/ws"
pool = "ws"
[[routes.game.locations]]
path = "/"
root = %q
[routes.echo]
listener = "public"
sni = ["echo.test", "*.echo.test"]
pool = "tls"
[routes.native]
listener = "public"
pool = "tcp"
[pools.ws]
balance = "hash"
hash_key = "query:room"
backends = [{ address = %q, max_connections = 100 }, { address = %q, weight = 2 }]
[pools.tls]
backends = [{ address = %q }]
[pools.tcp]
backends = [{ address = %q }, { address = %q, backup = true }]
`, extra, web, echo1, echo2, echo1, echo1, echo2), echo1, echo2
}

func TestAdminHealthAndReadiness(t *testing.T) {
	cfg, _, _ := adminConfig(t, "")
	a := startAdmin(t, cfg, nil)

	if ans := a.do(t, "GET", "/healthz"); ans.code != 200 || strings.TrimSpace(ans.body) != "ok" {
		t.Fatalf("/healthz: %d %q", ans.code, ans.body)
	}
	if ans := a.do(t, "GET", "/readyz"); ans.code != 200 {
		t.Fatalf("/readyz with the listeners bound: %d %q", ans.code, ans.body)
	}
	// A shutdown closes the listeners first: from then on, not ready, while
	// liveness and the admin server go on through the drain.
	a.closeListeners()
	if ans := a.do(t, "GET", "/readyz"); ans.code != http.StatusServiceUnavailable || !strings.Contains(ans.body, "public") {
		t.Fatalf("/readyz with the listeners closed: %d %q", ans.code, ans.body)
	}
	if ans := a.do(t, "GET", "/healthz"); ans.code != 200 {
		t.Fatalf("/healthz while draining: %d", ans.code)
	}
	if ans := a.do(t, "POST", "/healthz"); ans.code != http.StatusMethodNotAllowed {
		t.Fatalf("POST /healthz: %d, want 405", ans.code)
	}
}

// GET /api/v1/state describes the config being served: listeners, routes
// with their mode, names and locations, and pools with live backend state.
func TestAdminState(t *testing.T) {
	cfg, echo1, echo2 := adminConfig(t, "")
	a := startAdmin(t, cfg, nil)
	st := a.state(t)

	if st.SluiceVersion != version {
		t.Errorf("sluice_version = %q, want %q", st.SluiceVersion, version)
	}
	if len(st.Listeners) != 1 || st.Listeners[0].Name != "public" || !st.Listeners[0].TLS ||
		st.Listeners[0].Address != "127.0.0.1:0" || st.Listeners[0].Bound != a.addr("public").String() {
		t.Errorf("listeners = %+v", st.Listeners)
	}
	routes := map[string]routeJSON{}
	for _, r := range st.Routes {
		routes[r.Name] = r
	}
	if len(routes) != 3 {
		t.Fatalf("routes = %+v, want echo, game, native", st.Routes)
	}
	if r := routes["echo"]; r.Mode != "l4" || r.Listener != "public" || r.Pool != "tls" ||
		strings.Join(r.SNI, ",") != "*.echo.test,echo.test" || r.Default || r.Plain {
		t.Errorf("echo = %+v", r)
	}
	if r := routes["game"]; r.Mode != "l7" || !r.Default || r.Pool != "" || len(r.Locations) != 2 ||
		r.Locations[0].Path != "/ws" || r.Locations[0].Pool != "ws" || r.Locations[1].Root == "" {
		t.Errorf("game = %+v", r)
	}
	if r := routes["native"]; r.Mode != "l4" || !r.Plain || r.Pool != "tcp" || len(r.SNI) != 0 {
		t.Errorf("native = %+v", r)
	}

	if len(st.Pools) != 3 || st.Pools[2].Name != "ws" || st.Pools[2].Balance != "hash" || st.Pools[2].HashKey != "query:room" {
		t.Fatalf("pools = %+v", st.Pools)
	}
	if b := findBackend(st, "ws", echo1); b == nil || b.State != "ready" || !b.Healthy || b.MaxConnections != 100 || b.Weight != 1 {
		t.Errorf("ws/%s = %+v", echo1, b)
	}
	if b := findBackend(st, "ws", echo2); b == nil || b.Weight != 2 || b.MaxConnections != 0 {
		t.Errorf("ws/%s = %+v", echo2, b)
	}
	if b := findBackend(st, "tcp", echo2); b == nil || !b.Backup {
		t.Errorf("tcp/%s = %+v, want a backup", echo2, b)
	}

	// Live counts: a raw TCP client (the plain route) holds a backend slot.
	c := dial(t, a.addr("public"))
	c.Write([]byte("hello"))
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	st = a.state(t)
	if b := findBackend(st, "tcp", echo1); b == nil || b.Active != 1 || b.Dials != 1 {
		t.Errorf("with one client: tcp/%s = %+v, want active 1, dials 1", echo1, b)
	}
	if st.Active != 1 || st.MaxConnections < 16 {
		t.Errorf("active = %d, want 1", st.Active)
	}
}

// Drain, maint and ready from the API change the pool (Status and new
// picks) and the state document; mistakes get 404 / 400 / 405.
func TestAdminSetBackendState(t *testing.T) {
	cfg, echo1, echo2 := adminConfig(t, "")
	a := startAdmin(t, cfg, nil)
	pool := a.rt.Load().Pools["tcp"]

	ans := a.do(t, "POST", "/api/v1/backends/tcp/"+echo1+"/drain")
	if ans.code != 200 {
		t.Fatalf("drain: %d %s", ans.code, ans.body)
	}
	var b backendJSON
	if err := json.Unmarshal([]byte(ans.body), &b); err != nil || b.Address != echo1 || b.State != "drain" {
		t.Fatalf("drain answered %s (%v)", ans.body, err)
	}
	if s := pool.Status()[0]; s.Address != echo1 || s.AdminState != balancer.Drain {
		t.Fatalf("pool status after drain: %+v", s)
	}
	if b := findBackend(a.state(t), "tcp", echo1); b == nil || b.State != "drain" {
		t.Fatalf("state after drain: %+v", b)
	}
	// The drained primary takes no new player: the backup does.
	c := dial(t, a.addr("public"))
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if s := pool.Status(); s[0].Dials != 0 || s[1].Dials != 1 {
		t.Fatalf("after drain a new connection dialled %d (drained) / %d (backup), want 0 / 1", s[0].Dials, s[1].Dials)
	}

	// URL-escaped addresses work too (the status page escapes them).
	if ans := a.do(t, "POST", "/api/v1/backends/tcp/"+strings.ReplaceAll(echo1, ":", "%3A")+"/maint"); ans.code != 200 {
		t.Fatalf("maint (escaped): %d %s", ans.code, ans.body)
	}
	if s := pool.Status()[0]; s.AdminState != balancer.Maint {
		t.Fatalf("after maint: %v", s.AdminState)
	}
	if ans := a.do(t, "POST", "/api/v1/backends/tcp/"+echo1+"/ready"); ans.code != 200 || !strings.Contains(ans.body, `"state": "ready"`) {
		t.Fatalf("ready: %d %s", ans.code, ans.body)
	}
	if s := pool.Status()[0]; s.AdminState != balancer.Ready {
		t.Fatalf("after ready: %v", s.AdminState)
	}

	for _, tc := range []struct {
		name, method, path string
		want               int
	}{
		{"unknown pool", "POST", "/api/v1/backends/nope/" + echo1 + "/drain", 404},
		{"unknown backend", "POST", "/api/v1/backends/tcp/127.0.0.1:1/drain", 404},
		{"backend of another pool", "POST", "/api/v1/backends/tls/" + echo2 + "/drain", 404},
		{"bad state", "POST", "/api/v1/backends/tcp/" + echo1 + "/sleep", 400},
		{"GET", "GET", "/api/v1/backends/tcp/" + echo1 + "/drain", 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ans := a.do(t, tc.method, tc.path); ans.code != tc.want {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, ans.code, ans.body, tc.want)
			}
		})
	}
	if s := pool.Status()[0]; s.AdminState != balancer.Ready {
		t.Fatalf("a refused call changed the state: %v", s.AdminState)
	}
}

// With [admin] token, every POST needs the bearer token; GETs stay open.
func TestAdminToken(t *testing.T) {
	cfg, echo1, _ := adminConfig(t, "[admin]\ntoken = \"s3cret\"\n")
	a := startAdmin(t, cfg, func() error { return nil })
	drain := "/api/v1/backends/tcp/" + echo1 + "/drain"

	for _, tc := range []struct {
		name string
		hdr  []string
		want int
	}{
		{"no token", nil, 401},
		{"wrong token", []string{"Authorization", "Bearer nope"}, 401},
		{"prefix of the token", []string{"Authorization", "Bearer s3cre"}, 401},
		{"not bearer", []string{"Authorization", "Basic czNjcmV0"}, 401},
		{"token", []string{"Authorization", "Bearer s3cret"}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ans := a.do(t, "POST", drain, tc.hdr...)
			if ans.code != tc.want {
				t.Fatalf("POST with %v: %d %s, want %d", tc.hdr, ans.code, ans.body, tc.want)
			}
			if tc.want == 401 && ans.hdr.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
	if ans := a.do(t, "POST", "/api/v1/reload"); ans.code != 401 {
		t.Fatalf("reload without the token: %d", ans.code)
	}
	if ans := a.do(t, "POST", "/api/v1/reload", "Authorization", "Bearer s3cret"); ans.code != 200 {
		t.Fatalf("reload with the token: %d %s", ans.code, ans.body)
	}
	for _, p := range []string{"/api/v1/state", "/metrics", "/healthz", "/"} {
		if ans := a.do(t, "GET", p); ans.code != 200 {
			t.Fatalf("GET %s with a token configured and none sent: %d", p, ans.code)
		}
	}
}

// A web page must not drive the API from an operator's browser: cross-site
// POSTs are refused, and without a token so are foreign Host names (DNS
// rebinding to 127.0.0.1).
func TestAdminRefusesCrossSite(t *testing.T) {
	cfg, echo1, _ := adminConfig(t, "")
	a := startAdmin(t, cfg, nil)
	drain := "/api/v1/backends/tcp/" + echo1 + "/drain"
	if ans := a.do(t, "POST", drain, "Sec-Fetch-Site", "cross-site"); ans.code != http.StatusForbidden {
		t.Fatalf("cross-site POST: %d %s, want 403", ans.code, ans.body)
	}
	if ans := a.do(t, "POST", drain, "Origin", "https://evil.example"); ans.code != http.StatusForbidden {
		t.Fatalf("POST from another Origin: %d %s, want 403", ans.code, ans.body)
	}
	if ans := a.do(t, "GET", "/api/v1/state", "Host", "evil.example:9090"); ans.code != http.StatusMisdirectedRequest {
		t.Fatalf("GET with a foreign Host: %d, want 421", ans.code)
	}
	for _, host := range []string{"localhost:9090", "127.0.0.1", "[::1]:9090"} {
		if ans := a.do(t, "GET", "/api/v1/state", "Host", host); ans.code != 200 {
			t.Fatalf("GET with Host %s: %d, want 200", host, ans.code)
		}
	}
	if s := a.rt.Load().Pools["tcp"].Status()[0]; s.AdminState != balancer.Ready {
		t.Fatalf("a refused request changed the state: %v", s.AdminState)
	}
	// The status page's own same-origin POST passes.
	if ans := a.do(t, "POST", drain, "Sec-Fetch-Site", "same-origin", "Origin", a.base); ans.code != 200 {
		t.Fatalf("same-origin POST: %d %s", ans.code, ans.body)
	}
}

func TestAdminReload(t *testing.T) {
	cfg, _, _ := adminConfig(t, "")
	calls := 0
	var fail error
	a := startAdmin(t, cfg, func() error { calls++; return fail })

	if ans := a.do(t, "POST", "/api/v1/reload"); ans.code != 200 || !strings.Contains(ans.body, `"ok": true`) || calls != 1 {
		t.Fatalf("reload: %d %s (calls %d)", ans.code, ans.body, calls)
	}
	fail = errors.New("config.toml:3:1: expected '=' after a key")
	ans := a.do(t, "POST", "/api/v1/reload")
	if ans.code != http.StatusUnprocessableEntity || !strings.Contains(ans.body, "config.toml:3:1") || calls != 2 {
		t.Fatalf("failing reload: %d %s (calls %d)", ans.code, ans.body, calls)
	}

	b := startAdmin(t, cfg, nil)
	if ans := b.do(t, "POST", "/api/v1/reload"); ans.code != http.StatusNotImplemented {
		t.Fatalf("reload without a reload function: %d", ans.code)
	}
}

// GET /metrics serves the Prometheus text format: the connection counters
// as the server moves them, and the backends as real traffic moves them.
func TestAdminMetricsEndpoint(t *testing.T) {
	cfg, echo1, _ := adminConfig(t, "")
	a := startAdmin(t, cfg, nil)

	// Drive two raw TCP connections through the plain route to the echo.
	for range 2 {
		c := dial(t, a.addr("public"))
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	// A handshake record that is not a ClientHello.
	nc := dial(t, a.addr("public"))
	nc.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00})
	readAllTimeout(nc, 5*time.Second)
	a.waitRejected(t, reasonHelloMalformed, 1)
	// The access lines are written after the metrics are counted.
	a.waitAccess(t, 2)

	ans := a.do(t, "GET", "/metrics")
	if ans.code != 200 || !strings.HasPrefix(ans.hdr.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", ans.code, ans.hdr.Get("Content-Type"))
	}
	for _, want := range []string{
		`sluice_connections_accepted_total{listener="public"} 3`,
		`sluice_connections_rejected_total{listener="public",reason="hello_malformed"} 1`,
		`sluice_connections_closed_total{listener="public",mode="l4",reason="eof",route="native"} 2`,
		`sluice_relayed_bytes_total{direction="in",route="native"} 8`,
		`sluice_relayed_bytes_total{direction="out",route="native"} 8`,
		fmt.Sprintf(`sluice_backend_dials_total{backend=%q,pool="tcp"} 2`, echo1),
		fmt.Sprintf(`sluice_backend_up{backend=%q,pool="tcp"} 1`, echo1),
		fmt.Sprintf(`sluice_backend_admin_state{backend=%q,pool="tcp",state="ready"} 1`, echo1),
		`sluice_cert_expiry_seconds{sni="game.test"}`,
		`sluice_config_last_reload_success 1`,
		`sluice_connections_open `,
		`sluice_max_connections `,
		`sluice_client_hello_duration_seconds_count{listener="public"} 2`,
		`go_goroutines`,
	} {
		if !strings.Contains(ans.body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// The status page and its assets are served, self-contained (nothing
// loaded from elsewhere: the CSP says so), with the hooks tests rely on.
func TestAdminStatusPage(t *testing.T) {
	cfg, _, _ := adminConfig(t, "")
	a := startAdmin(t, cfg, nil)
	for _, tc := range []struct{ path, ctype, want string }{
		{"/", "text/html", `<table id="routes">`},
		{"/status.js", "text/javascript", `data-backend`},
		{"/status.css", "text/css", `td.state`},
	} {
		ans := a.do(t, "GET", tc.path)
		if ans.code != 200 || !strings.HasPrefix(ans.hdr.Get("Content-Type"), tc.ctype) || !strings.Contains(ans.body, tc.want) {
			t.Fatalf("GET %s: %d %s, body has %q: %v", tc.path, ans.code, ans.hdr.Get("Content-Type"), tc.want, strings.Contains(ans.body, tc.want))
		}
		if csp := ans.hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
			t.Fatalf("GET %s: CSP %q", tc.path, csp)
		}
		for _, ext := range []string{"http://", "https://", "//cdn"} {
			if tc.path != "/" && strings.Contains(ans.body, ext) {
				t.Fatalf("%s references an external resource (%s)", tc.path, ext)
			}
		}
	}
	if ans := a.do(t, "GET", "/nope"); ans.code != 404 {
		t.Fatalf("GET /nope: %d", ans.code)
	}
}

// start binds before it returns; stop frees the port and is idempotent.
func TestAdminStartStop(t *testing.T) {
	cfg, _, _ := adminConfig(t, "")
	l := startLB(t, cfg)
	a := newAdmin(l.server, newMetrics(l.rt.Load), nil)
	addr, err := a.start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.start("127.0.0.1:0"); err == nil {
		t.Fatal("a second start succeeded")
	}
	resp, err := adminClient.Get("http://" + addr.String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	a.stop()
	a.stop()
	if _, err := adminClient.Get("http://" + addr.String() + "/healthz"); err == nil {
		t.Fatal("the admin server still answers after stop")
	}
	b := newAdmin(l.server, newMetrics(l.rt.Load), nil)
	if _, err := b.start(addr.String()); err != nil {
		t.Fatalf("the port is not free after stop: %v", err)
	}
	b.stop()
}

// waitClient has no overall timeout: a wait's own timeout bounds it.
var waitClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// waitResult is one GET .../wait answer, or the error of the request.
type waitResult struct {
	code int
	body waitJSON
	err  error
}

// startWait sends GET base+path in the background; cancel ends it from the
// client's side.
func startWait(ctx context.Context, base, path string) <-chan waitResult {
	ch := make(chan waitResult, 1)
	go func() {
		var res waitResult
		defer func() { ch <- res }()
		req, err := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		if err != nil {
			res.err = err
			return
		}
		resp, err := waitClient.Do(req)
		if err != nil {
			res.err = err
			return
		}
		defer resp.Body.Close()
		res.code = resp.StatusCode
		res.err = json.NewDecoder(resp.Body).Decode(&res.body)
	}()
	return ch
}

// awaitWait returns the wait's answer, failing the test after 30 s.
func awaitWait(t *testing.T, ch <-chan waitResult) waitResult {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("wait: %v", r.err)
		}
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("wait: no answer within 30s")
	}
	return waitResult{}
}

// holdEcho holds one client connection through the plain route (pool tcp)
// and checks that it reaches an echo backend.
func holdEcho(t *testing.T, a *adminLB) *net.TCPConn {
	t.Helper()
	c := dial(t, a.addr("public"))
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return c
}

// GET /api/v1/backends/{pool}/{id}/wait?until=drained answers once the
// backend takes no new player and its last connection ended: a preStop
// hook's wait. Not before (a ready backend, or a live connection, make a
// short wait time out with 504 and the count), at once when it already is.
func TestAdminWaitDrained(t *testing.T) {
	cfg, echo1, _ := adminConfig(t, "[admin]\ntoken = \"s3cret\"\n")
	a := startAdmin(t, cfg, nil)
	path := "/api/v1/backends/tcp/" + echo1 + "/wait?until=drained"

	// Ready with no connection: not drained (a player may come any time).
	ans := a.do(t, "GET", path+"&timeout=300ms")
	var wj waitJSON
	if err := json.Unmarshal([]byte(ans.body), &wj); err != nil || ans.code != http.StatusGatewayTimeout ||
		wj.Drained || wj.State != "ready" || wj.Active != 0 || wj.Error == "" {
		t.Fatalf("wait on a ready backend: %d %s", ans.code, ans.body)
	}

	c := holdEcho(t, a)
	if ans := a.do(t, "POST", "/api/v1/backends/tcp/"+echo1+"/drain", "Authorization", "Bearer s3cret"); ans.code != 200 {
		t.Fatalf("drain: %d %s", ans.code, ans.body)
	}
	// Draining with a live player: a short wait times out with the count.
	ans = a.do(t, "GET", path+"&timeout=300ms")
	if err := json.Unmarshal([]byte(ans.body), &wj); err != nil || ans.code != http.StatusGatewayTimeout ||
		wj.Drained || wj.State != "drain" || wj.Active != 1 || wj.Backend != echo1 {
		t.Fatalf("wait with a live connection: %d %s", ans.code, ans.body)
	}
	// A long wait (no token needed: read-only) answers when the player leaves.
	ch := startWait(context.Background(), a.base, path+"&timeout=1m")
	waitFor(t, "the wait to start", func() bool { return a.adm.waiters.Load() == 1 })
	c.Close()
	r := awaitWait(t, ch)
	if r.code != http.StatusOK || !r.body.Drained || r.body.Active != 0 || r.body.State != "drain" || r.body.Pool != "tcp" {
		t.Fatalf("wait: %d %+v", r.code, r.body)
	}
	// Already drained: at once.
	if ans := a.do(t, "GET", path); ans.code != http.StatusOK || !strings.Contains(ans.body, `"drained": true`) {
		t.Fatalf("wait on a drained backend: %d %s", ans.code, ans.body)
	}

	for _, tc := range []struct {
		name, path string
		want       int
	}{
		{"no until", "/api/v1/backends/tcp/" + echo1 + "/wait", 400},
		{"other until", "/api/v1/backends/tcp/" + echo1 + "/wait?until=ready", 400},
		{"bad timeout", path + "&timeout=soon", 400},
		{"negative timeout", path + "&timeout=-1s", 400},
		{"unknown pool", "/api/v1/backends/nope/" + echo1 + "/wait?until=drained", 404},
		{"unknown backend", "/api/v1/backends/tcp/127.0.0.1:1/wait?until=drained", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ans := a.do(t, "GET", tc.path); ans.code != tc.want {
				t.Fatalf("GET %s: %d %s, want %d", tc.path, ans.code, ans.body, tc.want)
			}
		})
	}
}

// A wait ends with its client (no goroutine waits on for nobody) and with
// the admin server (503 at once, not after the shutdown grace).
func TestAdminWaitEnds(t *testing.T) {
	cfg, echo1, _ := adminConfig(t, "")
	a := startAdmin(t, cfg, nil)
	c := holdEcho(t, a)
	defer c.Close()
	path := "/api/v1/backends/tcp/" + echo1 + "/wait?until=drained&timeout=1m"

	ctx, cancel := context.WithCancel(context.Background())
	ch := startWait(ctx, a.base, path)
	waitFor(t, "the wait to start", func() bool { return a.adm.waiters.Load() == 1 })
	cancel()
	if r := <-ch; r.err == nil {
		t.Fatalf("cancelled wait answered %d", r.code)
	}
	waitFor(t, "the handler to end with its client", func() bool { return a.adm.waiters.Load() == 0 })

	ch = startWait(context.Background(), a.base, path)
	waitFor(t, "the wait to start", func() bool { return a.adm.waiters.Load() == 1 })
	a.adm.stop()
	r := awaitWait(t, ch)
	if r.code != http.StatusServiceUnavailable || r.body.Drained || r.body.Active != 1 || r.body.Error == "" {
		t.Fatalf("wait at shutdown: %d %+v", r.code, r.body)
	}
}

// A wait outlives the admin server's write timeout (30 s for other
// requests; shortened here): a preStop hook waits minutes, and an answer
// written after that timeout would be lost.
func TestAdminWaitOutlivesWriteTimeout(t *testing.T) {
	cfg, echo1, _ := adminConfig(t, "")
	l := startLB(t, cfg)
	adm := newAdmin(l.server, l.metrics, nil)
	adm.writeTimeout = 200 * time.Millisecond
	addr, err := adm.start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(adm.stop)
	a := &adminLB{lb: l, m: l.metrics, adm: adm, base: "http://" + addr.String()}
	c := holdEcho(t, a)
	defer c.Close()
	if ans := a.do(t, "POST", "/api/v1/backends/tcp/"+echo1+"/drain"); ans.code != 200 {
		t.Fatalf("drain: %d %s", ans.code, ans.body)
	}
	ch := startWait(context.Background(), a.base, "/api/v1/backends/tcp/"+echo1+"/wait?until=drained")
	waitFor(t, "the wait to start", func() bool { return adm.waiters.Load() == 1 })
	time.Sleep(2 * adm.writeTimeout)
	c.Close()
	if r := awaitWait(t, ch); r.code != http.StatusOK || !r.body.Drained {
		t.Fatalf("wait: %d %+v", r.code, r.body)
	}
}

// A backend that discovery removed is waited on by its id: listed in the
// state with "removed": true while its player plays on, followed through
// a reload, drained when the player leaves.
func TestAdminWaitRemovedBackend(t *testing.T) {
	dns := dnstest.Start(t)
	b1, b2 := echoBackend(t), echoBackend(t)
	publishSRV(dns, b1)
	f := startFileLB(t, fmt.Sprintf(discoverConfig, dns.Addr))
	adm := newAdmin(f.server, f.metrics, nil)
	addr, err := adm.start("127.0.0.1:0")
	must(t, err)
	t.Cleanup(adm.stop)
	a := &adminLB{lb: f.lb, m: f.metrics, adm: adm, base: "http://" + addr.String()}
	_, port, _ := net.SplitHostPort(b1.addr)
	id := "gs" + port + ".rooms.test:" + port
	waitFor(t, "the first answer", func() bool { b, _ := f.rt.Load().Pools["p"].Find(id); return b != nil })
	live := dial(t, f.addr("public"))
	echoOnce(t, live)

	ch := startWait(context.Background(), a.base, "/api/v1/backends/p/"+id+"/wait?until=drained&timeout=1m")
	waitFor(t, "the wait to start", func() bool { return adm.waiters.Load() == 1 })
	publishSRV(dns, b2)
	waitFor(t, "the removal", func() bool { _, removed := f.rt.Load().Pools["p"].Find(id); return removed })
	var listed *backendJSON
	for _, p := range a.state(t).Pools {
		for i, b := range p.Backends {
			if b.ID == id {
				listed = &p.Backends[i]
			}
		}
	}
	if listed == nil || !listed.Removed || listed.State != "drain" || listed.Active != 1 {
		t.Fatalf("removed backend in the state: %+v", listed)
	}
	must(t, f.reload())
	echoOnce(t, live) // plays on
	select {
	case r := <-ch:
		t.Fatalf("the wait answered with a player left: %d %+v", r.code, r.body)
	default:
	}
	live.Close()
	r := awaitWait(t, ch)
	if r.code != http.StatusOK || !r.body.Drained || !r.body.Removed || r.body.Backend != id || r.body.Active != 0 {
		t.Fatalf("wait: %d %+v", r.code, r.body)
	}
}
