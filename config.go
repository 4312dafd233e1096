package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"sluice/balancer"
	"sluice/l4"
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

	Log       LogConfig                  `toml:"log"`
	Listeners map[string]*ListenerConfig `toml:"listeners"`
	Routes    map[string]*RouteConfig    `toml:"routes"`
	Pools     map[string]*PoolConfig     `toml:"pools"`
}

type LogConfig struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

type ListenerConfig struct {
	Address       string `toml:"address"`
	DefaultRoute  string `toml:"default_route"`
	PlainRoute    string `toml:"plain_route"`
	HelloTimeout  string `toml:"hello_timeout"`
	MaxHelloBytes int    `toml:"max_hello_bytes"`
}

type RouteConfig struct {
	Listener          string   `toml:"listener"`
	SNI               []string `toml:"sni"`
	Mode              string   `toml:"mode"`
	Pool              string   `toml:"pool"`
	IdleTimeout       string   `toml:"idle_timeout"`
	HalfCloseTimeout  string   `toml:"half_close_timeout"`
	WriteStallTimeout string   `toml:"write_stall_timeout"`
}

type PoolConfig struct {
	Balance        string          `toml:"balance"`
	ProxyProtocol  string          `toml:"proxy_protocol"`
	ConnectTimeout string          `toml:"connect_timeout"`
	Backends       []BackendConfig `toml:"backends"`
}

type BackendConfig struct {
	Address string `toml:"address"`
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
	rt, err := cfg.Validate()
	if err != nil {
		return nil, nil, prefixErrors(path, err)
	}
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
// reads. Nothing in it is re-parsed per connection.
type Runtime struct {
	DrainTimeout   time.Duration
	MaxConnections int // 0: derived from RLIMIT_NOFILE at start
	LogLevel       string
	LogFormat      string
	Listeners      map[string]*listenerRuntime
	Pools          map[string]*balancer.Pool
}

type listenerRuntime struct {
	name          string
	address       string
	helloTimeout  time.Duration
	maxHelloBytes int
	table         routeTable
}

// route is one compiled [routes.NAME] table.
type route struct {
	name  string
	mode  string // "l4"
	pool  *balancer.Pool
	relay l4.Options
}

// Validate checks the whole config and compiles it. It reports all problems
// at once, each prefixed by its TOML key path.
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
	}
	rt.DrainTimeout = dur("drain_timeout", c.DrainTimeout, defaultDrainTimeout, true)
	if c.MaxConnections < 0 {
		bad("max_connections", "must be >= 0 (0 derives it from the open-file limit), got %d", c.MaxConnections)
	}
	rt.MaxConnections = c.MaxConnections

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

	// Pools.
	for _, name := range sortedKeys(c.Pools) {
		pc := c.Pools[name]
		path := "pools." + name
		if pc == nil {
			continue
		}
		switch pc.Balance {
		case "", "round_robin":
		default:
			bad(path+".balance", "unsupported balance %q (supported: round_robin)", pc.Balance)
		}
		pp, err := balancer.ParseProxyProtocol(pc.ProxyProtocol)
		if err != nil {
			bad(path+".proxy_protocol", "must be \"\", \"v1\" or \"v2\"; got %q", pc.ProxyProtocol)
		}
		bcfg := balancer.PoolConfig{
			Name:           name,
			ProxyProtocol:  pp,
			ConnectTimeout: dur(path+".connect_timeout", pc.ConnectTimeout, defaultConnectTimeout, false),
			MaxAttempts:    defaultConnectAttempts,
			ConnectBudget:  defaultConnectBudget,
		}
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
			bcfg.Backends = append(bcfg.Backends, balancer.BackendConfig{Address: b.Address})
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
			helloTimeout:  dur(path+".hello_timeout", lc.HelloTimeout, defaultHelloTimeout, false),
			maxHelloBytes: lc.MaxHelloBytes,
			table:         routeTable{exact: map[string]*route{}, wildcard: map[string]*route{}},
		}
		switch {
		case lc.MaxHelloBytes == 0:
			lr.maxHelloBytes = tlsutil.DefaultMaxHelloBytes
		case lc.MaxHelloBytes < 512 || lc.MaxHelloBytes > tlsutil.MaxHelloBytesLimit:
			bad(path+".max_hello_bytes", "must be between 512 and %d, got %d", tlsutil.MaxHelloBytesLimit, lc.MaxHelloBytes)
		}
		rt.Listeners[name] = lr
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
			bad(path+".mode", "mode \"l7\" is not available in this version yet (supported: l4)")
		default:
			bad(path+".mode", "must be \"l4\" or \"l7\"; got %q", rc.Mode)
		}
		if rc.Pool == "" {
			bad(path+".pool", "a route needs a pool")
		} else if _, ok := c.Pools[rc.Pool]; !ok {
			bad(path+".pool", "unknown pool %q", rc.Pool)
		} else {
			r.pool = rt.Pools[rc.Pool] // nil if the pool itself is invalid; reported there
		}
		lr, ok := rt.Listeners[rc.Listener]
		if rc.Listener == "" {
			bad(path+".listener", "a route needs a listener")
		} else if _, known := c.Listeners[rc.Listener]; !known {
			bad(path+".listener", "unknown listener %q", rc.Listener)
		}
		routes[name] = r
		for i, raw := range rc.SNI {
			spath := fmt.Sprintf("%s.sni[%d]", path, i)
			key, wildcard, err := compileSNI(raw)
			if err != nil {
				bad(spath, "%v", err)
				continue
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

	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rt, nil
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
