package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/BurntSushi/toml"

	"sluice/balancer"
	"sluice/l4"
	"sluice/l7"
	"sluice/tlsutil"
)

// Defaults. The README's configuration reference lists each one; keep them in step.
const (
	defaultDrainTimeout      = 60 * time.Second
	defaultHelloTimeout      = 5 * time.Second
	defaultIdleTimeout       = 10 * time.Minute
	defaultHalfCloseTimeout  = 30 * time.Second
	defaultWriteStallTimeout = 30 * time.Second
	defaultConnectTimeout    = 3 * time.Second
	defaultConnectBudget     = 6 * time.Second
	defaultConnectAttempts   = 3
	defaultHandshakeTimeout  = 10 * time.Second
	defaultAdminListen       = "127.0.0.1:9090"
	defaultHeaderTimeout     = 10 * time.Second

	// fdsPerSession is what one relayed connection may hold: its two sockets,
	// plus a splice pipe pair while data is in flight (amortised: idle
	// sessions hold none). Used to derive max_connections from RLIMIT_NOFILE.
	fdsPerSession = 4
	fdReserve     = 256
)

// Config is the TOML file as written. Durations are strings ("5s") and are
// parsed by Validate, which reports every problem at once.
type Config struct {
	DrainTimeout   string `toml:"drain_timeout"`
	MaxConnections int    `toml:"max_connections"`
	Watch          bool   `toml:"watch"`

	dir string // directory of the config file: relative paths resolve against it

	Log       LogConfig                  `toml:"log"`
	Admin     AdminConfig                `toml:"admin"`
	Listeners map[string]*ListenerConfig `toml:"listeners"`
	Routes    map[string]*RouteConfig    `toml:"routes"`
	Pools     map[string]*PoolConfig     `toml:"pools"`
}

type LogConfig struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

type AdminConfig struct {
	Listen string `toml:"listen"`
	Token  string `toml:"token"`
}

type ListenerConfig struct {
	Address             string `toml:"address"`
	TLS                 *bool  `toml:"tls"`
	DefaultRoute        string `toml:"default_route"`
	PlainRoute          string `toml:"plain_route"`
	HelloTimeout        string `toml:"hello_timeout"`
	MaxHelloBytes       int    `toml:"max_hello_bytes"`
	Cert                string `toml:"cert"`
	Key                 string `toml:"key"`
	TLSHandshakeTimeout string `toml:"tls_handshake_timeout"`
	HeaderTimeout       string `toml:"header_timeout"`
	RedirectHTTPS       bool   `toml:"redirect_https"`
}

type RouteConfig struct {
	Listener          string   `toml:"listener"`
	SNI               []string `toml:"sni"`
	Mode              string   `toml:"mode"`
	Pool              string   `toml:"pool"`
	Cert              string   `toml:"cert"`
	Key               string   `toml:"key"`
	IdleTimeout       string   `toml:"idle_timeout"`
	HalfCloseTimeout  string   `toml:"half_close_timeout"`
	WriteStallTimeout string   `toml:"write_stall_timeout"`

	Locations []LocationConfig `toml:"locations"`
}

type LocationConfig struct {
	Path     string `toml:"path"`
	Pool     string `toml:"pool"`
	Root     string `toml:"root"`
	Redirect string `toml:"redirect"`
}

type PoolConfig struct {
	Balance           string          `toml:"balance"`
	HashKey           string          `toml:"hash_key"`
	HashBalanceFactor float64         `toml:"hash_balance_factor"`
	ProxyProtocol     string          `toml:"proxy_protocol"`
	ConnectTimeout    string          `toml:"connect_timeout"`
	MaxFails          int             `toml:"max_fails"`
	FailTimeout       string          `toml:"fail_timeout"`
	SlowStart         string          `toml:"slow_start"`
	OnAllUnhealthy    string          `toml:"on_all_unhealthy"`
	CloseOnDown       bool            `toml:"close_on_down"`
	Health            HealthConfig    `toml:"health"`
	Backends          []BackendConfig `toml:"backends"`
}

