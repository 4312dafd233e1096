package main

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"sluice/balancer"
	"sluice/l4"
)

// metrics counts what the server does, for the admin server's /metrics.
// Following STYLE ("atomic counters on the owner ... a Collector reading them
// at scrape time"), the hot path only bumps atomics it finds in lock-free
// copy-on-write maps keyed by label values; the collector turns them into
// Prometheus samples at scrape time. Backends and certificates are not
// counted here at all: the collector reads them from the current Runtime.
//
// A label set is resolved once, on its first use, so the accept path does
// not allocate. Label values come from the config (listener, route and pool
// names) and from fixed enums (l4.Reason), never from clients, so the number
// of series is bounded by the config.
type metrics struct {
	rt  func() *Runtime
	reg *prometheus.Registry

	accepts   cowMap[string, *atomic.Uint64]
	rejects   cowMap[reasonKey, *atomic.Uint64]
	active    cowMap[connKey, *atomic.Int64]
	closed    cowMap[closeKey, *atomic.Uint64]
	bytes     cowMap[string, *byteCounts]
	hello     cowMap[string, prometheus.Observer]
	handshake cowMap[string, prometheus.Observer]

	helloVec, handshakeVec *prometheus.HistogramVec

	reloadOK, reloadFailed atomic.Uint64
	lastReloadOK           atomic.Bool
	lastReloadSuccess      atomic.Int64 // unix seconds

	conns atomic.Pointer[func() (open, limit int64)] // see trackConnections
}

type connKey struct{ listener, route, mode string }

type closeKey struct {
	connKey
	reason l4.Reason
}

type reasonKey struct {
	listener string
	reason   l4.Reason
}

type byteCounts struct{ in, out atomic.Uint64 }

// latencyBuckets suit a ClientHello peek and a TLS handshake: well under a
// millisecond on loopback, up to seconds from a phone on a bad network (the
// deadlines are 5 s and 10 s).
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// newMetrics returns the server's metrics; rt returns the Runtime serving
// now (the backend and certificate metrics read it at scrape time).
func newMetrics(rt func() *Runtime) *metrics {
	m := &metrics{
		rt:  rt,
		reg: prometheus.NewRegistry(),
		helloVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_client_hello_duration_seconds",
			Help:    "Time from accept until the ClientHello (or the first bytes of a non-TLS client) was read.",
			Buckets: latencyBuckets,
		}, []string{"listener"}),
		handshakeVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_tls_handshake_duration_seconds",
			Help:    "Duration of the TLS handshakes that completed on l7 routes.",
			Buckets: latencyBuckets,
		}, []string{"route"}),
	}
	m.lastReloadOK.Store(true) // the config loaded at start
	m.lastReloadSuccess.Store(time.Now().Unix())
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.helloVec, m.handshakeVec,
		(*metricsCollector)(m),
	)
	return m
}

// handler serves the metrics in the Prometheus text format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// accepted counts a connection accepted on listener (before any limit).
func (m *metrics) accepted(listener string) {
	m.accepts.get(listener, newUint64).Add(1)
}

// rejected counts a connection refused before it reached a route.
func (m *metrics) rejected(listener string, reason l4.Reason) {
	m.rejects.get(reasonKey{listener, reason}, newUint64).Add(1)
}

// helloDone observes how long the ClientHello peek took.
func (m *metrics) helloDone(listener string, d time.Duration) {
	m.hello.get(listener, func(l string) prometheus.Observer {
		return m.helloVec.WithLabelValues(l)
	}).Observe(d.Seconds())
}

// handshakeDone observes an l7 route's completed TLS handshake
// (l7.Result.Handshake; skip it when zero).
func (m *metrics) handshakeDone(route string, d time.Duration) {
	m.handshake.get(route, func(r string) prometheus.Observer {
		return m.handshakeVec.WithLabelValues(r)
	}).Observe(d.Seconds())
}

// connOpened counts a routed connection as active; every call is paired
// with one connClosed with the same listener, route and mode.
func (m *metrics) connOpened(listener, route, mode string) {
	m.active.get(connKey{listener, route, mode}, newInt64).Add(1)
}

// connClosed ends a connection counted by connOpened: why it closed, and
// the bytes relayed each way (in: client to backend; out: backend to client).
func (m *metrics) connClosed(listener, route, mode string, reason l4.Reason, bytesIn, bytesOut int64) {
	k := connKey{listener, route, mode}
	m.active.get(k, newInt64).Add(-1)
	m.closed.get(closeKey{k, reason}, newUint64).Add(1)
	b := m.bytes.get(route, func(string) *byteCounts { return new(byteCounts) })
	if bytesIn > 0 {
		b.in.Add(uint64(bytesIn))
	}
	if bytesOut > 0 {
		b.out.Add(uint64(bytesOut))
	}
}

