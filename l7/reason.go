package l7

import "sluice/l4"

// The close reasons only the L7 path produces (it also uses l4's relay,
// backend and shared reasons). Each package owns the reasons it produces;
// all share l4.Reason's type, and each value is a stable, greppable string
// of the access log and metrics (shared/RELIABILITY.md §4).
const (
	ReasonHandshakeTimeout   l4.Reason = "handshake_timeout"    // TLS handshake not done within HandshakeTimeout of accept
	ReasonHandshakeFailed    l4.Reason = "handshake_failed"     // the TLS handshake failed (no common ALPN, bad record, ...)
	ReasonHeaderTimeout      l4.Reason = "header_timeout"       // a request head did not arrive in time (408, or a silent close if no byte came)
	ReasonHeaderTooLarge     l4.Reason = "header_too_large"     // 431 (head bytes or fields) or 414 (request line)
	ReasonBadRequest         l4.Reason = "bad_request"          // a malformed request: 400/505, missing Host
	ReasonSmuggling          l4.Reason = "smuggling"            // framing we refuse: CL+TE, duplicate CL, obs-fold, bare CR, TE on 1.0, unknown TE (501), a body on an upgrade
	ReasonMisdirected        l4.Reason = "misdirected"          // 421: the Host is not one of the route's hosts
	ReasonUpgradeRejected    l4.Reason = "upgrade_rejected"     // an invalid WebSocket upgrade request (RELIABILITY T9)
	ReasonUpgradeRefused     l4.Reason = "upgrade_refused"      // the backend answered the upgrade with a non-101, relayed to the client
	ReasonBadUpgradeResponse l4.Reason = "bad_upgrade_response" // the backend's answer to an upgrade was unusable (bad 101, too large, malformed): 502
	ReasonBackendTimeout     l4.Reason = "backend_timeout"      // the backend did not answer the upgrade within HeaderTimeout: 504
	ReasonBadGateway         l4.Reason = "bad_gateway"          // a proxied plain request failed after connecting: 502
	ReasonBodyTimeout        l4.Reason = "body_timeout"         // a request body made no progress for body_timeout: 408
	ReasonBodyTooLarge       l4.Reason = "body_too_large"       // a request body over max_body_bytes: 413
	ReasonKeepAliveEnded     l4.Reason = "keepalive_ended"      // an idle keep-alive connection closed because its config was replaced (reload) or sluice is shutting down (Route.Retire)
)
