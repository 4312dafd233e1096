package l4

// Reason says why a connection ended or was refused. It is the one set of
// close reasons shared by the access log, metrics and tests
// (shared/RELIABILITY.md §4): every value is a stable, greppable string.
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

	// Before the relay: the ClientHello peek and routing.
	ReasonClientClosed   Reason = "client_closed"   // the client closed before sending a complete ClientHello
	ReasonHelloTimeout   Reason = "hello_timeout"   // no complete ClientHello within hello_timeout
	ReasonHelloTooLarge  Reason = "hello_too_large" // ClientHello over max_hello_bytes
	ReasonHelloMalformed Reason = "hello_malformed" // ClientHello crypto/tls rejects
	ReasonNotTLS         Reason = "not_tls"         // first bytes are not TLS and the listener has no plain_route
	ReasonNoSNI          Reason = "no_sni"          // no SNI and no default_route
	ReasonSNIInvalid     Reason = "sni_invalid"     // an SNI that is not a valid host name, and no default_route
	ReasonNoRoute        Reason = "no_route"        // an SNI that matches no route, and no default_route
	ReasonMaxConnections Reason = "max_connections" // over the global max_connections

	// Backends.
	ReasonNoBackend     Reason = "no_backend"     // the pool has no usable backend
	ReasonConnectFailed Reason = "connect_failed" // every connect attempt failed
)
