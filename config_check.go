package main

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"sluice/balancer"
	"sluice/balancer/discover"
	"sluice/l4"
	"sluice/l7"
	"sluice/tlsutil"
)

// checker collects a config's problems, each prefixed by its TOML key path,
// so that one run reports all of them.
type checker struct{ errs []error }

// errorf records a problem at path ("routes.h5.pool").
func (ck *checker) errorf(path, format string, args ...any) {
	ck.errs = append(ck.errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
}

// duration parses the duration at path: def if unset; zero only with
// allowZero.
func (ck *checker) duration(path, s string, def time.Duration, allowZero bool) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		ck.errorf(path, "invalid duration %q (use e.g. \"5s\", \"10m\")", s)
	case d < 0 || (d == 0 && !allowZero):
		ck.errorf(path, "duration must be positive, got %q", s)
	}
	return d
}

// err returns every recorded problem, joined; nil if none.
func (ck *checker) err() error { return errors.Join(ck.errs...) }

// compiler runs the pure phase over one Config: each section is checked by
// its own method, which records problems and fills out.
type compiler struct {
	checker
	cfg   *Config
	out   *Compiled
	certs map[[2]string]*tls.Certificate // by resolved (cert, key): routes may share one
	dns   *discover.Resolver             // [resolver], for the pools' discover; nil if invalid
	relay l4.Engine                      // [tuning] relay, for every route
}

// Compile checks the whole config and compiles it: the pure phase. It
// reports all problems at once, each prefixed by its TOML key path. It
// reads the certificate and key files and stats the static roots, and
// starts, binds and generates nothing: Build does that.
func (c *Config) Compile() (*Compiled, error) {
	cp := &compiler{
		cfg: c,
		out: &Compiled{
			listenerSpecs: map[string]*listenerSpec{},
			routeSpecs:    map[string]*routeSpec{},
			poolSpecs:     map[string]balancer.PoolConfig{},
		},
		certs: map[[2]string]*tls.Certificate{},
	}
	// The order is the order of the problems in the error.
	cp.global()
	cp.log()
	cp.admin()
	cp.resolver()
	cp.tuning()
	cp.pools()
	cp.listeners()
	cp.routes()
	cp.entryRoutes()
	cp.routeTLS()
	if err := cp.err(); err != nil {
		return nil, err
	}
	return cp.out, nil
}

// global checks the top-level keys.
func (cp *compiler) global() {
	c, out := cp.cfg, cp.out
	out.DrainTimeout = cp.duration("drain_timeout", c.DrainTimeout, defaultDrainTimeout, true)
	if c.MaxConnections < 0 {
		cp.errorf("max_connections", "must be >= 0 (0 derives it from the open-file limit), got %d", c.MaxConnections)
	}
	out.MaxConnections = c.MaxConnections
	out.Watch = c.Watch
}

// log checks [log].
func (cp *compiler) log() {
	lc, out := cp.cfg.Log, cp.out
	out.LogLevel = cmp.Or(lc.Level, "info")
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, out.LogLevel) {
		cp.errorf("log.level", "must be one of debug, info, warn, error; got %q", lc.Level)
	}
	out.LogFormat = cmp.Or(lc.Format, "json")
	if out.LogFormat != "json" && out.LogFormat != "console" {
		cp.errorf("log.format", "must be json or console; got %q", lc.Format)
	}
}

// tuning checks [tuning].
func (cp *compiler) tuning() {
	tc := cp.cfg.Tuning
	e, ok := l4.ParseEngine(cmp.Or(tc.Relay, "epoll"))
	if !ok {
		cp.errorf("tuning.relay", "must be goroutine or epoll; got %q", tc.Relay)
	}
	cp.relay = e
}

// admin checks [admin].
func (cp *compiler) admin() {
	ac, out := cp.cfg.Admin, cp.out
	out.AdminListen, out.AdminToken = cmp.Or(ac.Listen, defaultAdminListen), ac.Token
	if out.AdminListen == "off" {
		out.AdminListen = ""
		return
	}
	if err := checkHostPort(out.AdminListen, true); err != nil {
		cp.errorf("admin.listen", "%v (or \"off\")", err)
	} else if host, _, _ := net.SplitHostPort(out.AdminListen); !isLoopback(host) && out.AdminToken == "" {
		cp.errorf("admin.token", "the admin server listens on %q, beyond loopback: set a token", out.AdminListen)
	}
}

