// Package l7 terminates TLS for a route and serves HTTP/1.1 and HTTP/2 on
// the decrypted stream: WebSocket upgrades (HTTP/1.1) are validated,
// forwarded to a balancer pool and then handed to the l4 relay; other
// requests are reverse-proxied, served from a directory, or redirected, by
// longest path prefix.
//
//	route, err := l7.NewRoute(l7.RouteConfig{Name: "h5", Hosts: []string{"game.example.com"},
//		TLS: tlsConfig, Locations: []l7.Location{{Path: "/ws", Pool: rooms}, {Path: "/", Root: "web"}}})
//	...
//	route.Serve(ctx, tcpConn, nil, hello.Raw, accepted, func(res l7.Result) { // returns after the handshake
//		log.Info("access", zap.String("reason", string(res.Reason)), ...) // when the conn has ended
//	})
//	res := route.ServeConn(ctx, tcpConn, hello.Raw, accepted) // the same, blocking until the end
//	...
//	route.Close()
//
// Every connection runs through one http.Server per route, fed by a
// channel-backed listener (handoff.go). Between the conn and net/http sits a
// validating reader (conn.go) that checks each raw request head before
// net/http parses it, because net/http hides evidence of smuggling (it folds
// obs-fold lines, drops Content-Length next to chunked, merges identical
// duplicate Content-Length and ignores Transfer-Encoding on HTTP/1.0). It
// also owns every read deadline (RELIABILITY rule 1): handshake, first
// request head, keep-alive idle, head, body, then the relay's own.
//
// A connection that negotiates h2 (RouteConfig.HTTP2) is served by
// sluice's own HTTP/2 server instead (h2.go, h2srv.go): each stream runs the
// same handler (Host check, locations, body limits), and backends still get
// HTTP/1.1.
//
// Plain requests whose body is absent or buffered (readBody) go through
// sluice's own HTTP/1.1 client on the handler's goroutine (fastproxy.go,
// backend.go); streamed bodies and PROXY-protocol pools through
// httputil.ReverseProxy and http.Transport. Static files up to 256 KiB are
// kept in memory and checked against the disk with one stat per request
// (static.go).
//
// What it will not do: h2c (HTTP/2 without TLS), WebSocket over HTTP/2 (RFC
// 8441: not announced, so browsers open an HTTP/1.1 connection for it), TLS
// to backends, caching of proxied responses,
// compression, request bodies on upgrade requests, or upgrades other than
// WebSocket. It logs
// nothing per request at info level: Serve hands a Result to its callback
// and the caller writes the one access line.
//
// An idle WebSocket tunnel holds no goroutine of its own: the handshake's
// goroutine returns once net/http has the conn, the upgrade handler returns
// once the relay runs (l4.Start), and only the relay's two goroutines remain.
package l7
