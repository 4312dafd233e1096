package main

import (
	"crypto/tls"
	"sync/atomic"

	"sluice/balancer"
	"sluice/l4"
	"sluice/l7"
	"sluice/tlsutil"
)

// Runtime is one built config: the Compiled values it was built from, and
// the pools, routing tables and l7 servers the hot path reads. Nothing in it
// is re-parsed per connection. Close releases what Build started (the l7
// routes' HTTP servers) and what Start started (the pools' health checks).
type Runtime struct {
	*Compiled

	Listeners map[string]*listenerRuntime
	Pools     map[string]*balancer.Pool
	Warnings  []string // logged at start: e.g. self-signed certificates generated

	byAddr   map[string]*listenerRuntime // by listenerRuntime.key
	l7routes []*l7.Route
	onHealth atomic.Pointer[func(balancer.Event)]

	// Connections accepted under this config; a retired config closes (its
	// l7 servers) when the last one ends.
	gen    generation
	closed atomic.Bool
}

// listenAddrs lists the sockets rt listens on, in name order.
func (rt *Runtime) listenAddrs() []listenAddr {
	var out []listenAddr
	for _, name := range sortedKeys(rt.Listeners) {
		out = append(out, listenAddr{name: name, key: rt.Listeners[name].key, address: rt.Listeners[name].address})
	}
	return out
}

// acquire counts a new connection; false once retired.
func (rt *Runtime) acquire() bool { return rt.gen.acquire() }

// release ends a connection acquired before.
func (rt *Runtime) release() {
	if rt.gen.release() {
		rt.Close()
	}
}

// retire marks a config replaced: its health checks stop now, keep-alive
// ends on its HTTP connections (endKeepAlive), the rest when its last
// connection ends.
func (rt *Runtime) retire() {
	last := rt.gen.retire()
	for _, p := range rt.Pools {
		p.Close()
	}
	rt.endKeepAlive()
	if last {
		rt.Close()
	}
}

// endKeepAlive ends keep-alive on the l7 routes' HTTP connections (a
// reload, or shutdown): each one's next request comes on a new connection
// and the config of the moment. Tunnels and l4 sessions are not touched.
func (rt *Runtime) endKeepAlive() {
	for _, r := range rt.l7routes {
		r.Retire()
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
// Only the first call does anything.
func (rt *Runtime) Close() {
	if !rt.closed.CompareAndSwap(false, true) {
		return
	}
	for _, r := range rt.l7routes {
		r.Close()
	}
	for _, p := range rt.Pools {
		p.Close()
	}
}

// listenerRuntime is a listener as it serves: its checked spec (read only)
// and what Build and the server made from it.
type listenerRuntime struct {
	*listenerSpec
	limiter  *ipLimiter // set by server.attachLimiters; nil without limits
	table    routeTable
	certs    *tlsutil.CertStore
	redirect *l7.Route // tls = false with redirect_https: every request → https
	// rawAccept: connections are accepted raw (session.serveRaw): a TLS
	// listener without accept_proxy whose routes are all l4 on the epoll
	// relay, on Linux.
	rawAccept bool
	// mixedRaw: such a listener but for its l7 routes. It accepts raw
	// while recent connections went to l4 routes more than to l7 ones
	// (mix.raw): an l4 connection accepted with Go costs about 15 % more
	// CPU, an l7 one accepted raw about 3 % more (its descriptor made a
	// *net.TCPConn).
	mixedRaw bool
	mix      routeMix
}

// routeMix counts a mixed listener's recent connections by the mode of
// their route, halving both counts every mixWindow connections.
type routeMix struct{ l4, l7 atomic.Int64 }

const mixWindow = 1024

// raw reports whether the next connection is accepted raw: more of the
// recent ones went to l4 routes (none yet: accepted with Go, as before).
func (m *routeMix) raw() bool { return m.l4.Load() > m.l7.Load() }

// saw counts a connection dispatched to a route of mode.
func (m *routeMix) saw(mode string) {
	if mode == "l7" {
		m.l7.Add(1)
	} else {
		m.l4.Add(1)
	}
	if m.l4.Load()+m.l7.Load() >= mixWindow {
		// Racing halvings lose a count or two: the mix stays a mix.
		m.l4.Store(m.l4.Load() / 2)
		m.l7.Store(m.l7.Load() / 2)
	}
}

// route is one built [routes.NAME] table.
type route struct {
	name  string
	mode  string // "l4" or "l7"
	pool  *balancer.Pool
	relay l4.Options

	// mode "l7"
	l7        *l7.Route
	listener  string
	names     []string         // normalized sni entries ("*.example.com" for wildcards)
	cert      *tls.Certificate // served on TLS listeners: from cert/key, or self-signed
	locations []l7.Location
}
