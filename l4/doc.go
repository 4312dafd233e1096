// Package l4 holds the relay that both paths share (the l4 path of package
// main and l7's WebSocket tunnels), and the close reasons of the access log.
//
//	stats := l4.Relay(ctx, client, backend, l4.Options{IdleTimeout: 10 * time.Minute})
//	l4.Start(ctx, client, backend, opts, func(stats l4.Stats) { ... }) // the same on fresh goroutines
//
// Between two raw *net.TCPConn the relay moves bytes with splice(2) and takes
// a pipe only while data is in flight; otherwise it copies through a pooled
// buffer. It never parses the stream.
//
// Two engines run it (Options.Engine): EngineGoroutine, two goroutines per
// relay, and EngineEpoll (Linux, TCP↔TCP), where idle relays sit in an
// epoll set of the package's own and hold no goroutine (epoll_linux.go).
// Both keep the same rules: half-close, reset pass-through, timeouts, Stats.
//
// On EngineEpoll either side may also be a descriptor the relay takes over
// (StartSockets: the l4 path's raw accept and balancer's raw
// dial), and WaitFD parks a goroutine on a descriptor's readiness through
// the same epoll sets (wait_linux.go).
package l4
