package l7

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sluice/balancer"
	"sluice/l4"
)

// proxy reverse-proxies plain HTTP requests to a pool. Every request picks
// its backend by the pool's balance and hash key, as an upgrade does
// (issue 10: the backend used to be chosen only when the transport dialled,
// so a reused connection took every later request, and round robin or a
// hash key did not apply to plain HTTP). Connections stay pooled per
// backend: in backendConns for a keep-alive pool and a request whose body
// is absent or buffered (the common case, backend.go), else in the
// http.Transport, whose URL host is the backend's address.
type proxy struct {
	rt    *Route
	pool  *balancer.Pool
	conns *backendConns // keep-alive pools: the requests it takes (backend.go)
	tr    *http.Transport
	rp    *httputil.ReverseProxy
}

var _ http.RoundTripper = (*proxy)(nil)

func newProxy(rt *Route, pool *balancer.Pool) *proxy {
	p := &proxy{rt: rt, pool: pool}
	if pool.ProxyProtocol() == balancer.ProxyNone {
		p.conns = &backendConns{pool: pool}
	}
	p.tr = &http.Transport{
		DialContext: p.dial,
		// A backend conn that carries a PROXY header carries one client's
		// address: it must not be reused for another client.
		DisableKeepAlives: pool.ProxyProtocol() != balancer.ProxyNone,
		// Idle conns kept per backend. Below the requests in flight, the
		// transport closes the excess after each response and dials again:
		// with 32, issue 10's bench (50 keep-alive clients) dialled ~770
		// backend conns/s. An idle conn holds no slot (not a player) and
		// is closed after IdleConnTimeout.
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// Bounded like the upgrade's answer.
		ResponseHeaderTimeout: 0,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    p,
		ErrorHandler: rt.proxyError,
		BufferPool:   &copyBuffers,
	}
	if l, err := zap.NewStdLogAt(rt.log.Named("proxy"), zap.DebugLevel); err == nil {
		p.rp.ErrorLog = l
	}
	return p
}

// copyBuffers lends ReverseProxy and serveFast their copy buffers. Without
// a pool ReverseProxy allocates 32 KiB per response: issue 10's bench
// measured 80% of sluice's allocated bytes there, and the GC they drive.
var copyBuffers bufferPool

type bufferPool struct{ p sync.Pool }

var _ httputil.BufferPool = (*bufferPool)(nil)

// get and put lend a buffer without allocating (serveFast).
func (b *bufferPool) get() *[]byte {
	if bp, ok := b.p.Get().(*[]byte); ok {
		return bp
	}
	buf := make([]byte, 32<<10)
	return &buf
}

func (b *bufferPool) put(bp *[]byte) { b.p.Put(bp) }

func (b *bufferPool) Get() []byte    { return *b.get() }
func (b *bufferPool) Put(buf []byte) { b.put(&buf) }

// ServeHTTP proxies in, whose body readBody has prepared: in memory
// (serveFast), or streamed (ReverseProxy over the http.Transport). A pool
// that sends PROXY headers dials per request: the Transport's path.
func (p *proxy) ServeHTTP(w http.ResponseWriter, in *http.Request) {
	if p.conns != nil && fastPath(in) {
		p.serveFast(w, in)
		return
	}
	p.rp.ServeHTTP(w, in)
}

// rewrite keeps the client's Host and sets the forwarding headers like the
// upgrade path: X-Forwarded-For appended to, the others replaced.
func (p *proxy) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	cs := stateFrom(in.Context())
	out.URL.Scheme = "http"
	out.URL.Host = "backend" // RoundTrip puts the chosen backend here
	out.Host = in.Host
	ip := cs.ip
	proto := "http"
	if cs.tls {
		proto = "https"
	}
	out.Header.Set("X-Forwarded-For", forwardedFor(in.Header, ip))
	out.Header.Set("X-Forwarded-Host", in.Host)
	out.Header.Set("X-Forwarded-Proto", proto)
	out.Header.Set("X-Real-IP", ip)
	pr.Out = out.WithContext(context.WithValue(out.Context(), requestKey{}, in)) // for the hash key
}

