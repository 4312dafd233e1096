package l7

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"sync"
	"time"

	"go.uber.org/zap"

	"sluice/balancer"
	"sluice/l4"
)

// proxy reverse-proxies plain HTTP requests to a pool.
type proxy struct {
	pool *balancer.Pool
	tr   *http.Transport
	rp   *httputil.ReverseProxy
}

func newProxy(rt *Route, pool *balancer.Pool) *proxy {
	p := &proxy{pool: pool}
	p.tr = &http.Transport{
		DialContext: p.dial,
		// A backend conn that carries a PROXY header carries one client's
		// address: it must not be reused for another client.
		DisableKeepAlives:   pool.ProxyProtocol() != balancer.ProxyNone,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// Bounded like the upgrade's answer.
		ResponseHeaderTimeout: 0,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    p.tr,
		ErrorHandler: rt.proxyError,
	}
	if l, err := zap.NewStdLogAt(rt.log.Named("proxy"), zap.DebugLevel); err == nil {
		p.rp.ErrorLog = l
	}
	return p
}

// rewrite keeps the client's Host and sets the forwarding headers like the
// upgrade path: X-Forwarded-For appended to, the others replaced.
func (p *proxy) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	cs := stateFrom(in.Context())
	out.URL.Scheme = "http"
	out.URL.Host = "backend" // one connection pool per Transport; dial picks the backend
	out.Host = in.Host
	ip := clientIP(cs.client)
	proto := "http"
	if cs.tls {
		proto = "https"
	}
	out.Header.Set("X-Forwarded-For", forwardedFor(in.Header, ip))
	out.Header.Set("X-Forwarded-Host", in.Host)
	out.Header.Set("X-Forwarded-Proto", proto)
	out.Header.Set("X-Real-IP", ip)
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if lc, ok := info.Conn.(*leaseConn); ok {
			cs.mu.Lock()
			cs.res.Backend = lc.lease.Backend.Addr()
			cs.mu.Unlock()
		}
	}}
	ctx := context.WithValue(out.Context(), requestKey{}, in) // for the hash key in dial
	pr.Out = out.WithContext(httptrace.WithClientTrace(ctx, trace))
}

// dial connects through the pool; the PROXY header (if the pool sends one)
// names the client of the request that caused the dial.
func (p *proxy) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	var req balancer.DialRequest
	if cs := stateFrom(ctx); cs != nil {
		req = balancer.DialRequest{Client: cs.client, Local: cs.local, SNI: cs.sni}
		if r, ok := ctx.Value(requestKey{}).(*http.Request); ok {
			req.HashKey, req.HasHashKey = hashKey(p.pool, r, cs)
		}
	}
	lease, err := p.pool.Dial(ctx, req)
	if err != nil {
		return nil, err
	}
	return &leaseConn{TCPConn: lease.Conn, lease: lease}, nil
}

// leaseConn releases its lease when closed.
type leaseConn struct {
	*net.TCPConn
	lease *balancer.Lease
	once  sync.Once
}

func (c *leaseConn) Close() error {
	err := c.TCPConn.Close()
	c.once.Do(c.lease.Release)
	return err
}

// proxyError answers a failed proxied request: 503 + Retry-After when the
// pool had nothing to try, 502 otherwise.
func (rt *Route) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	cs := stateFrom(r.Context())
	reason := l4.ReasonBadGateway
	code := http.StatusBadGateway
	if _, ok := errors.AsType[*balancer.DialError](err); ok || errors.Is(err, balancer.ErrNoBackend) {
		reason = l4.DialFailure(err)
	}
	switch reason {
	case l4.ReasonNoBackend:
		code = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "5")
	case l4.ReasonLocalLimit:
		code = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "1")
	}
	cs.setReason(reason, err) // a framing refusal by the reader, if any, stays the reason
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(http.StatusText(code) + "\n"))
}
