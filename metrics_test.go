package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"sluice/balancer"
	"sluice/l4"
	"sluice/l7"
)

// testRuntime validates cfg without binding anything; health checks are
// off unless the config asks (as in startLB).
func testRuntime(t *testing.T, cfg string) *Runtime {
	t.Helper()
	c, err := DecodeConfig([]byte(cfg))
	if err != nil {
		t.Fatalf("decode: %v\n%s", err, cfg)
	}
	for _, p := range c.Pools {
		if p.Health.Check == "" {
			p.Health.Check = "none"
		}
	}
	rt, err := c.Validate()
	if err != nil {
		t.Fatalf("validate: %v\n%s", err, cfg)
	}
	t.Cleanup(rt.Close)
	return rt
}

// gather scrapes m's registry; a Gather error (inconsistent label sets,
// duplicate series) fails the test.
func gather(t *testing.T, m *metrics) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// value returns the sample of name whose labels include every "k=v" of
// labels: counter, gauge or untyped value, or a histogram's count.
func value(t *testing.T, m *metrics, name string, labels ...string) float64 {
	t.Helper()
	v, ok := lookup(gather(t, m), name, labels...)
	if !ok {
		t.Fatalf("no sample %s{%s}", name, strings.Join(labels, ","))
	}
	return v
}

func lookup(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, s := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range s.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				continue next
			}
		}
		switch {
		case s.Counter != nil:
			return s.Counter.GetValue(), true
		case s.Gauge != nil:
			return s.Gauge.GetValue(), true
		case s.Histogram != nil:
			return float64(s.Histogram.GetSampleCount()), true
		case s.Untyped != nil:
			return s.Untyped.GetValue(), true
		}
	}
	return 0, false
}

const metricsConfig = `
[listeners.public]
address = "127.0.0.1:0"
plain_route = "native"
[routes.game]
listener = "public"
sni = ["game.test", "*.rooms.test"]
mode = "l7"
pool = "ws"
[routes.native]
listener = "public"
pool = "tcp"
[pools.ws]
backends = [{ address = "127.0.0.1:1", max_connections = 50 }, { address = "127.0.0.1:2", weight = 3 }]
[pools.tcp]
backends = [{ address = "127.0.0.1:3" }]
`