type HealthConfig struct {
	Check    string `toml:"check"`
	Interval string `toml:"interval"`
	Timeout  string `toml:"timeout"`
	Rise     int    `toml:"rise"`
	Fall     int    `toml:"fall"`
	Path     string `toml:"path"`
	Host     string `toml:"host"`
	SNI      string `toml:"sni"`
	TLS      bool   `toml:"tls"`
	Status   string `toml:"status"`
}

type BackendConfig struct {
	Address        string `toml:"address"`
	Weight         *int   `toml:"weight"`
	MaxConnections int    `toml:"max_connections"`
	Backup         bool   `toml:"backup"`
}

// LoadConfig reads, strictly decodes and validates the file at path. The
// returned error lists every problem, one per line, each prefixed by the
// file name and the TOML key path (or line and column for syntax errors).
func LoadConfig(path string) (*Config, *Runtime, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := DecodeConfig(data)
	if err != nil {
		return nil, nil, prefixErrors(path, err)
	}
	cfg.dir = filepath.Dir(path)
	rt, err := cfg.Validate()
	if err != nil {
		return nil, nil, prefixErrors(path, err)
	}
	sum := sha256.Sum256(data)
	rt.Version = hex.EncodeToString(sum[:6])
	return cfg, rt, nil
}

// DecodeConfig decodes TOML strictly: a key sluice does not know is an error
// naming its path, so a typo never silently falls back to a default.
func DecodeConfig(data []byte) (*Config, error) {
	var cfg Config
	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%d:%d: %s", pe.Position.Line, pe.Position.Col, pe.Message)
		}
		return nil, err
	}
	var errs []error
	for _, k := range md.Undecoded() {
		errs = append(errs, fmt.Errorf("%s: unknown key", k.String()))
	}
	return &cfg, errors.Join(errs...)
}

// prefixErrors puts the file name in front of every joined error, so each
// problem prints as one self-contained line.
func prefixErrors(path string, err error) error {
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	} else {
		list = []error{err}
	}
	out := make([]error, len(list))
	for i, e := range list {
		if startsWithDigit(e.Error()) { // "line:col: message" from the TOML parser
			out[i] = fmt.Errorf("%s:%w", path, e)
		} else {
			out[i] = fmt.Errorf("%s: %w", path, e)
		}
	}
	return errors.Join(out...)
}

func startsWithDigit(s string) bool { return s != "" && s[0] >= '0' && s[0] <= '9' }

// Runtime is the validated, compiled form of a Config: what the hot path
// reads. Nothing in it is re-parsed per connection. Close releases what it
// started (the l7 routes' HTTP servers).
type Runtime struct {
	DrainTimeout   time.Duration
	MaxConnections int  // 0: derived from RLIMIT_NOFILE at start
	Watch          bool // reload when the file changes
	LogLevel       string
	LogFormat      string
	AdminListen    string // "" disables the admin server
	AdminToken     string // bearer token for state-changing admin calls; "" = none
	Listeners      map[string]*listenerRuntime
	Pools          map[string]*balancer.Pool
	Warnings       []string // logged at start: e.g. self-signed certificates generated

	Version string // of the file: the first 12 hex digits of its SHA-256

	byAddr   map[string]*listenerRuntime // by listenerRuntime.key
	l7routes []*l7.Route
	onHealth atomic.Pointer[func(balancer.Event)]

	// Connections accepted under this config; a retired config closes (its
	// l7 servers) when the last one ends.
	mu      sync.Mutex
	conns   int
	retired bool
	closed  bool
}

// acquire counts a new connection; false once retired.
func (rt *Runtime) acquire() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.retired {
		return false
	}
	rt.conns++
	return true
}

// release ends a connection acquired before.
func (rt *Runtime) release() {
	rt.mu.Lock()
	rt.conns--
	last := rt.retired && rt.conns == 0
	rt.mu.Unlock()
	if last {
		rt.Close()
	}
}