// reloaded records the outcome of a configuration reload (SIGHUP, file
// watch or the admin API).
func (m *metrics) reloaded(ok bool) {
	m.lastReloadOK.Store(ok)
	if ok {
		m.reloadOK.Add(1)
		m.lastReloadSuccess.Store(time.Now().Unix())
	} else {
		m.reloadFailed.Add(1)
	}
}

// trackConnections makes the metrics report the server's open client
// connections (routed or still in the ClientHello peek) and its
// max_connections, read from f at scrape time.
func (m *metrics) trackConnections(f func() (open, limit int64)) { m.conns.Store(&f) }

// activeOn returns the live connections of a route on a listener, for the
// state API.
func (m *metrics) activeOn(listener, route string) int64 {
	var n int64
	for k, v := range m.active.snapshot() {
		if k.listener == listener && k.route == route {
			n += v.Load()
		}
	}
	return n
}

func newUint64[K any](K) *atomic.Uint64 { return new(atomic.Uint64) }
func newInt64[K any](K) *atomic.Int64   { return new(atomic.Int64) }

// cowMap is a copy-on-write map for label sets: lookups are one atomic load
// and a map read, without locks or allocation; the first use of a key copies
// the map. Keys are bounded by the config, so copies are rare and small.
type cowMap[K comparable, V any] struct {
	m  atomic.Pointer[map[K]V]
	mu sync.Mutex // serializes inserts
}

func (c *cowMap[K, V]) get(k K, create func(K) V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.snapshot()
	if v, ok := old[k]; ok {
		return v
	}
	next := make(map[K]V, len(old)+1)
	for kk, vv := range old {
		next[kk] = vv
	}
	v := create(k)
	next[k] = v
	c.m.Store(&next)
	return v
}

// snapshot returns the current map; callers must not modify it.
func (c *cowMap[K, V]) snapshot() map[K]V {
	if m := c.m.Load(); m != nil {
		return *m
	}
	return nil
}

// metricsCollector is the scrape-time view of metrics and of the current
// Runtime.
type metricsCollector metrics

