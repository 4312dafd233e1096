package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"sluice/l7"
)

// locations checks a route's [[routes.NAME.locations]] (path "routes.NAME").
func (cp *compiler) locations(path string, list []LocationConfig) []locationSpec {
	var out []locationSpec
	seen := map[string]bool{}
	for i, lc := range list {
		lpath := fmt.Sprintf("%s.locations[%d]", path, i)
		if !strings.HasPrefix(lc.Path, "/") {
			cp.errorf(lpath+".path", "must start with \"/\", got %q", lc.Path)
			continue
		}
		if seen[lc.Path] {
			cp.errorf(lpath+".path", "duplicate location %q", lc.Path)
			continue
		}
		seen[lc.Path] = true
		if loc, ok := cp.location(lpath, lc); ok {
			out = append(out, loc)
		}
	}
	return out
}

// location checks what one location serves: exactly one of a pool, a
// static root directory or a redirect.
func (cp *compiler) location(lpath string, lc LocationConfig) (locationSpec, bool) {
	n := 0
	for _, set := range []bool{lc.Pool != "", lc.Root != "", lc.Redirect != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		cp.errorf(lpath, "set exactly one of pool, root or redirect")
		return locationSpec{}, false
	}
	loc := locationSpec{path: lc.Path}
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
	default:
		u, err := url.Parse(lc.Redirect)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			cp.errorf(lpath+".redirect", "must be an absolute http(s) URL, got %q", lc.Redirect)
			return loc, false
		}
		loc.redirect = lc.Redirect
	}
	return loc, cp.locationHTTP(lpath, lc, &loc)
}

// locationHTTP checks a location's response keys: headers, gzip (default:
// on for root, off for pool: a proxied response may reflect a secret and
// what the client sent, BREACH) and fallback (root only; a file under it).
func (cp *compiler) locationHTTP(lpath string, lc LocationConfig, loc *locationSpec) bool {
	ok := true
	seen := map[string]string{}
	for _, k := range sortedKeys(lc.Headers) {
		if err := l7.CheckHeader(k, lc.Headers[k]); err != nil {
			cp.errorf(lpath+".headers", "%v", err)
			ok = false
			continue
		}
		if other, dup := seen[strings.ToLower(k)]; dup {
			cp.errorf(lpath+".headers", "%q and %q are the same header", other, k)
			ok = false
		}
		seen[strings.ToLower(k)] = k
	}
	if len(lc.Headers) > 0 {
		loc.headers = lc.Headers
	}
	loc.gzip = lc.Root != ""
	if lc.Gzip != nil {
		if lc.Redirect != "" {
			cp.errorf(lpath+".gzip", "a redirect has no body to compress")
			ok = false
		}
		loc.gzip = *lc.Gzip
	}
	if lc.Fallback == "" {
		return ok
	}
	if lc.Root == "" {
		cp.errorf(lpath+".fallback", "only for a root location")
		return false
	}
	rel := strings.TrimPrefix(lc.Fallback, "/")
	for seg := range strings.SplitSeq(rel, "/") {
		if seg == "" || strings.HasPrefix(seg, ".") {
			cp.errorf(lpath+".fallback", "%q must be a file path under root, without empty, . or .. segments or dot files", lc.Fallback)
			return false
		}
	}
	full := filepath.Join(loc.root, filepath.FromSlash(rel))
	if st, err := os.Stat(full); err != nil || !st.Mode().IsRegular() {
		cp.errorf(lpath+".fallback", "%q is not a file", full)
		return false
	}
	loc.fallback = rel
	return ok
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
