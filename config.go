package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"sluice/balancer"
	"sluice/l4"
	"sluice/l7"
)

// Defaults. The README's configuration reference lists each one; keep them
// in step. Where a library package has the default, it is the one constant.
const (
	defaultDrainTimeout      = 60 * time.Second
	defaultHelloTimeout      = 5 * time.Second
	defaultIdleTimeout       = l4.DefaultIdleTimeout
	defaultHalfCloseTimeout  = l4.DefaultHalfCloseTimeout
	defaultWriteStallTimeout = l4.DefaultWriteStallTimeout
	defaultConnectTimeout    = balancer.DefaultConnectTimeout
	defaultConnectBudget     = balancer.DefaultConnectBudget
	defaultConnectAttempts   = balancer.DefaultMaxAttempts
	defaultHandshakeTimeout  = l7.DefaultHandshakeTimeout
	defaultAdminListen       = "127.0.0.1:9090"
	defaultHeaderTimeout     = l7.DefaultHeaderTimeout
	defaultBodyTimeout       = l7.DefaultBodyTimeout
	defaultResolveInterval   = balancer.DefaultResolveInterval

	// fdsPerSession is what one relayed connection may hold: its two sockets,
	// plus a splice pipe pair while data is in flight (amortised: idle
	// sessions hold none). Used to derive max_connections from RLIMIT_NOFILE.
	fdsPerSession = 4
	fdReserve     = 256
)

// Config is the TOML file as written. Durations are strings ("5s") and are
// parsed by Compile, which reports every problem at once.
type Config struct {
	DrainTimeout   string `toml:"drain_timeout"`
	MaxConnections int    `toml:"max_connections"`
	Watch          bool   `toml:"watch"`

	dir string // directory of the config file: relative paths resolve against it

	Log       LogConfig                  `toml:"log"`
	Admin     AdminConfig                `toml:"admin"`
	Resolver  ResolverConfig             `toml:"resolver"`
	Tuning    TuningConfig               `toml:"tuning"`
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

// ResolverConfig is [resolver]: the DNS servers pools with discover ask.
type ResolverConfig struct {
	Servers []string `toml:"servers"` // "ip:port"; none: the system's (/etc/resolv.conf)
}

// TuningConfig picks implementations for A/B measurement; the defaults are
// the tested ones.
type TuningConfig struct {
	Relay string `toml:"relay"` // "epoll" (default) or "goroutine": l4.Engine
}

type ListenerConfig struct {
	Address             string      `toml:"address"`
	TLS                 *bool       `toml:"tls"`
	DefaultRoute        string      `toml:"default_route"`
	PlainRoute          string      `toml:"plain_route"`
	HelloTimeout        string      `toml:"hello_timeout"`
	MaxHelloBytes       int         `toml:"max_hello_bytes"`
	Cert                string      `toml:"cert"`
	Key                 string      `toml:"key"`
	TLSHandshakeTimeout string      `toml:"tls_handshake_timeout"`
	HeaderTimeout       string      `toml:"header_timeout"`
	AcceptProxy         bool        `toml:"accept_proxy"`
	TrustedCIDRs        []string    `toml:"trusted_cidrs"`
	MaxConnectionsPerIP *int        `toml:"max_connections_per_ip"`
	NewConnectionsPerIP *RateConfig `toml:"new_connections_per_ip"`
	BodyTimeout         string      `toml:"body_timeout"`
	RequestBufferBytes  int64       `toml:"request_buffer_bytes"`
	MaxBodyBytes        int64       `toml:"max_body_bytes"`
	RedirectHTTPS       bool        `toml:"redirect_https"`
	RedirectHTTPSPort   int         `toml:"redirect_https_port"`
}

// RateConfig is a token bucket: rate new connections a second, up to burst
// at once.
type RateConfig struct {
	Rate  float64 `toml:"rate"`
	Burst int     `toml:"burst"`
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
	HTTP2             *bool    `toml:"http2"`

	Locations []LocationConfig `toml:"locations"`
}

type LocationConfig struct {
	Path     string            `toml:"path"`
	Pool     string            `toml:"pool"`
	Root     string            `toml:"root"`
	Redirect string            `toml:"redirect"`
	Headers  map[string]string `toml:"headers"`
	Gzip     *bool             `toml:"gzip"`
	Fallback string            `toml:"fallback"`
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
	StickyCookie      string          `toml:"sticky_cookie"`
	Discover          string          `toml:"discover"`
	ResolveInterval   string          `toml:"resolve_interval"`
	Health            HealthConfig    `toml:"health"`
	Agent             *AgentConfig    `toml:"agent"`
	Backends          []BackendConfig `toml:"backends"`

	// SecondChanceStatus: a joined backend's "unknown room" answer to an
	// upgrade sends it to the key's previous owner (README "Drain, keys
	// and joins"); 0: off.
	SecondChanceStatus int    `toml:"second_chance_status"`
	SecondChanceWindow string `toml:"second_chance_window"` // default "30m"
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

// AgentConfig is a pool's agent key: HAProxy's agent-check, on each
// backend's host (README "Agent checks").
type AgentConfig struct {
	Port     int    `toml:"port"`     // required
	Interval string `toml:"interval"` // default "2s"
	Timeout  string `toml:"timeout"`  // default "1s", or the interval when shorter
}

type BackendConfig struct {
	ID             string `toml:"id"`
	Address        string `toml:"address"`
	Weight         *int   `toml:"weight"`
	MaxConnections int    `toml:"max_connections"`
	Backup         bool   `toml:"backup"`
}

// LoadConfig reads the file at path and runs both phases: CompileFile (the
// pure one), then Build. The returned error lists every problem, one per
// line, each prefixed by the file name and the TOML key path (or line and
// column for syntax errors).
func LoadConfig(path string) (*Config, *Runtime, error) {
	cfg, cc, err := CompileFile(path)
	if err != nil {
		return nil, nil, err
	}
	rt, err := cc.Build()
	if err != nil {
		return nil, nil, prefixErrors(path, err)
	}
	return cfg, rt, nil
}

// CompileFile reads, strictly decodes and compiles the file at path: the
// pure phase, which -check and a reload's validation run. It starts nothing
// and binds nothing. Errors are prefixed like LoadConfig's.
func CompileFile(path string) (*Config, *Compiled, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := DecodeConfig(data)
	if err != nil {
		return nil, nil, prefixErrors(path, err)
	}
	cfg.dir = filepath.Dir(path)
	cc, err := cfg.Compile()
	if err != nil {
		return nil, nil, prefixErrors(path, err)
	}
	sum := sha256.Sum256(data)
	cc.Version = hex.EncodeToString(sum[:6])
	return cfg, cc, nil
}

// Validate runs both phases on a decoded config: Compile, then Build. The
// caller owns the returned Runtime (Close it).
func (c *Config) Validate() (*Runtime, error) {
	cc, err := c.Compile()
	if err != nil {
		return nil, err
	}
	return cc.Build()
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

// resolve makes a relative file path relative to the config file.
func (c *Config) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
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
