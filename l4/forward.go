package l4

import (
	"context"
	"errors"
	"net"

	"sluice/balancer"
)

// ForwardResult is the outcome of one opaque-stream connection.
type ForwardResult struct {
	Stats
	Backend  string // the backend's id (default: its address); "" when none was connected
	Attempts int    // connect attempts it took
}

// Forward serves one l4 connection: it connects through pool (the balancer
// writes the PROXY header, if the pool sends one, and req.Prefix — the
// peeked ClientHello — in one write, and retries another backend on
// failure), then starts the relay (Start) and returns. done is called once
// with the outcome: on the caller's goroutine if the connect failed, else on
// the relay's when it ends. client is closed in every case by then. On a
// connect failure Reason is ReasonNoBackend (nothing to try: all backends
// down, draining or full), ReasonLocalLimit or ReasonConnectFailed (see
// DialFailure), and Err the balancer's error. A hash pool keyed on
// client_ip or sni gets its key here.
func Forward(ctx context.Context, pool *balancer.Pool, client *net.TCPConn, req balancer.DialRequest, opts Options, done func(ForwardResult)) {
	if pool.Balance() == balancer.Hash && !req.HasHashKey {
		req.HashKey, req.HasHashKey = pool.HashKey().ConnKey(req.Client, req.SNI)
	}
	lease, err := pool.Dial(ctx, req)
	if err != nil {
		client.Close()
		done(ForwardResult{Stats: Stats{Reason: DialFailure(err), Err: err}})
		return
	}
	prefix := int64(len(req.Prefix)) // not req.Prefix: the relay must not keep the hello alive
	Start(ctx, client, lease.Conn, opts, func(st Stats) {
		// Passive health: a backend that resets before sending anything
		// counts as a failure, like a refused connect.
		lease.Observe(st.BytesOut, st.Reason == ReasonBackendReset)
		lease.Release()
		st.BytesIn += prefix // the hello went out with the connect
		done(ForwardResult{Stats: st, Backend: lease.Backend.ID(), Attempts: lease.Attempts})
	})
}

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
