package main

import "sluice/tlsutil"

// routeTable is one listener's compiled routing: built once by Build, read
// by every connection without locks or allocation.
type routeTable struct {
	names tlsutil.HostSet[*route] // the routes' sni entries
	def   *route                  // default_route: no usable SNI, or an SNI no route names
	plain *route                  // plain_route: first bytes are not TLS
}

// lookup returns the route for a normalized SNI ("" when the client sent
// none or an invalid one): exact name, then single-label wildcard, then the
// listener's default route. It returns nil when nothing matches.
func (t *routeTable) lookup(sni string) *route {
	if r := t.named(sni); r != nil {
		return r
	}
	return t.def
}

// named returns the route whose sni names name (exact, then wildcard), or nil.
func (t *routeTable) named(name string) *route {
	r, _ := t.names.Lookup(name)
	return r
}
