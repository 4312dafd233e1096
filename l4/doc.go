// Package l4 holds the relay that both paths share and the opaque-stream
// (TLS passthrough or raw TCP) forwarder.
//
//	stats := l4.Relay(ctx, client, backend, l4.Options{IdleTimeout: 10 * time.Minute})
//	l4.Start(ctx, client, backend, opts, func(stats l4.Stats) { ... }) // the same on fresh goroutines
//
// Between two raw *net.TCPConn the relay moves bytes with splice(2) and takes
// a pipe only while data is in flight; otherwise it copies through a pooled
// buffer. It never parses the stream.
package l4
