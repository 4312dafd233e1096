package main

import (
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"time"

	"sluice/balancer"
	"sluice/l4"
	"sluice/l7"
	"sluice/tlsutil"
)

// Build makes a Runtime from a compiled config: the build phase. It creates
// the pools (their health checks wait for Start), the routing tables, the
// self-signed certificates of l7 routes without one, and the l7 routes,
// whose HTTP servers it starts. It binds nothing: the server binds the
// listeners. The caller owns the Runtime (Close it). An error (a
// certificate that cannot be generated, say) has a TOML key path like
// Compile's, and nothing is left running.
func (cc *Compiled) Build() (*Runtime, error) {
	rt := &Runtime{
		Compiled:  cc,
		Listeners: map[string]*listenerRuntime{},
		Pools:     map[string]*balancer.Pool{},
		byAddr:    map[string]*listenerRuntime{},
	}
	var ck checker
	rt.buildPools(&ck)
	routes := rt.buildRoutes()
	rt.buildListeners(routes)
	rt.buildL7(routes, &ck)
	if err := ck.err(); err != nil {
		rt.Close()
		return nil, err
	}
	return rt, nil
}

// buildPools creates the pools. Their health checks start with Start.
func (rt *Runtime) buildPools(ck *checker) {
	for _, name := range sortedKeys(rt.poolSpecs) {
		spec := rt.poolSpecs[name]
		spec.OnChange = rt.healthChanged
		p, err := balancer.NewPool(spec)
		if err != nil {
			ck.errorf("pools."+name, "%v", err)
			continue
		}
		rt.Pools[name] = p
	}
}

// buildRoutes makes the routes, their pools resolved; l7 routes get their
// servers from buildL7.
func (rt *Runtime) buildRoutes() map[string]*route {
	routes := make(map[string]*route, len(rt.routeSpecs))
	for name, rs := range rt.routeSpecs {
		r := &route{name: name, mode: rs.mode, pool: rt.Pools[rs.pool], relay: rs.relay}
		if rs.mode == "l7" {
			r.listener, r.names, r.cert = rs.listener, rs.names, rs.cert
			for _, ls := range rs.locations {
				r.locations = append(r.locations, l7.Location{Path: ls.path, Pool: rt.Pools[ls.pool], Root: ls.root, Redirect: ls.redirect,
					Headers: ls.headers, Gzip: ls.gzip, Fallback: ls.fallback})
			}
		}
		routes[name] = r
	}
	return routes
}

// buildListeners makes the listeners and their routing tables.
func (rt *Runtime) buildListeners(routes map[string]*route) {
	for name, ls := range rt.listenerSpecs {
		lr := &listenerRuntime{
			listenerSpec: ls,
			table: routeTable{
				def:   routes[ls.defaultRoute],
				plain: routes[ls.plainRoute],
			},
			certs: tlsutil.NewCertStore(tlsutil.NewCerts()),
		}
		// Raw accept (session.serveRaw) where every route is l4 on the
		// epoll relay. A connection for an l7 route needs a *net.TCPConn
		// made of the descriptor (net.FileConn), about 9 syscalls more
		// than Go's accept (wss:// handshakes about 3 % dearer), and an
		// l4 one accepted with Go costs about 15 % more (issue 11), so a
		// listener with l7 routes too accepts raw while most of its
		// recent connections were l4 (mixedRaw, routeMix).
		rawOK := rawAcceptOK && ls.tls && !ls.proxyIn.accept
		l4Epoll := func(r *route) bool { return r.mode == "l4" && r.relay.Engine == l4.EngineEpoll }
		allL4, mixed, hasL4, hasL7 := rawOK, rawOK, false, false
		see := func(r *route) {
			if r == nil {
				return
			}
			allL4 = allL4 && l4Epoll(r)
			mixed = mixed && (l4Epoll(r) || r.mode == "l7")
			hasL4 = hasL4 || r.mode == "l4"
			hasL7 = hasL7 || r.mode == "l7"
		}
		see(lr.table.def)
		see(lr.table.plain)
		for p, r := range ls.names.All() {
			lr.table.names.Add(p, routes[r])
			see(routes[r])
		}
		lr.rawAccept = allL4
		lr.mixedRaw = mixed && hasL4 && hasL7
		rt.Listeners[name] = lr
		rt.byAddr[lr.key] = lr
	}
}

// buildL7 gives every TLS listener its certificates and starts the l7
// routes (and the redirect_https ones of cleartext listeners).
func (rt *Runtime) buildL7(routes map[string]*route, ck *checker) {
	for _, lname := range sortedKeys(rt.listenerSpecs) {
		ls, lr := rt.listenerSpecs[lname], rt.Listeners[lname]
		certs := tlsutil.NewCerts()
		var first *tls.Certificate // served without SNI if nothing else is
		for _, name := range sortedKeys(rt.routeSpecs) {
			rs, r := rt.routeSpecs[name], routes[name]
			if rs.mode != "l7" || rs.listener != lname {
				continue
			}
			if !rs.cleartext {
				if !rt.routeCert(rs, r, ck) {
					continue
				}
				for _, n := range r.names {
					certs.Add(n, r.cert)
				}
				if first == nil {
					first = r.cert
				}
			}
			rt.startL7(lr, rs, r, ck)
		}
		if !lr.tls {
			if ls.redirectHTTPS {
				rt.startRedirect(lr, ck)
			}
			continue
		}
		def := ls.cert
		if def != nil {
			rt.warnExpiry("listeners."+lname+".cert", []string{"(no SNI)"}, def)
		}
		if def == nil && lr.table.def != nil && lr.table.def.mode == "l7" {
			def = lr.table.def.cert
		}
		if def == nil {
			def = first
		}
		certs.SetDefault(def)
		lr.certs.Swap(certs)
	}
}

