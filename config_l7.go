package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"sluice/l7"
)

// locations checks a route's [[routes.NAME.locations]] (path "routes.NAME"):
// the rules every location list meets (l7.CheckLocations, the one place
// they live), then what only a config knows: that a pool exists, a root is
// a directory and a fallback a file in it. The gzip default is on for root
// and off for pool (a proxied response may reflect a secret and what the
// client sent: BREACH).
func (cp *compiler) locations(path string, list []LocationConfig) []locationSpec {
	locs := make([]l7.Location, len(list))
	for i, lc := range list {
		locs[i] = l7.Location{Path: lc.Path, Root: lc.Root, Redirect: lc.Redirect, Headers: lc.Headers, Fallback: lc.Fallback}
	}
	broken := map[int]map[string]bool{} // location → keys with a problem
	for _, e := range l7.CheckLocations(locs, func(i int) bool { return list[i].Pool != "" }) {
		key := fmt.Sprintf("%s.locations[%d]", path, e.Index)
		if e.Key != "" {
			key += "." + e.Key
		}
		cp.errorf(key, "%v", e.Err)
		if broken[e.Index] == nil {
			broken[e.Index] = map[string]bool{}
		}
		broken[e.Index][e.Key] = true
	}
	var out []locationSpec
	for i, lc := range list {
		b := broken[i]
		if b["path"] || b[""] { // what it serves is unclear: nothing more to check
			continue
		}
		if b["fallback"] {
			lc.Fallback = "" // never stat a path that escapes root
		}
		if loc, ok := cp.location(fmt.Sprintf("%s.locations[%d]", path, i), lc); ok && len(b) == 0 {
			out = append(out, loc)
		}
	}
	return out
}

// location checks what only the config knows about a location that meets
// the l7 rules, and fills in its defaults.
func (cp *compiler) location(lpath string, lc LocationConfig) (locationSpec, bool) {
	loc := locationSpec{path: lc.Path, redirect: lc.Redirect, gzip: lc.Root != ""}
	if len(lc.Headers) > 0 {
		loc.headers = lc.Headers
	}
	if lc.Gzip != nil {
		if lc.Redirect != "" {
			cp.errorf(lpath+".gzip", "a redirect has no body to compress")
			return loc, false
		}
		loc.gzip = *lc.Gzip
	}
	switch {
	case lc.Pool != "":
		if cp.cfg.Pools[lc.Pool] == nil {
			cp.errorf(lpath+".pool", "unknown pool %q", lc.Pool)
			return loc, false
		}
		loc.pool = lc.Pool
	case lc.Root != "":
		loc.root = cp.cfg.resolve(lc.Root)
		if st, err := os.Stat(loc.root); err != nil || !st.IsDir() {
			cp.errorf(lpath+".root", "%q is not a directory", loc.root)
			return loc, false
		}
		if lc.Fallback != "" {
			rel := strings.TrimPrefix(lc.Fallback, "/")
			full := filepath.Join(loc.root, filepath.FromSlash(rel))
			if st, err := os.Stat(full); err != nil || !st.Mode().IsRegular() {
				cp.errorf(lpath+".fallback", "%q is not a file", full)
				return loc, false
			}
			loc.fallback = rel
		}
	}
	return loc, true
}

// routeTLS decides, listener by listener, which l7 routes terminate TLS and
// with which certificate (configured, or the names of the self-signed one
// Build generates), and loads each TLS listener's own certificate.
func (cp *compiler) routeTLS() {
	for _, lname := range sortedKeys(cp.out.listenerSpecs) {
		ls := cp.out.listenerSpecs[lname]
		for _, name := range sortedKeys(cp.out.routeSpecs) {
			rs := cp.out.routeSpecs[name]
			if rs.mode != "l7" || rs.listener != lname {
				continue
			}
			rs.cleartext = !ls.tls || ls.plainRoute == name
			switch {
			case ls.tls && rs.cleartext && len(rs.names) > 0:
				cp.errorf("routes."+name+".sni", "the plain_route of a TLS listener serves cleartext HTTP and takes no sni")
			case !rs.cleartext && rs.cert == nil:
				rs.selfSigned = selfSignedNames(rs.names, ls.address)
			}
		}
		if ls.tls {
			lc := cp.cfg.Listeners[lname]
			ls.cert = cp.loadCert("listeners."+lname, lc.Cert, lc.Key)
		}
	}
}

// selfSignedNames returns the names of the self-signed certificate of a
// route serving names (none: "localhost") on a listener at address: its IP
// too, for wss://IP:port.
func selfSignedNames(names []string, address string) []string {
	out := slices.Clone(names)
	if len(out) == 0 {
		out = []string{"localhost"}
	}
	if host, _, err := net.SplitHostPort(address); err == nil && net.ParseIP(host) != nil {
		out = append(out, host)
	}
	return out
}