var (
	descAccepted = prometheus.NewDesc("sluice_connections_accepted_total",
		"Connections accepted, by listener.", []string{"listener"}, nil)
	descRejected = prometheus.NewDesc("sluice_connections_rejected_total",
		"Connections refused before reaching a route (peek failures, no route, max_connections), by listener and reason.",
		[]string{"listener", "reason"}, nil)
	descActive = prometheus.NewDesc("sluice_connections_active",
		"Routed connections open now, by listener, route and mode (l4 or l7).", []string{"listener", "route", "mode"}, nil)
	descClosed = prometheus.NewDesc("sluice_connections_closed_total",
		"Routed connections that ended, by listener, route, mode and close reason.",
		[]string{"listener", "route", "mode", "reason"}, nil)
	descBytes = prometheus.NewDesc("sluice_relayed_bytes_total",
		"Payload bytes relayed by closed connections, by route and direction (in: client to backend, out: backend to client).",
		[]string{"route", "direction"}, nil)

	descReloads = prometheus.NewDesc("sluice_config_reloads_total",
		"Configuration reloads that succeeded.", nil, nil)
	descReloadFailures = prometheus.NewDesc("sluice_config_reload_failures_total",
		"Configuration reloads rejected (the old configuration kept serving).", nil, nil)
	descLastReloadOK = prometheus.NewDesc("sluice_config_last_reload_success",
		"1 if the last configuration (re)load succeeded, 0 if it failed.", nil, nil)
	descLastReloadTime = prometheus.NewDesc("sluice_config_last_reload_success_timestamp_seconds",
		"Unix time of the last successful configuration load (start or reload).", nil, nil)
	descOpen = prometheus.NewDesc("sluice_connections_open",
		"Client connections open now, routed or not (what max_connections limits).", nil, nil)
	descMaxConns = prometheus.NewDesc("sluice_max_connections",
		"The global cap on open client connections (max_connections, or derived from the open-file limit).", nil, nil)
	descBuildInfo = prometheus.NewDesc("sluice_build_info",
		"Always 1; the labels say which sluice runs and which configuration it serves.", []string{"version", "config_version"}, nil)

	descCertExpiry = prometheus.NewDesc("sluice_cert_expiry_seconds",
		"Seconds until the served certificate expires (negative once expired), by server name.", []string{"sni"}, nil)
	descCertNotAfter = prometheus.NewDesc("sluice_cert_not_after_timestamp_seconds",
		"Unix time at which the served certificate expires, by server name.", []string{"sni"}, nil)

	backendLabels = []string{"pool", "backend"}
	descUp        = prometheus.NewDesc("sluice_backend_up",
		"1 if the backend is healthy (active and passive checks), 0 if down.", backendLabels, nil)
	descBackendActive = prometheus.NewDesc("sluice_backend_active_connections",
		"Connections to the backend open or being connected now.", backendLabels, nil)
	descBackendMax = prometheus.NewDesc("sluice_backend_max_connections",
		"The backend's connection cap (player slots); 0 means unlimited.", backendLabels, nil)
	descBackendWeight = prometheus.NewDesc("sluice_backend_weight",
		"The backend's configured weight.", backendLabels, nil)
	descDials = prometheus.NewDesc("sluice_backend_dials_total",
		"Connect attempts made to the backend.", backendLabels, nil)
	descFailures = prometheus.NewDesc("sluice_backend_connect_failures_total",
		"Connect attempts to the backend that failed (refused, timed out, the PROXY header and prefix write failed, or it closed before answering a hello or upgrade).",
		backendLabels, nil)
	descLocalFailures = prometheus.NewDesc("sluice_backend_local_failures_total",
		"Connect attempts to the backend that failed for want of a local resource (source ports, descriptors, socket buffers); not counted against the backend's health.",
		[]string{"pool", "backend", "reason"}, nil)
	descCheckDuration = prometheus.NewDesc("sluice_backend_check_duration_seconds",
		"Duration of the backend's last active health check.", backendLabels, nil)
	descCheckOK = prometheus.NewDesc("sluice_backend_last_check_success",
		"1 if the backend's last active health check passed (or none ran), 0 if it failed.", backendLabels, nil)
	descAdminState = prometheus.NewDesc("sluice_backend_admin_state",
		"The backend's admin state: 1 for the current one of ready, drain and maint, 0 for the others.",
		[]string{"pool", "backend", "state"}, nil)

	descAgentWeight = prometheus.NewDesc("sluice_backend_agent_weight",
		"The backend's weight in force under its agent: the configured weight scaled by the agent's percentage, or its absolute weight (pools with an agent).",
		backendLabels, nil)
	descAgentMaxconn = prometheus.NewDesc("sluice_backend_agent_maxconn",
		"The maxconn the backend's agent reported; 0 for no limit or none reported (the lower of it and max_connections is in force).",
		backendLabels, nil)
	descAgentLoad = prometheus.NewDesc("sluice_backend_agent_load",
		"The load (players from every instance) the backend's agent reported; absent if it reported none.", backendLabels, nil)
	descAgentState = prometheus.NewDesc("sluice_backend_agent_state",
		"The admin state the backend's agent set: 1 for the current one of ready, drain and maint, 0 for the others.",
		[]string{"pool", "backend", "state"}, nil)
	descAgentDown = prometheus.NewDesc("sluice_backend_agent_down",
		"1 while the backend's agent says down (the backend is DOWN whatever its checks say), else 0.", backendLabels, nil)
	descAgentReports = prometheus.NewDesc("sluice_agent_reports_total",
		"Agent answers applied, by pool and backend.", backendLabels, nil)
	descAgentErrors = prometheus.NewDesc("sluice_agent_errors_total",
		"Agent checks whose answer was ignored (nothing applied), by reason: connect (unreachable), timeout (no whole line in time), too_long, incomplete (closed before the line end), invalid (unknown word or bad number).",
		[]string{"pool", "backend", "reason"}, nil)

	descDiscoveryLookups = prometheus.NewDesc("sluice_discovery_lookups_total",
		"DNS lookups made by the pool's discover.", []string{"pool"}, nil)
	descDiscoveryFailures = prometheus.NewDesc("sluice_discovery_failures_total",
		"Discovery lookups that kept the last backend set: reason error (the resolver failed: down, SERVFAIL, timeout) or empty (no record, NXDOMAIN).",
		[]string{"pool", "reason"}, nil)
	descDiscoveryFailing = prometheus.NewDesc("sluice_discovery_failing",
		"1 while the pool's last discovery lookup failed or found nothing (the last set serves), else 0.", []string{"pool"}, nil)
	descDiscoveryBackends = prometheus.NewDesc("sluice_discovery_backends",
		"Backends the pool has from discovery now.", []string{"pool"}, nil)
	descDiscoveryDraining = prometheus.NewDesc("sluice_discovery_draining_backends",
		"Backends discovery removed whose connections have not ended yet.", []string{"pool"}, nil)
	descDiscoveryLastSuccess = prometheus.NewDesc("sluice_discovery_last_success_timestamp_seconds",
		"Unix time of the pool's last successful discovery lookup; 0 if none.", []string{"pool"}, nil)
)

var adminStates = [...]balancer.AdminState{balancer.Ready, balancer.Drain, balancer.Maint}