// listeners checks every [listeners.NAME].
func (cp *compiler) listeners() {
	if len(cp.cfg.Listeners) == 0 {
		cp.errorf("listeners", "at least one listener is required")
	}
	addrs := map[string]string{} // address → listener
	for _, name := range sortedKeys(cp.cfg.Listeners) {
		if lc := cp.cfg.Listeners[name]; lc != nil {
			cp.out.listenerSpecs[name] = cp.listener(name, lc, addrs)
		}
	}
}

func (cp *compiler) listener(name string, lc *ListenerConfig, addrs map[string]string) *listenerSpec {
	path := "listeners." + name
	if err := checkHostPort(lc.Address, true); err != nil {
		cp.errorf(path+".address", "%v", err)
	} else if other, dup := addrs[lc.Address]; dup && !strings.HasSuffix(lc.Address, ":0") {
		cp.errorf(path+".address", "address %q is also used by listeners.%s", lc.Address, other)
	}
	addrs[lc.Address] = name
	ls := &listenerSpec{
		name:          name,
		address:       lc.Address,
		key:           lc.Address,
		tls:           lc.TLS == nil || *lc.TLS,
		helloTimeout:  cp.duration(path+".hello_timeout", lc.HelloTimeout, defaultHelloTimeout, false),
		headerTimeout: cp.duration(path+".header_timeout", lc.HeaderTimeout, defaultHeaderTimeout, false),
		maxHelloBytes: lc.MaxHelloBytes,
		redirectHTTPS: lc.RedirectHTTPS,
	}
	ls.handshakeTimeout = cp.duration(path+".tls_handshake_timeout", lc.TLSHandshakeTimeout, defaultHandshakeTimeout, false)
	ls.redirectPort = lc.RedirectHTTPSPort
	switch p := lc.RedirectHTTPSPort; {
	case p != 0 && !lc.RedirectHTTPS:
		cp.errorf(path+".redirect_https_port", "only used with redirect_https = true")
	case p < 0 || p > 65535:
		cp.errorf(path+".redirect_https_port", "must be between 1 and 65535, got %d", p)
	}
	ls.body = cp.bodyLimits(path, lc)
	ls.proxyIn = cp.proxyIn(path, lc)
	ls.perIP = cp.perIP(path, lc)
	switch {
	case lc.MaxHelloBytes == 0:
		ls.maxHelloBytes = tlsutil.DefaultMaxHelloBytes
	case lc.MaxHelloBytes < 512 || lc.MaxHelloBytes > tlsutil.MaxHelloBytesLimit:
		cp.errorf(path+".max_hello_bytes", "must be between 512 and %d, got %d", tlsutil.MaxHelloBytesLimit, lc.MaxHelloBytes)
	}
	switch {
	case ls.tls && lc.RedirectHTTPS:
		cp.errorf(path+".redirect_https", "only for cleartext listeners (tls = false)")
	case !ls.tls:
		if lc.PlainRoute != "" {
			cp.errorf(path+".plain_route", "a cleartext listener (tls = false) routes by Host; plain_route is for TLS listeners")
		}
		if lc.Cert != "" || lc.Key != "" {
			cp.errorf(path+".cert", "a cleartext listener (tls = false) has no certificate")
		}
	}
	// A reload keeps the socket of a listener whose address is unchanged;
	// port 0 (tests) means "any port", so it is kept by name.
	if strings.HasSuffix(lc.Address, ":0") {
		ls.key = lc.Address + "#" + name
	}
	return ls
}

// routes checks every [routes.NAME] and fills the listeners' SNI tables.
func (cp *compiler) routes() {
	for _, name := range sortedKeys(cp.cfg.Routes) {
		if rc := cp.cfg.Routes[name]; rc != nil {
			cp.out.routeSpecs[name] = cp.route(name, rc)
		}
	}
}

