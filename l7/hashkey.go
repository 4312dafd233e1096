package l7

import (
	"net/http"
	"strings"

	"sluice/balancer"
)

// requestKey carries the client's request into the reverse proxy's dial,
// which needs it for the hash key.
type requestKey struct{}

// hashKey reads the pool's hash key from a request: query:NAME, header:NAME,
// cookie:NAME, path_prefix (the path up to its last "/": "/rooms/42/ws" keys
// on "/rooms/42/"), or the connection's client_ip / sni. ok is false when
// the pool does not hash or the request lacks the key (the pool then picks
// by least connections).
func hashKey(pool *balancer.Pool, r *http.Request, cs *connState) (key string, ok bool) {
	if pool.Balance() != balancer.Hash {
		return "", false
	}
	k := pool.HashKey()
	switch k.Kind {
	case balancer.HashQuery:
		key = r.URL.Query().Get(k.Name)
	case balancer.HashHeader:
		key = r.Header.Get(k.Name)
	case balancer.HashCookie:
		if c, err := r.Cookie(k.Name); err == nil {
			key = c.Value
		}
	case balancer.HashPathPrefix:
		if i := strings.LastIndexByte(r.URL.Path, '/'); i >= 0 {
			key = r.URL.Path[:i+1]
		}
	default:
		return k.ConnKey(cs.client, cs.sni)
	}
	return key, key != ""
}

// dialRequest is what pool needs to choose a backend for request r on the
// connection cs: the client's addresses and SNI, the pool's hash key and its
// sticky cookie as r carries them. cs may be nil (no connection state).
func dialRequest(pool *balancer.Pool, r *http.Request, cs *connState) balancer.DialRequest {
	req := balancer.DialRequest{Sticky: stickyFrom(pool, r)}
	if cs != nil {
		req.Client, req.Local, req.SNI = cs.client, cs.local, cs.sni
		req.HashKey, req.HasHashKey = hashKey(pool, r, cs)
	}
	return req
}
