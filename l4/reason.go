package l4

import (
	"errors"

	"sluice/balancer"
)

// Reason says why a connection ended or was refused: the type of every
// close reason of the access log, metrics and tests (shared/RELIABILITY.md
// §4). Each value is a stable, greppable string. This package defines the
// relay's reasons and those every path shares; l7 and the accept side
// (package main) define their own.
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
