package l7

import (
	"net/http"
	"strings"

	"sluice/balancer"
)

// requestKey carries the client's request into the reverse proxy's dial,
// which needs it for the hash key.
type requestKey struct{}

// reqView is what hashKey and stickyFrom read of a request: net/http's
// (httpView) or the fast path's (h1req, h1fast.go).
type reqView interface {
	query(name string) string          // URL.Query().Get
	header(name string) string         // Header.Get
	cookie(name string) (string, bool) // Cookie
	urlPath() string                   // URL.Path
}

type httpView struct{ r *http.Request }

func (v httpView) query(name string) string  { return v.r.URL.Query().Get(name) }
func (v httpView) header(name string) string { return v.r.Header.Get(name) }
func (v httpView) urlPath() string           { return v.r.URL.Path }
func (v httpView) cookie(name string) (string, bool) {
	c, err := v.r.Cookie(name)
	if err != nil {
		return "", false
	}
	return c.Value, true
}

// hashKey reads the pool's hash key from a request: query:NAME, header:NAME,
// cookie:NAME, path_prefix (the path up to its last "/": "/rooms/42/ws" keys
// on "/rooms/42/"), or the connection's client_ip / sni. ok is false when
// the pool does not hash or the request lacks the key (the pool then picks
// by least connections).
func hashKey(pool *balancer.Pool, r reqView, cs *connState) (key string, ok bool) {
	if pool.Balance() != balancer.Hash {
		return "", false
	}
	k := pool.HashKey()
	switch k.Kind {
	case balancer.HashQuery:
		key = r.query(k.Name)
	case balancer.HashHeader:
		key = r.header(k.Name)
	case balancer.HashCookie:
		key, _ = r.cookie(k.Name)
	case balancer.HashPathPrefix:
		p := r.urlPath()
		if i := strings.LastIndexByte(p, '/'); i >= 0 {
			key = p[:i+1]
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
	return dialRequestFor(pool, httpView{r}, cs)
}

func dialRequestFor(pool *balancer.Pool, r reqView, cs *connState) balancer.DialRequest {
	req := balancer.DialRequest{Sticky: stickyFrom(pool, r)}
	if cs != nil {
		req.Client, req.Local, req.SNI = cs.client, cs.local, cs.sni
		req.HashKey, req.HasHashKey = hashKey(pool, r, cs)
	}
	return req
}