// The connection methods the accept path calls move the series they name,
// and only those.
func TestMetricsConnectionCounters(t *testing.T) {
	rt := testRuntime(t, metricsConfig)
	m := newMetrics(func() *Runtime { return rt })

	m.accepted("public")
	m.accepted("public")
	m.rejected("public", reasonNoSNI)
	m.rejected("public", reasonHelloTimeout)
	m.rejected("public", reasonHelloTimeout)
	m.helloDone("public", 3*time.Millisecond)
	m.handshakeDone("game", 20*time.Millisecond)
	m.connOpened("public", "game", "l7")
	m.connOpened("public", "native", "l4")
	m.connOpened("public", "native", "l4")
	m.connClosed("public", "native", "l4", l4.ReasonEOF, 100, 2000)

	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sluice_connections_accepted_total", []string{"listener=public"}, 2},
		{"sluice_connections_rejected_total", []string{"listener=public", "reason=no_sni"}, 1},
		{"sluice_connections_rejected_total", []string{"listener=public", "reason=hello_timeout"}, 2},
		{"sluice_client_hello_duration_seconds", []string{"listener=public"}, 1},
		{"sluice_tls_handshake_duration_seconds", []string{"route=game"}, 1},
		{"sluice_connections_active", []string{"listener=public", "route=game", "mode=l7"}, 1},
		{"sluice_connections_active", []string{"listener=public", "route=native", "mode=l4"}, 1},
		{"sluice_connections_closed_total", []string{"route=native", "mode=l4", "reason=eof"}, 1},
		{"sluice_relayed_bytes_total", []string{"route=native", "direction=in"}, 100},
		{"sluice_relayed_bytes_total", []string{"route=native", "direction=out"}, 2000},
	} {
		t.Run(tc.name+"{"+strings.Join(tc.labels, ",")+"}", func(t *testing.T) {
			if got := value(t, m, tc.name, tc.labels...); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	if _, ok := lookup(gather(t, m), "sluice_connections_closed_total", "route=game"); ok {
		t.Fatal("a closed series for a route with no closed connection")
	}
	if n := m.activeOn("public", "native"); n != 1 {
		t.Fatalf("activeOn(public, native) = %d, want 1", n)
	}
	// The histogram keeps what it saw in the right bucket.
	h := gather(t, m)["sluice_tls_handshake_duration_seconds"].GetMetric()[0].GetHistogram()
	if got := h.GetSampleSum(); got < 0.019 || got > 0.021 {
		t.Fatalf("handshake sum = %v, want 0.02", got)
	}
}

// The accept path must not allocate for metrics once a label set has been
// seen: the hot methods are map reads and atomic adds.
func TestMetricsHotPathDoesNotAllocate(t *testing.T) {
	m := newMetrics(func() *Runtime { return nil })
	res := l7.Result{Reason: l4.ReasonEOF, Handshake: time.Millisecond}
	hot := func() {
		m.accepted("public")
		m.rejected("public", reasonNotTLS)
		m.helloDone("public", time.Millisecond)
		m.handshakeDone("game", res.Handshake)
		m.connOpened("public", "game", "l7")
		m.connClosed("public", "game", "l7", res.Reason, 10, 20)
	}
	hot() // first use resolves the label sets
	if n := testing.AllocsPerRun(200, hot); n != 0 {
		t.Fatalf("hot path allocates %v times per connection, want 0", n)
	}
}

// Reload outcomes: counters per result, and the last result as a 0/1 gauge
// (RELIABILITY T21: sluice_config_reload_failures_total,
// sluice_config_last_reload_success).
func TestMetricsReload(t *testing.T) {
	m := newMetrics(func() *Runtime { return nil })
	if got := value(t, m, "sluice_config_last_reload_success"); got != 1 {
		t.Fatalf("at start last_reload_success = %v, want 1 (the config loaded)", got)
	}
	start := value(t, m, "sluice_config_last_reload_success_timestamp_seconds")
	if start == 0 {
		t.Fatal("no last successful load time at start")
	}
	m.reloaded(false)
	if got := value(t, m, "sluice_config_reload_failures_total"); got != 1 {
		t.Fatalf("failures = %v, want 1", got)
	}
	if got := value(t, m, "sluice_config_last_reload_success"); got != 0 {
		t.Fatalf("after a failed reload last_reload_success = %v, want 0", got)
	}
	if got := value(t, m, "sluice_config_last_reload_success_timestamp_seconds"); got != start {
		t.Fatalf("a failed reload moved the success time: %v -> %v", start, got)
	}
	m.reloaded(true)
	if got := value(t, m, "sluice_config_reloads_total"); got != 1 {
		t.Fatalf("reloads = %v, want 1", got)
	}
	if got := value(t, m, "sluice_config_last_reload_success"); got != 1 {
		t.Fatalf("after a good reload last_reload_success = %v, want 1", got)
	}
}

// Backend metrics are read from the current Runtime's pools at scrape
// time: health, admin state, slots, weights.
func TestMetricsBackendCollector(t *testing.T) {
	rt := testRuntime(t, metricsConfig)
	cur := rt
	m := newMetrics(func() *Runtime { return cur })

	b := func(pool, addr string) []string { return []string{"pool=" + pool, "backend=" + addr} }
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sluice_backend_up", b("ws", "127.0.0.1:1"), 1},
		{"sluice_backend_active_connections", b("ws", "127.0.0.1:1"), 0},
		{"sluice_backend_max_connections", b("ws", "127.0.0.1:1"), 50},
		{"sluice_backend_max_connections", b("ws", "127.0.0.1:2"), 0},
		{"sluice_backend_weight", b("ws", "127.0.0.1:2"), 3},
		{"sluice_backend_dials_total", b("tcp", "127.0.0.1:3"), 0},
		{"sluice_backend_connect_failures_total", b("tcp", "127.0.0.1:3"), 0},
		{"sluice_backend_check_duration_seconds", b("tcp", "127.0.0.1:3"), 0},
		{"sluice_backend_last_check_success", b("tcp", "127.0.0.1:3"), 1},
		{"sluice_backend_admin_state", append(b("ws", "127.0.0.1:1"), "state=ready"), 1},
		{"sluice_backend_admin_state", append(b("ws", "127.0.0.1:1"), "state=drain"), 0},
	} {
		if got := value(t, m, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s{%s} = %v, want %v", tc.name, strings.Join(tc.labels, ","), got, tc.want)
		}
	}

	must(t, rt.Pools["ws"].SetState("127.0.0.1:1", balancer.Drain))
	if got := value(t, m, "sluice_backend_admin_state", append(b("ws", "127.0.0.1:1"), "state=drain")...); got != 1 {
		t.Fatalf("after SetState(drain): admin_state{state=drain} = %v, want 1", got)
	}
	if got := value(t, m, "sluice_backend_admin_state", append(b("ws", "127.0.0.1:1"), "state=ready")...); got != 0 {
		t.Fatalf("after SetState(drain): admin_state{state=ready} = %v, want 0", got)
	}

	// A reload swaps the Runtime: the collector follows it.
	cur = testRuntime(t, strings.Replace(metricsConfig, `{ address = "127.0.0.1:3" }`, `{ address = "127.0.0.1:4" }`, 1))
	fams := gather(t, m)
	if _, ok := lookup(fams, "sluice_backend_up", b("tcp", "127.0.0.1:3")...); ok {
		t.Fatal("a backend of the old config is still reported")
	}
	if _, ok := lookup(fams, "sluice_backend_up", b("tcp", "127.0.0.1:4")...); !ok {
		t.Fatal("the new config's backend is not reported")
	}
}

// Certificate expiry is read at scrape time from the served certificates
// (RELIABILITY T22), here the self-signed ones generated for an l7 route.
func TestMetricsCertExpiry(t *testing.T) {
	rt := testRuntime(t, metricsConfig)
	m := newMetrics(func() *Runtime { return rt })
	certs := rt.Certificates()
	for _, name := range []string{"game.test", "*.rooms.test"} {
		leaf := certs[name]
		if leaf == nil {
			t.Fatalf("Certificates() has no %q: %v", name, certs)
		}
		left := value(t, m, "sluice_cert_expiry_seconds", "sni="+name)
		if want := time.Until(leaf.NotAfter).Seconds(); left <= 0 || left > want+1 {
			t.Fatalf("expiry of %s = %v s, want about %v", name, left, want)
		}
		if got := value(t, m, "sluice_cert_not_after_timestamp_seconds", "sni="+name); got != float64(leaf.NotAfter.Unix()) {
			t.Fatalf("not_after of %s = %v, want %v", name, got, leaf.NotAfter.Unix())
		}
	}
}

// Every metric has the sluice_ prefix (or is Go's and the process's own),
// and help text.
func TestMetricsNamesAndHelp(t *testing.T) {
	rt := testRuntime(t, metricsConfig)
	m := newMetrics(func() *Runtime { return rt })
	m.accepted("public")
	m.rejected("public", reasonNoRoute)
	m.helloDone("public", time.Millisecond)
	m.handshakeDone("game", time.Millisecond)
	m.connOpened("public", "game", "l7")
	m.connClosed("public", "game", "l7", l4.ReasonEOF, 1, 1)
	for name, f := range gather(t, m) {
		if !strings.HasPrefix(name, "sluice_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %s: want prefix sluice_", name)
		}
		if f.GetHelp() == "" {
			t.Errorf("metric %s has no help", name)
		}
	}
	descs := make(chan *prometheus.Desc, 100)
	(*metricsCollector)(m).Describe(descs)
	close(descs)
	n := 0
	for d := range descs {
		n++
		if !strings.Contains(d.String(), `fqName: "sluice_`) {
			t.Errorf("described %v", d)
		}
	}
	if n == 0 {
		t.Fatal("the collector describes nothing")
	}
}