// routeCert gives a TLS-terminating route without cert/key its
// self-signed certificate, and warns of one that expires soon. It returns
// false on error (recorded).
func (rt *Runtime) routeCert(rs *routeSpec, r *route, ck *checker) bool {
	path := "routes." + rs.name
	if r.cert == nil {
		cert, err := selfSigned(rs.selfSigned)
		if err != nil {
			ck.errorf(path+".cert", "generating a self-signed certificate: %v", err)
			return false
		}
		r.cert = cert
		rt.Warnings = append(rt.Warnings, fmt.Sprintf("%s: no cert/key configured: serving a self-signed certificate for %v (browsers will warn; set cert and key for production)", path, rs.selfSigned))
	}
	rt.warnExpiry(path+".cert", r.names, r.cert)
	return true
}

// startL7 creates r's l7 route, which starts its HTTP server.
func (rt *Runtime) startL7(lr *listenerRuntime, rs *routeSpec, r *route, ck *checker) {
	var tcfg *tls.Config
	if !rs.cleartext {
		tcfg = &tls.Config{GetCertificate: lr.certs.GetCertificate}
	}
	var otherRoute func(string) bool
	if lr.table.def == r {
		table := &lr.table
		otherRoute = func(host string) bool {
			other := table.named(host)
			return other != nil && other != r
		}
	}
	l7r, err := l7.NewRoute(l7.RouteConfig{
		Name:               r.name,
		Hosts:              r.names,
		OtherRoute:         otherRoute,
		Pool:               r.pool,
		Locations:          r.locations,
		TLS:                tcfg,
		HTTP2:              rs.http2,
		HandshakeTimeout:   lr.handshakeTimeout,
		HeaderTimeout:      lr.headerTimeout,
		BodyTimeout:        lr.body.timeout,
		RequestBufferBytes: lr.body.buffer,
		MaxBodyBytes:       lr.body.limit,
		Relay:              r.relay,
	})
	if err != nil {
		ck.errorf("routes."+r.name, "%v", err)
		return
	}
	rt.l7routes = append(rt.l7routes, l7r)
	r.l7 = l7r
}

// startRedirect creates the route of a cleartext listener with
// redirect_https, which starts its HTTP server.
func (rt *Runtime) startRedirect(lr *listenerRuntime, ck *checker) {
	red, err := l7.NewRoute(l7.RouteConfig{Name: "redirect_https", RedirectHTTPS: true, RedirectHTTPSPort: lr.redirectPort, HeaderTimeout: lr.headerTimeout})
	if err != nil {
		ck.errorf("listeners."+lr.name+".redirect_https", "%v", err)
		return
	}
	rt.l7routes = append(rt.l7routes, red)
	lr.redirect = red
}

// certExpiryWarning: a certificate expiring sooner than this loads with a
// warning (RELIABILITY T22).
const certExpiryWarning = 7 * 24 * time.Hour

// warnExpiry records a warning for an expired, not yet valid, or soon
// expiring certificate, naming the server names it serves and NotAfter.
func (rt *Runtime) warnExpiry(path string, names []string, cert *tls.Certificate) {
	leaf := cert.Leaf
	if leaf == nil {
		return
	}
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		rt.Warnings = append(rt.Warnings, fmt.Sprintf("%s: the certificate for %v EXPIRED at %s", path, names, leaf.NotAfter.UTC().Format(time.RFC3339)))
	case now.Before(leaf.NotBefore):
		rt.Warnings = append(rt.Warnings, fmt.Sprintf("%s: the certificate for %v is not valid before %s", path, names, leaf.NotBefore.UTC().Format(time.RFC3339)))
	case leaf.NotAfter.Sub(now) < certExpiryWarning:
		rt.Warnings = append(rt.Warnings, fmt.Sprintf("%s: the certificate for %v expires at %s", path, names, leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
}

// selfSignedCerts keeps the certificates generated for routes without one,
// by their names, for the life of the process: a reload must not present
// browsers (which were told to accept it) with a new self-signed
// certificate.
var selfSignedCerts sync.Map // strings.Join(names, ",") → *tls.Certificate

func selfSigned(names []string) (*tls.Certificate, error) {
	key := strings.Join(names, ",")
	if c, ok := selfSignedCerts.Load(key); ok {
		return c.(*tls.Certificate), nil
	}
	cert, err := tlsutil.SelfSigned(names, 0)
	if err != nil {
		return nil, err
	}
	c, _ := selfSignedCerts.LoadOrStore(key, &cert)
	return c.(*tls.Certificate), nil
}
