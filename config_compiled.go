package main

import (
	"crypto/tls"
	"net/netip"
	"time"

	"sluice/balancer"
	"sluice/l4"
	"sluice/tlsutil"
)

// Compiled is a checked config: the output of the pure phase
// (Config.Compile) and the input of the build phase (Compiled.Build).
// Durations are parsed, names resolved, the routing tables laid out and the
// certificate files loaded; nothing is started or bound. It is not modified
// after Compile (CompileFile: after it sets Version) returns: Build only
// reads it, so one Compiled may be built more than once.
type Compiled struct {
	DrainTimeout   time.Duration
	MaxConnections int  // 0: derived from RLIMIT_NOFILE at start
	Watch          bool // reload when the file changes
	LogLevel       string
	LogFormat      string
	AdminListen    string // "" disables the admin server
	AdminToken     string // bearer token for state-changing admin calls; "" = none

	Version string // of the file: the first 12 hex digits of its SHA-256 ("" from Config.Compile)

	listenerSpecs map[string]*listenerSpec
	routeSpecs    map[string]*routeSpec
	poolSpecs     map[string]balancer.PoolConfig // OnChange is set by Build
}

// listenerSpec is one checked [listeners.NAME] table.
type listenerSpec struct {
	name             string
	address          string
	key              string // the bound socket's: the address, or address#name for port 0
	tls              bool   // false: cleartext HTTP, routed by the first request's Host
	redirectPort     int    // redirect_https_port; 0: none (443)
	helloTimeout     time.Duration
	handshakeTimeout time.Duration
	headerTimeout    time.Duration
	body             bodyLimits
	proxyIn          proxyIn
	perIP            ipLimits
	maxHelloBytes    int
	redirectHTTPS    bool

	// The routing table by route name: Build turns it into a routeTable.
	names        tlsutil.HostSet[string] // server name → route
	defaultRoute string                  // "" if none
	plainRoute   string                  // "" if none

	cert *tls.Certificate // the listener's own cert/key, served without SNI; nil if unset
}

// proxyIn is a listener's PROXY protocol in: with accept, every connection
// must come from a trusted prefix and start with a PROXY header.
type proxyIn struct {
	accept  bool
	trusted []netip.Prefix
}

// trusts reports whether a is in one of the trusted prefixes.
func (p *proxyIn) trusts(a netip.Addr) bool {
	a = a.Unmap()
	for _, pfx := range p.trusted {
		if pfx.Contains(a) {
			return true
		}
	}
	return false
}

// bodyLimits are a listener's request body keys (l7).
type bodyLimits struct {
	timeout       time.Duration
	buffer, limit int64
}

// routeSpec is one checked [routes.NAME] table.
type routeSpec struct {
	name     string
	mode     string // "l4" or "l7"
	listener string
	pool     string // "" if none
	relay    l4.Options
	names    []string // normalized sni entries ("*.example.com" for wildcards)

	// mode "l7"
	cleartext  bool             // HTTP without TLS: on a tls = false listener, or its plain_route
	cert       *tls.Certificate // from cert/key; nil: Build generates a self-signed one (TLS only)
	selfSigned []string         // the names of that self-signed certificate
	locations  []locationSpec
	http2      bool // offer h2 (TLS only); default true
}

// locationSpec is one checked [[routes.NAME.locations]] entry: exactly one
// of pool, root (resolved against the config's directory) and redirect.
type locationSpec struct {
	path     string
	pool     string
	root     string
	redirect string
	headers  map[string]string // response headers, checked; nil if none
	gzip     bool              // gzip, defaulted: on for root, off for pool
	fallback string            // under root; "" if none
}