// retire marks a config replaced: its health checks stop now, the rest
// when its last connection ends.
func (rt *Runtime) retire() {
	rt.mu.Lock()
	rt.retired = true
	last := rt.conns == 0
	rt.mu.Unlock()
	for _, p := range rt.Pools {
		p.Close()
	}
	if last {
		rt.Close()
	}
}

// OnHealthChange sets the receiver of backend health transitions.
func (rt *Runtime) OnHealthChange(f func(balancer.Event)) { rt.onHealth.Store(&f) }

func (rt *Runtime) healthChanged(e balancer.Event) {
	if f := rt.onHealth.Load(); f != nil {
		(*f)(e)
	}
}

// Start starts the pools' health checks.
func (rt *Runtime) Start() {
	for _, p := range rt.Pools {
		p.Start()
	}
}

// Close stops the l7 routes' internal servers and the pools' health checks.
func (rt *Runtime) Close() {
	rt.mu.Lock()
	closed := rt.closed
	rt.closed = true
	rt.mu.Unlock()
	if closed {
		return
	}
	for _, r := range rt.l7routes {
		r.Close()
	}
	for _, p := range rt.Pools {
		p.Close()
	}
}

type listenerRuntime struct {
	name             string
	address          string
	key              string // the bound socket's: the address, or address#name for port 0
	tls              bool   // false: cleartext HTTP, routed by the first request's Host
	helloTimeout     time.Duration
	handshakeTimeout time.Duration
	headerTimeout    time.Duration
	maxHelloBytes    int
	table            routeTable
	certs            *tlsutil.CertStore
	redirect         *l7.Route // tls = false with redirect_https: every request → https
}

// route is one compiled [routes.NAME] table.
type route struct {
	name  string
	mode  string // "l4" or "l7"
	pool  *balancer.Pool
	relay l4.Options

	// mode "l7"
	l7        *l7.Route
	listener  string
	names     []string         // normalized sni entries ("*.example.com" for wildcards)
	cert      *tls.Certificate // from cert/key; nil: self-signed at start
	locations []l7.Location
}