// A listener's own default certificate (served to clients without SNI) is
// reported as "default:<listener>"; certificates a name serves are not
// repeated under it.
func TestRuntimeCertificatesListenerDefault(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeCert(t, dir, "default.test")
	rt := testRuntime(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
default_route = "game"
cert = %q
key = %q
[listeners.other]
address = "127.0.0.1:0"
[routes.game]
listener = "public"
sni = ["game.test"]
mode = "l7"
pool = "ws"
[routes.more]
listener = "other"
sni = ["more.test"]
mode = "l7"
pool = "ws"
[pools.ws]
backends = [{ address = "127.0.0.1:1" }]
`, certFile, keyFile))
	certs := rt.Certificates()
	if len(certs) != 3 {
		t.Fatalf("Certificates() = %v, want game.test, more.test, default:public", certs)
	}
	if c := certs["default:public"]; c == nil || c.DNSNames[0] != "default.test" {
		t.Fatalf("default:public = %v", c)
	}
	if c := certs["game.test"]; c == nil || c.VerifyHostname("game.test") != nil {
		t.Fatalf("game.test = %v", c)
	}
}

// Many connections at once on new and known label sets, scraped meanwhile:
// nothing is lost (run with -race).
func TestMetricsConcurrent(t *testing.T) {
	m := newMetrics(func() *Runtime { return nil })
	const workers, each = 8, 200
	done := make(chan struct{})
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		for {
			select {
			case <-done:
				return
			default:
				m.reg.Gather()
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			route := fmt.Sprintf("r%d", w%3)
			for i := range each {
				m.accepted("public")
				m.connOpened("public", route, "l4")
				m.connClosed("public", route, "l4", l4.Reason(fmt.Sprintf("reason%d", i%4)), 1, 2)
			}
		}()
	}
	wg.Wait()
	close(done)
	<-scraped
	if got := value(t, m, "sluice_connections_accepted_total", "listener=public"); got != workers*each {
		t.Fatalf("accepted = %v, want %d", got, workers*each)
	}
	var closed, in float64
	fams := gather(t, m)
	for _, s := range fams["sluice_connections_closed_total"].GetMetric() {
		closed += s.GetCounter().GetValue()
	}
	for _, s := range fams["sluice_relayed_bytes_total"].GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() == "direction" && l.GetValue() == "in" {
				in += s.GetCounter().GetValue()
			}
		}
	}
	for _, s := range fams["sluice_connections_active"].GetMetric() {
		if v := s.GetGauge().GetValue(); v != 0 {
			t.Fatalf("active %v = %v after every connection closed", s.GetLabel(), v)
		}
	}
	if closed != workers*each || in != workers*each {
		t.Fatalf("closed = %v, bytes in = %v, want %d each", closed, in, workers*each)
	}
}