// RoundTrip sends out to a backend chosen for this request. A backend that
// cannot be connected to is replaced by the next choice (up to the pool's
// max_attempts within its connect budget) while nothing of the request body
// has been read; the slot taken on the backend is held until the response
// body is closed.
func (p *proxy) RoundTrip(out *http.Request) (*http.Response, error) {
	ctx := out.Context()
	cs := stateFrom(ctx)
	in, ok := ctx.Value(requestKey{}).(*http.Request)
	if !ok {
		in = out
	}
	req := dialRequest(p.pool, in, cs)
	var body *replayBody
	if out.Body != nil && out.Body != http.NoBody {
		body = &replayBody{rc: out.Body}
	}
	ch := p.pool.NewChooser(&req)
	for {
		claim, err := ch.Next(ctx)
		if err != nil {
			return nil, err
		}
		r := *out // a shallow copy, as Request.WithContext makes
		u := *out.URL
		u.Host = claim.Backend.Addr()
		r.URL = &u
		if body != nil {
			r.Body = body
		}
		resp, err := p.tr.RoundTrip(&r)
		if err == nil {
			if cs != nil {
				cs.mu.Lock()
				cs.res.Backend = claim.Backend.ID()
				cs.mu.Unlock()
			}
			setSticky(resp.Header, p.pool, req.Sticky, claim.Backend, cs != nil && cs.tls)
			resp.Body = &claimBody{ReadCloser: resp.Body, claim: claim}
			return resp, nil
		}
		if _, dialFailed := errors.AsType[*balancer.AttemptError](err); !dialFailed || (body != nil && body.read.Load()) {
			claim.Release()
			return nil, err
		}
		ch.Failed(claim, err)
	}
}

// dial connects to the backend RoundTrip chose (the request's URL host);
// the PROXY header (if the pool sends one) names the client of the request
// that caused the dial.
func (p *proxy) dial(ctx context.Context, _, addr string) (net.Conn, error) {
	b := p.pool.Lookup(addr)
	if b == nil {
		return nil, fmt.Errorf("l7: no backend %q in pool %q", addr, p.pool.Name())
	}
	var req balancer.DialRequest
	if cs := stateFrom(ctx); cs != nil {
		req = balancer.DialRequest{Client: cs.client, Local: cs.local, SNI: cs.sni}
	}
	return p.pool.Connect(ctx, b, req)
}

// replayBody is a request body that can be offered to a second backend
// while nothing of it was read: the transport closes a request body even
// when the dial fails, so Close is left to net/http's server, which owns
// the incoming body.
type replayBody struct {
	rc   io.ReadCloser
	read atomic.Bool
}

func (b *replayBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.rc.Read(p)
}

func (b *replayBody) Close() error { return nil }

// claimBody frees the request's slot on its backend when the response body
// is closed (ReverseProxy always closes it).
type claimBody struct {
	io.ReadCloser
	claim *balancer.Claim
}

func (b *claimBody) Close() error {
	err := b.ReadCloser.Close()
	b.claim.Release()
	return err
}

// proxyError answers a failed proxied request: 503 + Retry-After when the
// pool had nothing to try, 502 otherwise.
func (rt *Route) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	cs := stateFrom(r.Context())
	in, _ := r.Context().Value(requestKey{}).(*http.Request) // r is ReverseProxy's copy
	if in == nil {
		in = r
	}
	if sb, ok := in.Body.(*streamBody); ok {
		if berr := sb.failed(); berr != nil {
			// The client's body failed, not the backend (issue 10: a
			// client-aborted upload was logged as 502).
			rt.bodyFailed(w, cs, berr)
			return
		}
	}
	reason := ReasonBadGateway
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