func (c *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descAccepted, descRejected, descActive, descClosed, descBytes,
		descOpen, descMaxConns,
		descReloads, descReloadFailures, descLastReloadOK, descLastReloadTime, descBuildInfo,
		descCertExpiry, descCertNotAfter,
		descUp, descBackendActive, descBackendMax, descBackendWeight, descDials, descFailures,
		descLocalFailures, descCheckDuration, descCheckOK, descAdminState,
		descAgentWeight, descAgentMaxconn, descAgentLoad, descAgentState, descAgentDown,
		descAgentReports, descAgentErrors,
		descDiscoveryLookups, descDiscoveryFailures, descDiscoveryFailing,
		descDiscoveryBackends, descDiscoveryDraining, descDiscoveryLastSuccess,
	} {
		ch <- d
	}
}

func (c *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	m := (*metrics)(c)
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}

	for l, n := range m.accepts.snapshot() {
		counter(descAccepted, float64(n.Load()), l)
	}
	for k, n := range m.rejects.snapshot() {
		counter(descRejected, float64(n.Load()), k.listener, string(k.reason))
	}
	for k, n := range m.active.snapshot() {
		gauge(descActive, float64(n.Load()), k.listener, k.route, k.mode)
	}
	for k, n := range m.closed.snapshot() {
		counter(descClosed, float64(n.Load()), k.listener, k.route, k.mode, string(k.reason))
	}
	for r, b := range m.bytes.snapshot() {
		counter(descBytes, float64(b.in.Load()), r, "in")
		counter(descBytes, float64(b.out.Load()), r, "out")
	}

	if f := m.conns.Load(); f != nil {
		open, limit := (*f)()
		gauge(descOpen, float64(open))
		gauge(descMaxConns, float64(limit))
	}

	counter(descReloads, float64(m.reloadOK.Load()))
	counter(descReloadFailures, float64(m.reloadFailed.Load()))
	gauge(descLastReloadOK, b2f(m.lastReloadOK.Load()))
	gauge(descLastReloadTime, float64(m.lastReloadSuccess.Load()))

	rt := m.rt()
	if rt == nil {
		return
	}
	gauge(descBuildInfo, 1, version, rt.Version)

	now := time.Now()
	for name, leaf := range rt.Certificates() {
		gauge(descCertExpiry, leaf.NotAfter.Sub(now).Seconds(), name)
		gauge(descCertNotAfter, float64(leaf.NotAfter.Unix()), name)
	}

	for _, pname := range sortedKeys(rt.Pools) {
		for _, b := range rt.Pools[pname].Status() {
			gauge(descUp, b2f(b.Healthy), pname, b.ID)
			gauge(descBackendActive, float64(b.Active), pname, b.ID)
			gauge(descBackendMax, float64(b.MaxConnections), pname, b.ID)
			gauge(descBackendWeight, float64(b.Weight), pname, b.ID)
			counter(descDials, float64(b.Dials), pname, b.ID)
			counter(descFailures, float64(b.Failures), pname, b.ID)
			for _, r := range balancer.LocalReasons {
				counter(descLocalFailures, float64(b.LocalFailures[r]), pname, b.ID, r.String())
			}
			gauge(descCheckDuration, b.LastCheckDuration.Seconds(), pname, b.ID)
			gauge(descCheckOK, b2f(b.LastCheckError == ""), pname, b.ID)
			for _, s := range adminStates {
				gauge(descAdminState, b2f(b.AdminState == s), pname, b.ID, s.String())
			}
			if a := b.Agent; a != nil {
				gauge(descAgentWeight, a.Weight, pname, b.ID)
				gauge(descAgentMaxconn, float64(max(a.MaxConnections, 0)), pname, b.ID)
				if a.Load >= 0 {
					gauge(descAgentLoad, float64(a.Load), pname, b.ID)
				}
				for _, s := range adminStates {
					gauge(descAgentState, b2f(a.State == s), pname, b.ID, s.String())
				}
				gauge(descAgentDown, b2f(a.Down), pname, b.ID)
				counter(descAgentReports, float64(a.Reports), pname, b.ID)
				for _, r := range balancer.AgentErrorReasons {
					counter(descAgentErrors, float64(a.Errors[r]), pname, b.ID, r.String())
				}
			}
		}
		if d, ok := rt.Pools[pname].Discovery(); ok {
			counter(descDiscoveryLookups, float64(d.Lookups), pname)
			counter(descDiscoveryFailures, float64(d.Failures), pname, "error")
			counter(descDiscoveryFailures, float64(d.Empty), pname, "empty")
			gauge(descDiscoveryFailing, b2f(d.Failing), pname)
			gauge(descDiscoveryBackends, float64(d.Backends), pname)
			gauge(descDiscoveryDraining, float64(d.Draining), pname)
			last := 0.0
			if !d.LastSuccess.IsZero() {
				last = float64(d.LastSuccess.UnixNano()) / 1e9
			}
			gauge(descDiscoveryLastSuccess, last, pname)
		}
	}
}
