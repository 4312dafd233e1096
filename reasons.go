package main

import "sluice/l4"

// The close reasons of the accept side: a connection refused or ended
// before it reached a route's relay or l7 server. Each package owns the
// reasons it produces (l4 the relay's, l7 the HTTP path's, these here); all
// share l4.Reason's type, and each value is a stable, greppable string of
// the access log and metrics (shared/RELIABILITY.md §4).
const (
	reasonHelloTimeout     l4.Reason = "hello_timeout"      // no complete ClientHello within hello_timeout
	reasonNoFirstBytes     l4.Reason = "no_first_bytes"     // a listener with a plain_route: the client sent nothing within hello_timeout (sluice never speaks first)
	reasonHelloTooLarge    l4.Reason = "hello_too_large"    // ClientHello over max_hello_bytes
	reasonHelloMalformed   l4.Reason = "hello_malformed"    // ClientHello crypto/tls rejects
	reasonNotTLS           l4.Reason = "not_tls"            // first bytes are not TLS and the listener has no plain_route
	reasonNoSNI            l4.Reason = "no_sni"             // no SNI and no default_route
	reasonSNIInvalid       l4.Reason = "sni_invalid"        // an SNI that is not a valid host name, and no default_route
	reasonNoRoute          l4.Reason = "no_route"           // an SNI that matches no route, and no default_route
	reasonMaxConnections   l4.Reason = "max_connections"    // over the global max_connections
	reasonPerIPConnections l4.Reason = "per_ip_connections" // over max_connections_per_ip from one client (IPv6: one /64)
	reasonPerIPRate        l4.Reason = "per_ip_rate"        // over new_connections_per_ip from one client (IPv6: one /64)
	reasonProxyUntrusted   l4.Reason = "proxy_untrusted"    // accept_proxy: the peer is not in trusted_cidrs
	reasonProxyInvalid     l4.Reason = "proxy_invalid"      // accept_proxy: the first bytes are not a valid PROXY header (or one over 4 KiB)
)