func (cp *compiler) route(name string, rc *RouteConfig) *routeSpec {
	path := "routes." + name
	rs := &routeSpec{
		name:     name,
		mode:     rc.Mode,
		listener: rc.Listener,
		relay: l4.Options{
			IdleTimeout:       cp.duration(path+".idle_timeout", rc.IdleTimeout, defaultIdleTimeout, false),
			HalfCloseTimeout:  cp.duration(path+".half_close_timeout", rc.HalfCloseTimeout, defaultHalfCloseTimeout, false),
			WriteStallTimeout: cp.duration(path+".write_stall_timeout", rc.WriteStallTimeout, defaultWriteStallTimeout, false),
			Engine:            cp.relay,
		},
	}
	cp.routeMode(path, rc, rs)
	ls := cp.out.listenerSpecs[rc.Listener]
	if rc.Listener == "" {
		cp.errorf(path+".listener", "a route needs a listener")
	} else if ls == nil && cp.cfg.Listeners[rc.Listener] == nil {
		cp.errorf(path+".listener", "unknown listener %q", rc.Listener)
	}
	if ls != nil && !ls.tls && rs.mode != "l7" {
		cp.errorf(path+".mode", "listener %q is cleartext HTTP (tls = false): its routes must be mode = \"l7\"", rc.Listener)
	}
	rs.names = cp.serverNames(name, rc, ls)
	rs.http2 = rs.mode == "l7"
	if rc.HTTP2 != nil {
		switch {
		case rs.mode != "l7":
			cp.errorf(path+".http2", "only for mode = \"l7\" (an l4 route passes ALPN through to the backend)")
		case *rc.HTTP2 && ls != nil && !ls.tls:
			cp.errorf(path+".http2", "listener %q is cleartext HTTP (tls = false): no h2c, its routes speak HTTP/1.1", rc.Listener)
		}
		rs.http2 = rs.http2 && *rc.HTTP2
	}
	if rs.mode == "l7" {
		rs.cert = cp.loadCert(path, rc.Cert, rc.Key)
		rs.locations = cp.locations(path, rc.Locations)
	}
	return rs
}

// routeMode checks a route's mode and pool, and the keys its mode excludes.
func (cp *compiler) routeMode(path string, rc *RouteConfig, rs *routeSpec) {
	switch rc.Mode {
	case "", "l4":
		rs.mode = "l4"
	case "l7":
	default:
		cp.errorf(path+".mode", "must be \"l4\" or \"l7\"; got %q", rc.Mode)
	}
	needPool := rs.mode == "l4" || len(rc.Locations) == 0
	switch {
	case rc.Pool == "" && needPool:
		cp.errorf(path+".pool", "a route needs a pool")
	case rc.Pool == "":
	case cp.cfg.Pools[rc.Pool] == nil:
		cp.errorf(path+".pool", "unknown pool %q", rc.Pool)
	default:
		rs.pool = rc.Pool
	}
	if rs.mode == "l4" {
		if rc.Cert != "" || rc.Key != "" {
			cp.errorf(path+".cert", "an l4 route passes TLS through: the backend holds the certificate (use mode = \"l7\" to terminate TLS here)")
		}
		if len(rc.Locations) > 0 {
			cp.errorf(path+".locations", "locations need mode = \"l7\"")
		}
	}
}

// serverNames checks the sni entries of route name, enters them in the SNI
// table of its listener (ls, nil if unknown) and returns them normalized.
func (cp *compiler) serverNames(name string, rc *RouteConfig, ls *listenerSpec) []string {
	var names []string
	for i, raw := range rc.SNI {
		spath := fmt.Sprintf("routes.%s.sni[%d]", name, i)
		p, err := tlsutil.ParseHostPattern(raw)
		if err != nil {
			cp.errorf(spath, "%v", err)
			continue
		}
		names = append(names, p.String())
		if ls == nil {
			continue
		}
		if other, added := ls.names.Add(p, name); !added {
			cp.errorf(spath, "%q is already routed by routes.%s on listener %q", raw, other, rc.Listener)
		}
	}
	return names
}

// entryRoutes checks the listeners' default_route and plain_route, then
// that every route can be reached: by a server name, or as one of those.
func (cp *compiler) entryRoutes() {
	reachable := map[string]bool{}
	for _, name := range sortedKeys(cp.cfg.Listeners) {
		lc, ls := cp.cfg.Listeners[name], cp.out.listenerSpecs[name]
		if lc == nil {
			continue
		}
		ls.defaultRoute = cp.entryRoute(name, "default_route", lc.DefaultRoute, reachable)
		ls.plainRoute = cp.entryRoute(name, "plain_route", lc.PlainRoute, reachable)
	}
	for _, name := range sortedKeys(cp.cfg.Routes) {
		if rc := cp.cfg.Routes[name]; rc != nil && len(rc.SNI) == 0 && !reachable[name] {
			cp.errorf("routes."+name+".sni", "route has no sni and is not the default_route or plain_route of its listener, so no connection can reach it")
		}
	}
}

