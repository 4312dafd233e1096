// Package balancer owns backend pools: picking a backend, connecting to it
// with a timeout and retries, and writing the PROXY protocol header and the
// peeked client bytes in one write, so every connect failure is seen in one
// place.
//
//	pool, err := balancer.NewPool(balancer.PoolConfig{Name: "rooms", Backends: backends, ProxyProtocol: balancer.ProxyV2})
//	...
//	lease, err := pool.Dial(ctx, balancer.DialRequest{Client: c.RemoteAddr(), Local: c.LocalAddr(), SNI: sni, Prefix: hello})
//	if err != nil {
//		// errors.Is(err, balancer.ErrNoBackend): nothing to try (503);
//		// otherwise a *balancer.DialError listing each failed attempt (502).
//	}
//	defer lease.Release()    // the connection ended: active count down
//	defer lease.Conn.Close() // the caller owns the raw *net.TCPConn (splice)
//
// Each Dial tries up to MaxAttempts different backends (round robin, then the
// next one on failure) within ConnectBudget, replaying the same header and
// prefix bytes on each attempt (RELIABILITY rule 4, T12). Backend sockets get
// keepalive 30s/10s/3 and TCP_USER_TIMEOUT 30s (T17). Backends keep atomic
// counters (Active, Dials, Failures) for metrics and passive health.
//
// It does not log, does not relay bytes, does not read from backends, and
// imports neither l4, l7 nor tlsutil. Weights, least_conn, hashing, health
// checks, capacity and draining are not implemented yet; the picker
// interface in policy.go is where further algorithms go.
package balancer
