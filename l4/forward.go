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
	Backend  string // the backend's address; "" when none was connected
	Attempts int    // connect attempts it took
}

// Forward serves one l4 connection: it connects through pool (the balancer
// writes the PROXY header, if the pool sends one, and req.Prefix — the
// peeked ClientHello — in one write, and retries another backend on
// failure), then relays until the connection ends. It closes client in
// every case. On a connect failure Reason is ReasonNoBackend (nothing to
// try: all backends down, draining or full) or ReasonConnectFailed, and Err
// the balancer's error. A hash pool keyed on client_ip or sni gets its key
// here.
func Forward(ctx context.Context, pool *balancer.Pool, client *net.TCPConn, req balancer.DialRequest, opts Options) ForwardResult {
	if pool.Balance() == balancer.Hash && !req.HasHashKey {
		req.HashKey, req.HasHashKey = pool.HashKey().ConnKey(req.Client, req.SNI)
	}
	lease, err := pool.Dial(ctx, req)
	if err != nil {
		client.Close()
		reason := ReasonConnectFailed
		if errors.Is(err, balancer.ErrNoBackend) {
			reason = ReasonNoBackend
		}
		return ForwardResult{Stats: Stats{Reason: reason, Err: err}}
	}
	defer lease.Release()
	st := Relay(ctx, client, lease.Conn, opts)
	// Passive health: a backend that resets before sending anything counts
	// as a failure, like a refused connect.
	lease.Observe(st.BytesOut, st.Reason == ReasonBackendReset)
	st.BytesIn += int64(len(req.Prefix)) // the hello went out with the connect
	return ForwardResult{Stats: st, Backend: lease.Backend.Addr(), Attempts: lease.Attempts}
}