// entryRoute checks listeners.LISTENER.KEY = ROUTE and returns the route
// name ("" if unset or unknown).
func (cp *compiler) entryRoute(listener, key, route string, reachable map[string]bool) string {
	if route == "" {
		return ""
	}
	path := "listeners." + listener + "." + key
	if cp.out.routeSpecs[route] == nil {
		cp.errorf(path, "unknown route %q", route)
		return ""
	}
	if rl := cp.cfg.Routes[route].Listener; rl != listener {
		cp.errorf(path, "route %q belongs to listener %q", route, rl)
	}
	reachable[route] = true
	return route
}

// bodyLimits checks a listener's request body keys (l7 routes).
func (cp *compiler) bodyLimits(path string, lc *ListenerConfig) bodyLimits {
	b := bodyLimits{
		timeout: cp.duration(path+".body_timeout", lc.BodyTimeout, defaultBodyTimeout, false),
		buffer:  lc.RequestBufferBytes,
		limit:   lc.MaxBodyBytes,
	}
	if b.buffer == 0 {
		b.buffer = l7.DefaultRequestBufferBytes
	}
	if b.limit == 0 {
		b.limit = l7.DefaultMaxBodyBytes
	}
	const most = 1 << 40
	if b.buffer < 0 || b.buffer > 1<<30 {
		cp.errorf(path+".request_buffer_bytes", "must be between 1 and %d (1 GiB), got %d", 1<<30, lc.RequestBufferBytes)
	}
	if b.limit < 0 || b.limit > most {
		cp.errorf(path+".max_body_bytes", "must be between 1 and %d (1 TiB), got %d", most, lc.MaxBodyBytes)
	}
	return b
}

// proxyIn checks accept_proxy and trusted_cidrs: PROXY headers are taken
// only from the listed prefixes, which accept_proxy requires.
func (cp *compiler) proxyIn(path string, lc *ListenerConfig) proxyIn {
	p := proxyIn{accept: lc.AcceptProxy}
	for i, s := range lc.TrustedCIDRs {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			if a, aerr := netip.ParseAddr(s); aerr == nil {
				pfx = netip.PrefixFrom(a, a.BitLen()) // a single address
			} else {
				cp.errorf(fmt.Sprintf("%s.trusted_cidrs[%d]", path, i), "%q is not a CIDR prefix (10.0.0.0/8, 2001:db8::/32) or an address", s)
				continue
			}
		}
		p.trusted = append(p.trusted, pfx.Masked())
	}
	switch {
	case lc.AcceptProxy && len(lc.TrustedCIDRs) == 0:
		cp.errorf(path+".trusted_cidrs", "required with accept_proxy: the addresses of the balancers that send PROXY headers")
	case !lc.AcceptProxy && len(lc.TrustedCIDRs) > 0:
		cp.errorf(path+".trusted_cidrs", "only used with accept_proxy = true")
	}
	return p
}

// perIP checks the per-client limits: max_connections_per_ip (default 512,
// 0: none) and new_connections_per_ip (default { rate = 100, burst = 200 },
// rate 0: none).
func (cp *compiler) perIP(path string, lc *ListenerConfig) ipLimits {
	l := ipLimits{maxConns: defaultMaxConnsPerIP, rate: defaultNewConnsRate, burst: float64(defaultNewConnsBurst)}
	if n := lc.MaxConnectionsPerIP; n != nil {
		if *n < 0 {
			cp.errorf(path+".max_connections_per_ip", "must be >= 0 (0: no limit), got %d", *n)
		}
		l.maxConns = max(*n, 0)
	}
	if r := lc.NewConnectionsPerIP; r != nil {
		switch {
		case r.Rate < 0 || r.Rate > 1e6 || r.Rate != r.Rate:
			cp.errorf(path+".new_connections_per_ip.rate", "must be between 0 (no limit) and 1000000, got %v", r.Rate)
		case r.Rate > 0 && r.Burst < 1:
			cp.errorf(path+".new_connections_per_ip.burst", "must be >= 1 with a rate, got %d", r.Burst)
		}
		l.rate, l.burst = r.Rate, float64(r.Burst)
	}
	return l
}
