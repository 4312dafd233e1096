package l4

import (
	"errors"

	"sluice/balancer"
)

// Reason says why a connection ended or was refused: the type of every
// close reason of the access log, metrics and tests (shared/RELIABILITY.md
// §4). Each value is a stable, greppable string. This package defines the
// relay's reasons and those every path shares; the accept side (package
// main) defines its own.
type Reason string

const (
	// Relay outcomes.
	ReasonEOF              Reason = "eof"                // both directions ended with FIN
	ReasonIdleTimeout      Reason = "idle_timeout"       // both directions quiet for idle_timeout
	ReasonHalfCloseTimeout Reason = "half_close_timeout" // one side FIN'd, the other went quiet
	ReasonWriteStall       Reason = "write_stall"        // a write made no progress for write_stall_timeout
	ReasonClientReset      Reason = "client_reset"       // the client reset (or its socket failed)
	ReasonBackendReset     Reason = "backend_reset"      // the backend reset (or its socket failed)
	ReasonDrain            Reason = "drain"              // closed by shutdown or by a removed backend's drain
	ReasonError            Reason = "error"              // a local fault; logged at error level

	// Before the relay. The accept side's own reasons (hello_timeout,
	// no_route, per_ip_rate, ...) live in package main, the producer.
	ReasonClientClosed Reason = "client_closed" // the client closed before sending a complete ClientHello (l7: or a request body)

	// Backends.
	ReasonNoBackend     Reason = "no_backend"     // the pool has no usable backend
	ReasonConnectFailed Reason = "connect_failed" // every connect attempt failed
	ReasonLocalLimit    Reason = "local_limit"    // every connect attempt failed for want of a local resource (source ports, descriptors, buffers): sluice's trouble, not the backends'

	// The L7 path (it also uses the relay and backend reasons above).
	ReasonHandshakeTimeout   Reason = "handshake_timeout"    // TLS handshake not done within HandshakeTimeout of accept
	ReasonHandshakeFailed    Reason = "handshake_failed"     // the TLS handshake failed (no common ALPN, bad record, ...)
	ReasonHeaderTimeout      Reason = "header_timeout"       // a request head did not arrive in time (408, or a silent close if no byte came)
	ReasonHeaderTooLarge     Reason = "header_too_large"     // 431 (head bytes or fields) or 414 (request line)
	ReasonBadRequest         Reason = "bad_request"          // a malformed request: 400/505, missing Host
	ReasonSmuggling          Reason = "smuggling"            // framing we refuse: CL+TE, duplicate CL, obs-fold, bare CR, TE on 1.0, unknown TE (501), a body on an upgrade
	ReasonMisdirected        Reason = "misdirected"          // 421: the Host is not one of the route's hosts
	ReasonUpgradeRejected    Reason = "upgrade_rejected"     // an invalid WebSocket upgrade request (RELIABILITY T9)
	ReasonUpgradeRefused     Reason = "upgrade_refused"      // the backend answered the upgrade with a non-101, relayed to the client
	ReasonBadUpgradeResponse Reason = "bad_upgrade_response" // the backend's answer to an upgrade was unusable (bad 101, too large, malformed): 502
	ReasonBackendTimeout     Reason = "backend_timeout"      // the backend did not answer the upgrade within HeaderTimeout: 504
	ReasonBadGateway         Reason = "bad_gateway"          // a proxied plain request failed after connecting: 502
	ReasonBodyTimeout        Reason = "body_timeout"         // a request body made no progress for body_timeout: 408
	ReasonBodyTooLarge       Reason = "body_too_large"       // a request body over max_body_bytes: 413
)

// DialFailure is the close reason for an error from balancer.Pool.Dial:
// ReasonNoBackend when there was nothing to try, ReasonLocalLimit when every
// attempt failed for want of a local resource, else ReasonConnectFailed.
func DialFailure(err error) Reason {
	if errors.Is(err, balancer.ErrNoBackend) {
		return ReasonNoBackend
	}
	if de, ok := errors.AsType[*balancer.DialError](err); ok && de.Local() {
		return ReasonLocalLimit
	}
	return ReasonConnectFailed
}
