// Package tlsutil reads and parses the TLS ClientHello that opens every
// connection, so sluice can route on SNI before deciding whether to pass the
// stream through (l4) or terminate TLS itself (l7).
//
//	c.SetReadDeadline(accepted.Add(helloTimeout)) // the caller owns the deadline
//	h, err := tlsutil.ReadClientHello(c, 16<<10)
//	// h.Raw holds every byte consumed, for replay to a backend or tls.Server.
//
// On ErrNotTLS, LooksLikeHTTP(h.Raw) tells whether the plain-HTTP 400 fits;
// on success, h.SNIInvalid or an empty h.ServerName means "no SNI" and
// NewPrefixConn(c, h.Raw) hands the bytes to tls.Server.
//
// It imports the standard library only. It does not set deadlines, log, or
// decide routes. Subpackage tlstest builds ClientHello bytes for tests.
package tlsutil
