package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"sluice/l7"
	"sluice/tlsutil"
)

// compileLocations validates a route's [[routes.NAME.locations]].
func (c *Config) compileLocations(rt *Runtime, rc *RouteConfig, path string, bad func(string, string, ...any)) []l7.Location {
	var out []l7.Location
	seen := map[string]bool{}
	for i, lc := range rc.Locations {
		lpath := fmt.Sprintf("%s.locations[%d]", path, i)
		if !strings.HasPrefix(lc.Path, "/") {
			bad(lpath+".path", "must start with \"/\", got %q", lc.Path)
			continue
		}
		if seen[lc.Path] {
			bad(lpath+".path", "duplicate location %q", lc.Path)
			continue
		}
		seen[lc.Path] = true
		n := 0
		for _, set := range []bool{lc.Pool != "", lc.Root != "", lc.Redirect != ""} {
			if set {
				n++
			}
		}
		if n != 1 {
			bad(lpath, "set exactly one of pool, root or redirect")
			continue
		}
		loc := l7.Location{Path: lc.Path}
		switch {
		case lc.Pool != "":
			if c.Pools[lc.Pool] == nil {
				bad(lpath+".pool", "unknown pool %q", lc.Pool)
				continue
			}
			loc.Pool = rt.Pools[lc.Pool] // nil if the pool is invalid: reported there
		case lc.Root != "":
			loc.Root = c.resolve(lc.Root)
			if st, err := os.Stat(loc.Root); err != nil || !st.IsDir() {
				bad(lpath+".root", "%q is not a directory", loc.Root)
				continue
			}
		default:
			u, err := url.Parse(lc.Redirect)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad(lpath+".redirect", "must be an absolute http(s) URL, got %q", lc.Redirect)
				continue
			}
			loc.Redirect = lc.Redirect
		}
		out = append(out, loc)
	}
	return out
}

// buildL7 gives every TLS listener its certificates and builds the l7
// routes. It runs only on an otherwise valid config.
func (c *Config) buildL7(rt *Runtime, routes map[string]*route, bad func(string, string, ...any), loadCert func(string, string, string) *tls.Certificate) {
	plain := map[string]bool{}
	for _, lc := range c.Listeners {
		if lc != nil && lc.PlainRoute != "" {
			plain[lc.PlainRoute] = true
		}
	}
	for _, lname := range sortedKeys(c.Listeners) {
		lcfg, lr := c.Listeners[lname], rt.Listeners[lname]
		lpath := "listeners." + lname
		certs := tlsutil.NewCerts()
		var first *tls.Certificate
		for _, name := range sortedKeys(c.Routes) {
			r := routes[name]
			if r == nil || r.mode != "l7" || r.listener != lname {
				continue
			}
			path := "routes." + name
			cleartext := !lr.tls || plain[name]
			if lr.tls && plain[name] && len(r.names) > 0 {
				bad(path+".sni", "the plain_route of a TLS listener serves cleartext HTTP and takes no sni")
				continue
			}
			var tcfg *tls.Config
			if !cleartext {
				if r.cert == nil {
					names := r.names
					if len(names) == 0 {
						names = []string{"localhost"}
					}
					if host, _, err := net.SplitHostPort(lr.address); err == nil && net.ParseIP(host) != nil {
						names = append(names, host) // wss://IP:port
					}
					cert, err := selfSigned(names)
					if err != nil {
						bad(path+".cert", "generating a self-signed certificate: %v", err)
						continue
					}
					r.cert = cert
					rt.Warnings = append(rt.Warnings, fmt.Sprintf("%s: no cert/key configured: serving a self-signed certificate for %v (browsers will warn; set cert and key for production)", path, names))
				}
				for _, n := range r.names {
					certs.Add(n, r.cert)
				}
				rt.warnExpiry(path+".cert", r.names, r.cert)
				if first == nil {
					first = r.cert
				}
				tcfg = &tls.Config{GetCertificate: lr.certs.GetCertificate}
			}
			var otherRoute func(string) bool
			if lr.table.def == r {
				table, self := &lr.table, r
				otherRoute = func(host string) bool {
					other := table.named(host)
					return other != nil && other != self
				}
			}
			route, err := l7.NewRoute(l7.RouteConfig{
				Name:             name,
				Hosts:            r.names,
				OtherRoute:       otherRoute,
				Pool:             r.pool,
				Locations:        r.locations,
				TLS:              tcfg,
				HandshakeTimeout: lr.handshakeTimeout,
				HeaderTimeout:    lr.headerTimeout,
				Relay:            r.relay,
			})
			if err != nil {
				bad(path, "%v", err)
				continue
			}
			rt.l7routes = append(rt.l7routes, route)
			r.l7 = route
		}
		if !lr.tls {
			if lcfg.RedirectHTTPS {
				red, err := l7.NewRoute(l7.RouteConfig{Name: "redirect_https", RedirectHTTPS: true, HeaderTimeout: lr.headerTimeout})
				if err != nil {
					bad(lpath+".redirect_https", "%v", err)
					continue
				}
				rt.l7routes = append(rt.l7routes, red)
				lr.redirect = red
			}
			continue
		}
		def := loadCert(lpath, lcfg.Cert, lcfg.Key)
		if def != nil {
			rt.warnExpiry(lpath+".cert", []string{"(no SNI)"}, def)
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