// Validate checks the whole config and compiles it. It reports all problems
// at once, each prefixed by its TOML key path. It also loads (or, for l7
// routes without one, generates) every certificate.
func (c *Config) Validate() (*Runtime, error) {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	dur := func(path, s string, def time.Duration, allowZero bool) time.Duration {
		if s == "" {
			return def
		}
		d, err := time.ParseDuration(s)
		switch {
		case err != nil:
			bad(path, "invalid duration %q (use e.g. \"5s\", \"10m\")", s)
		case d < 0 || (d == 0 && !allowZero):
			bad(path, "duration must be positive, got %q", s)
		}
		return d
	}

	rt := &Runtime{
		Listeners: map[string]*listenerRuntime{},
		Pools:     map[string]*balancer.Pool{},
		byAddr:    map[string]*listenerRuntime{},
	}
	rt.DrainTimeout = dur("drain_timeout", c.DrainTimeout, defaultDrainTimeout, true)
	if c.MaxConnections < 0 {
		bad("max_connections", "must be >= 0 (0 derives it from the open-file limit), got %d", c.MaxConnections)
	}
	rt.MaxConnections = c.MaxConnections
	rt.Watch = c.Watch

	rt.LogLevel = c.Log.Level
	if rt.LogLevel == "" {
		rt.LogLevel = "info"
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, rt.LogLevel) {
		bad("log.level", "must be one of debug, info, warn, error; got %q", c.Log.Level)
	}
	rt.LogFormat = c.Log.Format
	if rt.LogFormat == "" {
		rt.LogFormat = "json"
	}
	if rt.LogFormat != "json" && rt.LogFormat != "console" {
		bad("log.format", "must be json or console; got %q", c.Log.Format)
	}

	rt.AdminListen, rt.AdminToken = c.Admin.Listen, c.Admin.Token
	if rt.AdminListen == "" {
		rt.AdminListen = defaultAdminListen
	}
	if rt.AdminListen != "off" {
		if err := checkHostPort(rt.AdminListen, true); err != nil {
			bad("admin.listen", "%v (or \"off\")", err)
		} else if host, _, _ := net.SplitHostPort(rt.AdminListen); !isLoopback(host) && rt.AdminToken == "" {
			bad("admin.token", "the admin server listens on %q, beyond loopback: set a token", rt.AdminListen)
		}
	} else {
		rt.AdminListen = ""
	}

	// Pools.
	for _, name := range sortedKeys(c.Pools) {
		pc := c.Pools[name]
		path := "pools." + name
		if pc == nil {
			continue
		}
		pp, err := balancer.ParseProxyProtocol(pc.ProxyProtocol)
		if err != nil {
			bad(path+".proxy_protocol", "must be \"\", \"v1\" or \"v2\"; got %q", pc.ProxyProtocol)
		}
		bcfg := balancer.PoolConfig{
			Name:              name,
			ProxyProtocol:     pp,
			ConnectTimeout:    dur(path+".connect_timeout", pc.ConnectTimeout, defaultConnectTimeout, false),
			MaxAttempts:       defaultConnectAttempts,
			ConnectBudget:     defaultConnectBudget,
			HashBalanceFactor: pc.HashBalanceFactor,
			MaxFails:          pc.MaxFails,
			FailTimeout:       dur(path+".fail_timeout", pc.FailTimeout, balancer.DefaultFailTimeout, false),
			SlowStart:         dur(path+".slow_start", pc.SlowStart, 0, true),
			CloseOnDown:       pc.CloseOnDown,
			MaintCloseAfter:   rt.DrainTimeout,
			OnChange:          rt.healthChanged,
		}
		c.compilePool(&bcfg, pc, path, bad, dur)
		if len(pc.Backends) == 0 {
			bad(path+".backends", "pool has no backends")
		}
		seen := map[string]bool{}
		for i, b := range pc.Backends {
			bpath := fmt.Sprintf("%s.backends[%d].address", path, i)
			if err := checkHostPort(b.Address, false); err != nil {
				bad(bpath, "%v", err)
				continue
			}
			if seen[b.Address] {
				bad(bpath, "duplicate backend %q", b.Address)
				continue
			}
			seen[b.Address] = true
			bc := balancer.BackendConfig{Address: b.Address, Weight: 1, MaxConnections: b.MaxConnections, Backup: b.Backup}
			if b.Weight != nil {
				bc.Weight = *b.Weight
				if bc.Weight < 1 || bc.Weight > 1000 {
					bad(fmt.Sprintf("%s.backends[%d].weight", path, i), "must be between 1 and 1000, got %d", bc.Weight)
				}
			}
			if b.MaxConnections < 0 {
				bad(fmt.Sprintf("%s.backends[%d].max_connections", path, i), "must be >= 0 (0: unlimited), got %d", b.MaxConnections)
			}
			bcfg.Backends = append(bcfg.Backends, bc)
		}
		if len(bcfg.Backends) == len(pc.Backends) && len(pc.Backends) > 0 {
			p, err := balancer.NewPool(bcfg)
			if err != nil {
				bad(path, "%v", err)
				continue
			}
			rt.Pools[name] = p
		}
	}

	// Certificates are loaded once per (cert, key) pair: routes may share one.
	loaded := map[[2]string]*tls.Certificate{}
	loadCert := func(path, certFile, keyFile string) *tls.Certificate {
		if (certFile == "") != (keyFile == "") {
			bad(path+".cert", "cert and key must be set together")
			return nil
		}
		if certFile == "" {
			return nil
		}
		k := [2]string{c.resolve(certFile), c.resolve(keyFile)}
		if cert, ok := loaded[k]; ok {
			return cert
		}
		cert, err := tls.LoadX509KeyPair(k[0], k[1])
		if err != nil {
			bad(path+".cert", "%v", err)
			return nil
		}
		loaded[k] = &cert
		return &cert
	}

	// Listeners.
	if len(c.Listeners) == 0 {
		bad("listeners", "at least one listener is required")
	}
	addrs := map[string]string{}
	for _, name := range sortedKeys(c.Listeners) {
		lc := c.Listeners[name]
		path := "listeners." + name
		if lc == nil {
			continue
		}
		if err := checkHostPort(lc.Address, true); err != nil {
			bad(path+".address", "%v", err)
		} else if other, dup := addrs[lc.Address]; dup && !strings.HasSuffix(lc.Address, ":0") {
			bad(path+".address", "address %q is also used by listeners.%s", lc.Address, other)
		}
		addrs[lc.Address] = name
		lr := &listenerRuntime{
			name:          name,
			address:       lc.Address,
			tls:           lc.TLS == nil || *lc.TLS,
			helloTimeout:  dur(path+".hello_timeout", lc.HelloTimeout, defaultHelloTimeout, false),
			headerTimeout: dur(path+".header_timeout", lc.HeaderTimeout, defaultHeaderTimeout, false),
			maxHelloBytes: lc.MaxHelloBytes,
			table:         routeTable{exact: map[string]*route{}, wildcard: map[string]*route{}},
			certs:         tlsutil.NewCertStore(tlsutil.NewCerts()),
		}
		lr.handshakeTimeout = dur(path+".tls_handshake_timeout", lc.TLSHandshakeTimeout, defaultHandshakeTimeout, false)
		switch {
		case lc.MaxHelloBytes == 0:
			lr.maxHelloBytes = tlsutil.DefaultMaxHelloBytes
		case lc.MaxHelloBytes < 512 || lc.MaxHelloBytes > tlsutil.MaxHelloBytesLimit:
			bad(path+".max_hello_bytes", "must be between 512 and %d, got %d", tlsutil.MaxHelloBytesLimit, lc.MaxHelloBytes)
		}
		if lr.tls {
			if lc.RedirectHTTPS {
				bad(path+".redirect_https", "only for cleartext listeners (tls = false)")
			}
		} else {
			if lc.PlainRoute != "" {
				bad(path+".plain_route", "a cleartext listener (tls = false) routes by Host; plain_route is for TLS listeners")
			}
			if lc.Cert != "" || lc.Key != "" {
				bad(path+".cert", "a cleartext listener (tls = false) has no certificate")
			}
		}
		// A reload keeps the socket of a listener whose address is
		// unchanged; port 0 (tests) means "any port", so it is kept by name.
		lr.key = lc.Address
		if strings.HasSuffix(lc.Address, ":0") {
			lr.key = lc.Address + "#" + name
		}
		rt.Listeners[name] = lr
		rt.byAddr[lr.key] = lr
	}

	// Routes.
	routes := map[string]*route{}
	for _, name := range sortedKeys(c.Routes) {
		rc := c.Routes[name]
		path := "routes." + name
		if rc == nil {
			continue
		}
		r := &route{
			name: name,
			mode: rc.Mode,
			relay: l4.Options{
				IdleTimeout:       dur(path+".idle_timeout", rc.IdleTimeout, defaultIdleTimeout, false),
				HalfCloseTimeout:  dur(path+".half_close_timeout", rc.HalfCloseTimeout, defaultHalfCloseTimeout, false),
				WriteStallTimeout: dur(path+".write_stall_timeout", rc.WriteStallTimeout, defaultWriteStallTimeout, false),
			},
		}
		switch rc.Mode {
		case "", "l4":
			r.mode = "l4"
		case "l7":
		default:
			bad(path+".mode", "must be \"l4\" or \"l7\"; got %q", rc.Mode)
		}
		needPool := r.mode == "l4" || len(rc.Locations) == 0
		switch {
		case rc.Pool == "" && needPool:
			bad(path+".pool", "a route needs a pool")
		case rc.Pool == "":
		case c.Pools[rc.Pool] == nil:
			bad(path+".pool", "unknown pool %q", rc.Pool)
		default:
			r.pool = rt.Pools[rc.Pool] // nil if the pool itself is invalid; reported there
		}
		if r.mode == "l4" {
			if rc.Cert != "" || rc.Key != "" {
				bad(path+".cert", "an l4 route passes TLS through: the backend holds the certificate (use mode = \"l7\" to terminate TLS here)")
			}
			if len(rc.Locations) > 0 {
				bad(path+".locations", "locations need mode = \"l7\"")
			}
		}
		lr, ok := rt.Listeners[rc.Listener]
		if rc.Listener == "" {
			bad(path+".listener", "a route needs a listener")
		} else if !ok && c.Listeners[rc.Listener] == nil {
			bad(path+".listener", "unknown listener %q", rc.Listener)
		}
		if ok && !lr.tls && r.mode != "l7" {
			bad(path+".mode", "listener %q is cleartext HTTP (tls = false): its routes must be mode = \"l7\"", rc.Listener)
		}
		routes[name] = r
		var names []string
		for i, raw := range rc.SNI {
			spath := fmt.Sprintf("%s.sni[%d]", path, i)
			key, wildcard, err := compileSNI(raw)
			if err != nil {
				bad(spath, "%v", err)
				continue
			}
			if wildcard {
				names = append(names, "*."+key)
			} else {
				names = append(names, key)
			}
			if !ok {
				continue
			}
			m := lr.table.exact
			if wildcard {
				m = lr.table.wildcard
			}
			if other, dup := m[key]; dup {
				bad(spath, "%q is already routed by routes.%s on listener %q", raw, other.name, rc.Listener)
				continue
			}
			m[key] = r
		}
		if r.mode == "l7" {
			r.listener = rc.Listener
			r.names = names
			r.cert = loadCert(path, rc.Cert, rc.Key)
			r.locations = c.compileLocations(rt, rc, path, bad)
		}
	}

	// Default and plain routes, and routes nothing can reach.
	reachable := map[string]bool{}
	for _, name := range sortedKeys(c.Listeners) {
		lc, lr := c.Listeners[name], rt.Listeners[name]
		if lc == nil {
			continue
		}
		pick := func(key, routeName string) *route {
			if routeName == "" {
				return nil
			}
			r, ok := routes[routeName]
			if !ok {
				bad("listeners."+name+"."+key, "unknown route %q", routeName)
				return nil
			}
			if rl := c.Routes[routeName].Listener; rl != name {
				bad("listeners."+name+"."+key, "route %q belongs to listener %q", routeName, rl)
			}
			reachable[routeName] = true
			return r
		}
		lr.table.def = pick("default_route", lc.DefaultRoute)
		lr.table.plain = pick("plain_route", lc.PlainRoute)
	}
	for _, name := range sortedKeys(c.Routes) {
		if rc := c.Routes[name]; rc != nil && len(rc.SNI) == 0 && !reachable[name] {
			bad("routes."+name+".sni", "route has no sni and is not the default_route or plain_route of its listener, so no connection can reach it")
		}
	}

	if len(errs) == 0 {
		c.buildL7(rt, routes, bad, loadCert)
	}

	if err := errors.Join(errs...); err != nil {
		rt.Close()
		return nil, err
	}
	return rt, nil
}

// resolve makes a relative file path relative to the config file.
func (c *Config) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

// compileSNI validates one configured server name and returns the table key:
// the normalized name for an exact entry, the parent domain for a wildcard.
func compileSNI(raw string) (key string, wildcard bool, err error) {
	name := raw
	if rest, ok := strings.CutPrefix(raw, "*."); ok {
		wildcard, name = true, rest
	}
	if strings.Contains(name, "*") {
		return "", false, fmt.Errorf("%q: a wildcard may only be a single leading label (\"*.example.com\")", raw)
	}
	norm, ok := tlsutil.NormalizeSNI(name)
	if !ok {
		return "", false, fmt.Errorf("%q is not a valid host name (use ASCII/A-labels, e.g. xn--..., no IP addresses, no trailing dot)", raw)
	}
	return norm, wildcard, nil
}

// checkHostPort validates "host:port". Listeners may use port 0 (tests).
func checkHostPort(addr string, listen bool) error {
	if addr == "" {
		return errors.New("address is required")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid address %q: %v", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 || (p == 0 && !listen) {
		return fmt.Errorf("invalid port in %q", addr)
	}
	if host == "" && !listen {
		return fmt.Errorf("missing host in %q", addr)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("invalid host in %q", addr)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
