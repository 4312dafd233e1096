// Package balancer owns backend pools: picking a healthy backend, connecting
// to it with a timeout and retries, writing the PROXY protocol header and the
// peeked client bytes in one write, and the backends' health (active checks
// and passive failure counting), capacity and admin state.
//
//	pool, err := balancer.NewPool(balancer.PoolConfig{
//		Name: "rooms", Backends: backends, ProxyProtocol: balancer.ProxyV2,
//		Balance: balancer.Hash, HashKey: key, // from ParseAlgorithm, ParseHashKey
//		Health:  balancer.HealthConfig{Check: balancer.CheckTCP},
//		OnChange: func(ev balancer.Event) { log.Info(...) },
//	})
//	pool.Start()       // active health checks
//	defer pool.Close() // stops and waits for them
//	...
//	lease, err := pool.Dial(ctx, balancer.DialRequest{Client: c.RemoteAddr(), Local: c.LocalAddr(),
//		SNI: sni, Prefix: hello, HashKey: room, HasHashKey: room != ""})
//	if err != nil {
//		// errors.Is(err, balancer.ErrNoBackend): nothing was dialled (503),
//		// more precisely ErrUnhealthy or ErrFull;
//		// otherwise a *balancer.DialError listing each failed attempt (502).
//	}
//	defer lease.Release()    // the connection ended: active count down
//	defer lease.Conn.Close() // the caller owns the raw *net.TCPConn (splice)
//	...
//	lease.Observe(bytesFromBackend, reset) // passive health, before Release
//
// With DialRequest.Wait (l4.FDWaiter, Linux) a backend whose address is an
// IP literal is connected with syscalls of the package's own
// (rawdial_linux.go): the Lease then has FD, a connected nonblocking
// descriptor, instead of Conn (l4.StartSockets takes it over; SetBackendOptions
// sets its deferred options), with the same attempts, errors, timeouts and
// answer wait.
//
// Balancing (policy.go): smooth weighted round robin, weighted least_conn,
// power of two choices, and weighted rendezvous hashing with an optional
// bounded-load factor. Picks allocate nothing and take no pool-wide lock
// (round robin holds a short mutex over its current weights).
//
// Each Dial tries up to MaxAttempts different healthy backends within
// ConnectBudget, replaying the same header and prefix bytes on each attempt
// (RELIABILITY rule 4, T12). Backend sockets get keepalive 30s/10s/3 and
// TCP_USER_TIMEOUT 30s (T17).
//
// Health (health.go): one goroutine per backend between Start and Close,
// one check in flight at a time, ±10 % jitter, HAProxy rise/fall counters
// (T24); consecutive failed connects or resets before the first byte mark a
// backend DOWN (MaxFails), and without active checks FailTimeout brings it
// back. Transitions are reported through PoolConfig.OnChange, once each.
// Admin state (SetState: ready, drain, maint), Status, CloseConnections and
// Adopt (keep state across a reload) are in pool.go.
//
// Discovery (discovery.go, set.go): with PoolConfig.Discover (DNS SRV or
// A/AAAA, package balancer/discover) the backend set changes while the pool
// runs. The set is an immutable snapshot swapped atomically; each Dial and
// Chooser works from one snapshot, so picks stay lock- and allocation-free.
// Backends found again keep their state; new ones are checked before they
// take players; removed ones drain (DrainTimeout); a failed or empty lookup
// keeps the last set. Changes are reported through OnChange (Event.Kind).
//
// Agent checks (agent.go): with PoolConfig.Agent, one more goroutine per
// backend asks the backend's agent (HAProxy's agent-check protocol) for its
// admin state, health, weight and slots; the agent's drain and maint are
// flags of their own next to the operator's (the stricter is in force), a
// bad or missing answer changes nothing. With Hash, the agents' reported
// loads replace this instance's connection counts in the load bound, so
// that every sluice instance places a key alike (issue 12, part 6).
//
// It does not log, does not relay bytes, does not read from backends except
// in health and agent checks, and imports neither l4, l7, tlsutil nor net/http (which
// imports log).
package balancer
