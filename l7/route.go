package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"

	"sluice/balancer"
	"sluice/l4"
	"sluice/tlsutil"
)

// Defaults for the zero values of RouteConfig.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultHeaderTimeout    = 10 * time.Second
	DefaultKeepAliveTimeout = 75 * time.Second
	DefaultBodyTimeout      = 15 * time.Second
)

// Location is one path prefix of a route and what serves it: exactly one of
// Pool, Root and Redirect is set.
type Location struct {
	// Path is a path prefix; the longest matching one wins and "/" matches
	// everything. Matching is a plain string prefix, like nginx's.
	Path string
	// Pool receives WebSocket upgrades and plain HTTP requests.
	Pool *balancer.Pool
	// Root serves static files from this directory, with Path stripped:
	// Path "/static/", Root "web": /static/app.js serves web/app.js.
	Root string
	// Redirect answers 302 with Location: Redirect.
	Redirect string
	// Headers are set on the location's 2xx and 3xx responses (see
	// headerWriter), each valid for CheckHeader; names are
	// case-insensitive. If nil, none.
	Headers map[string]string
	// Gzip compresses responses (compress.go): the static files of Root
	// (and serves their .br/.gz forms), or Pool's proxied responses.
	Gzip bool
	// Fallback (Root only) is served, with 200, for a GET or HEAD with no
	// file: a path under Root ("index.html"). If empty, such a request
	// gets 404.
	Fallback string
}

// RouteConfig describes one L7 route. NewRoute copies what it needs.
type RouteConfig struct {
	Name string
	// Hosts are the normalized names the route answers for, exact
	// ("game.example.com") or wildcard ("*.example.com", one label). A
	// request whose Host (port stripped, lower-cased) is not one of them
	// gets 421 Misdirected Request. If empty, any Host is accepted.
	Hosts []string
	// OtherRoute, when set, makes this the listener's default route: a Host
	// outside Hosts (an IP literal for wss://IP:port, a name no route has)
	// is accepted unless OtherRoute reports it belongs to another route of
	// the listener (connection coalescing), which gets 421.
	OtherRoute func(host string) bool
	// Pool serves everything when Locations is empty.
	Pool      *balancer.Pool
	Locations []Location
	// TLS is the server config (GetCertificate set by the caller); a clone
	// is used with MinVersion at least TLS 1.2 and NextProtos ["http/1.1"],
	// or ["h2", "http/1.1"] with HTTP2. If nil, the route speaks cleartext
	// HTTP (ws://, for development).
	TLS *tls.Config
	// HTTP2 offers h2 in the TLS handshake (h2.go); WebSocket upgrades
	// stay on HTTP/1.1. Ignored for cleartext routes (no h2c).
	HTTP2 bool
	// RedirectHTTPS (cleartext only) answers every request with 308 to
	// https://host/path?query, or https://host:port/path?query with
	// RedirectHTTPSPort (the request's own port is dropped).
	RedirectHTTPS bool
	// RedirectHTTPSPort is the port of RedirectHTTPS's URLs. If zero, or
	// 443, the URL names none.
	RedirectHTTPSPort int
	// HandshakeTimeout is absolute from accept. If zero, 10s is used.
	HandshakeTimeout time.Duration
	// HeaderTimeout bounds a request head: the first one absolutely from the
	// end of the handshake (from accept for cleartext), later ones from
	// their first byte. It also bounds the backend's answer to an upgrade.
	// If zero, 10s is used.
	HeaderTimeout time.Duration
	// KeepAliveTimeout bounds the wait for the next request after a
	// response. If zero, 75s is used.
	KeepAliveTimeout time.Duration
	// BodyTimeout bounds each read of a request body: a body that makes no
	// progress for this long gets 408. If zero, 15s is used.
	BodyTimeout time.Duration
	// RequestBufferBytes: a proxied request body up to this size is read
	// whole before a backend is chosen (see readBody). If zero, 1 MiB.
	RequestBufferBytes int64
	// MaxBodyBytes caps a request body (413 past it). If zero, 16 MiB.
	MaxBodyBytes int64
	// Relay tunes WebSocket tunnels. Its IdleTimeout (default 10m; nginx's
	// proxy_read_timeout cuts at 60s) also caps one plain HTTP exchange and
	// its WriteStallTimeout (default 30s) bounds each response write.
	Relay l4.Options
	// Log receives debug lines only. If nil, zap.NewNop() is used.
	Log *zap.Logger

	slowPaths bool // tests: every request by net/http and the h2 handler's path, no fast path
	// goDialUpgrades (tests): upgrades' backends dialled by Go, never raw.
	goDialUpgrades bool
}

// Result summarizes a finished connection for the caller's access line.
type Result struct {
	Reason   l4.Reason // why the connection ended
	SNI      string    // the TLS server name, if any
	Requests int       // HTTP requests answered on the connection
	Status   int       // the last response status
	Upgraded bool      // a WebSocket tunnel ran
	Backend  string    // id of the backend of the tunnel or of the last proxied request
	// BytesIn and BytesOut count tunnel payload (client→backend and
	// backend→client, including bytes pipelined before the relay); plain
	// HTTP is not counted.
	BytesIn, BytesOut int64
	Relay             l4.Stats // the tunnel's relay stats when Upgraded
	// Handshake is how long the TLS handshake took; 0 for cleartext and
	// when no handshake completed.
	Handshake time.Duration
	// HTTP2 is set when the connection spoke HTTP/2 (ALPN h2).
	HTTP2 bool
	Err   error
}

// ErrClosed is returned in Result.Err by ServeConn on a closed Route.
var ErrClosed = errors.New("l7: route closed")

// Route serves the connections of one L7 route. ServeConn and Close are safe
// for concurrent use.
type Route struct {
	name       string
	log        *zap.Logger
	tls        *tls.Config
	hosts      tlsutil.HostSet[struct{}]
	anyHost    bool
	otherRoute func(string) bool
	locations  []*location     // longest Path first
	slashless  map[string]bool // "/static" for a location "/static/" (and none "/static")
	redirect   bool
	redirectTo string // ":port" of RedirectHTTPS's URLs, or ""

	handshakeTimeout time.Duration
	headerTimeout    time.Duration
	keepAliveTimeout time.Duration
	bodyTimeout      time.Duration
	requestBuffer    int64
	maxBody          int64
	requestCap       time.Duration
	writeStall       time.Duration
	relay            l4.Options
	fast             bool // a location the fast path can serve (fastLocation): h1fast.go first
	fastUpgrade      bool // a location with a pool: upgrades served by h1fast.go too (h1upgrade.go)
	goDialUpgrades   bool // RouteConfig.goDialUpgrades

	srv *http.Server
	h2  bool // HTTP/2 is offered (ALPN h2): h2srv.go serves it
	ln  *handoff
	// handoffs counts the conns given to srv (tests: which requests the
	// HTTP/1.1 loop served itself).
	handoffs atomic.Int64
	// rawTunnels counts the tunnels started on a raw dial's descriptor
	// (tests: which backends were dialled raw).
	rawTunnels atomic.Int64
	served     chan struct{} // srv.Serve returned

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // ServeConn calls in flight

	// Retire: keep-alive ends. live and liveH2 are the route's
	// connections, under mu (a tunnel stays in live until it ends;
	// endKeepAlive leaves it alone).
	retired atomic.Bool
	live    map[*vconn]struct{}
	liveH2  map[*h2conn]struct{}
}

type location struct {
	path    string
	handler http.Handler // static or redirect; nil for a pool
	static  bool         // handler serves files
	proxy   *proxy       // pool
	headers http.Header  // Location.Headers, values clipped; nil if none
	gzip    bool         // compress proxied responses (static: its handler)
	// headerKeys are headers' names, sorted (the fast paths write them);
	// slowHeaders: a Date or Set-Cookie among them, which the fast paths
	// leave to the handler's path (headerWriter).
	headerKeys  []string
	slowHeaders bool
}

// NewRoute validates cfg and starts the route's http.Server.
func NewRoute(cfg RouteConfig) (*Route, error) {
	rt := &Route{
		name:             cfg.Name,
		log:              cfg.Log,
		redirect:         cfg.RedirectHTTPS,
		slashless:        map[string]bool{},
		live:             map[*vconn]struct{}{},
		liveH2:           map[*h2conn]struct{}{},
		handshakeTimeout: orDefault(cfg.HandshakeTimeout, DefaultHandshakeTimeout),
		headerTimeout:    orDefault(cfg.HeaderTimeout, DefaultHeaderTimeout),
		keepAliveTimeout: orDefault(cfg.KeepAliveTimeout, DefaultKeepAliveTimeout),
		bodyTimeout:      orDefault(cfg.BodyTimeout, DefaultBodyTimeout),
		requestBuffer:    orDefault(cfg.RequestBufferBytes, DefaultRequestBufferBytes),
		maxBody:          orDefault(cfg.MaxBodyBytes, DefaultMaxBodyBytes),
		requestCap:       orDefault(cfg.Relay.IdleTimeout, l4.DefaultIdleTimeout),
		writeStall:       orDefault(cfg.Relay.WriteStallTimeout, l4.DefaultWriteStallTimeout),
		relay:            cfg.Relay,
	}
	if rt.log == nil {
		rt.log = zap.NewNop()
	}
	rt.log = rt.log.Named("l7")
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("l7: route %q: "+format, append([]any{cfg.Name}, args...)...))
	}
	if cfg.TLS != nil {
		if cfg.RedirectHTTPS {
			bad("redirect_https is for cleartext routes only")
		}
		rt.tls = cfg.TLS.Clone()
		rt.tls.MinVersion = max(rt.tls.MinVersion, tls.VersionTLS12)
		// Without HTTP2, only HTTP/1.1: a client offering only h2 fails the
		// handshake with no_application_protocol (crypto/tls, RFC 7301
		// Section 3.2).
		rt.tls.NextProtos = []string{"http/1.1"}
		if cfg.HTTP2 {
			rt.tls.NextProtos = []string{http2.NextProtoTLS, "http/1.1"}
		}
	}
	rt.anyHost = len(cfg.Hosts) == 0
	rt.otherRoute = cfg.OtherRoute
	for i, h := range cfg.Hosts {
		p, err := tlsutil.ParseHostPattern(h)
		if err != nil || p.String() != h {
			bad("hosts[%d]: %q is not a normalized host name", i, h)
			continue
		}
		rt.hosts.Add(p, struct{}{})
	}
	locs := cfg.Locations
	if len(locs) == 0 && !cfg.RedirectHTTPS {
		if cfg.Pool == nil {
			bad("no pool and no locations")
		}
		locs = []Location{{Path: "/", Pool: cfg.Pool}}
	}
	for _, e := range CheckLocations(locs, func(i int) bool { return locs[i].Pool != nil }) {
		bad("%v", e)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, l := range locs {
		seen[l.Path] = true
		loc := &location{path: l.Path, gzip: l.Gzip && l.Pool != nil}
		for k, v := range l.Headers {
			if loc.headers == nil {
				loc.headers = http.Header{}
			}
			k = http.CanonicalHeaderKey(k)
			loc.headers[k] = []string{v} // cap 1: an append copies
			loc.headerKeys = append(loc.headerKeys, k)
			loc.slowHeaders = loc.slowHeaders || k == "Date" || k == "Set-Cookie"
		}
		slices.Sort(loc.headerKeys)
		switch {
		case l.Pool != nil:
			loc.proxy = newProxy(rt, l.Pool)
		case l.Root != "":
			fallback := ""
			if l.Fallback != "" {
				fallback = path.Clean("/" + l.Fallback)
			}
			loc.handler = newStatic(l.Path, l.Root, fallback, l.Gzip)
			loc.static = true
		default:
			loc.handler = redirectHandler(l.Redirect)
		}
		rt.locations = append(rt.locations, loc)
	}
	slices.SortFunc(rt.locations, func(a, b *location) int { return len(b.path) - len(a.path) })
	rt.fast = !rt.redirect && !cfg.slowPaths && slices.ContainsFunc(rt.locations, fastLocation)
	rt.goDialUpgrades = cfg.goDialUpgrades
	rt.fastUpgrade = !rt.redirect && !cfg.slowPaths && slices.ContainsFunc(rt.locations, func(l *location) bool { return l.proxy != nil })
	for _, l := range rt.locations {
		if p, ok := strings.CutSuffix(l.path, "/"); ok && p != "" && !seen[p] {
			rt.slashless[p] = true
		}
	}
	if p := cfg.RedirectHTTPSPort; p != 0 && p != 443 {
		rt.redirectTo = ":" + strconv.Itoa(p)
	}

	rt.ctx, rt.cancel = context.WithCancel(context.Background())
	rt.ln = newHandoff()
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	rt.srv = &http.Server{
		Handler:   http.HandlerFunc(rt.serveHTTP),
		Protocols: protos,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connStateKey{}, c.(vconner).v().cs)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateIdle {
				c.(vconner).v().responseDone()
			}
		},
		// Deadlines are the vconn's: net/http's would be relative and
		// cleared between phases.
		MaxHeaderBytes:               maxHeadBytes,
		DisableGeneralOptionsHandler: true,
	}
	if l, err := zap.NewStdLogAt(rt.log.Named("http"), zap.DebugLevel); err == nil {
		rt.srv.ErrorLog = l // net/http's own complaints: debug only
	}
	rt.h2 = cfg.HTTP2 && rt.tls != nil
	rt.served = make(chan struct{})
	go rt.serve()
	return rt, nil
}

func (rt *Route) serve() {
	defer close(rt.served)
	_ = rt.srv.Serve(rt.ln) // returns when ln is closed
}

func orDefault[T time.Duration | int64](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Close stops the route: new ServeConn calls fail, connections in flight
// (tunnels included) are closed, and Close returns once every ServeConn call
// and the route's goroutines have ended.
func (rt *Route) Close() error {
	rt.mu.Lock()
	already := rt.closed
	rt.closed = true
	rt.mu.Unlock()
	if already {
		return nil
	}
	rt.cancel()
	_ = rt.ln.Close()
	<-rt.served
	rt.wg.Wait()
	for _, l := range rt.locations {
		if l.proxy != nil {
			l.proxy.tr.CloseIdleConnections()
			if l.proxy.conns != nil {
				l.proxy.conns.close()
			}
		}
	}
	return nil
}

// Retire ends keep-alive on the route's connections, because its config
// was replaced by a reload or sluice is shutting down, so that the next
// request of every client goes through a new connection (and the config
// that serves it now), as nginx's and HAProxy's reloads do:
//   - an HTTP/1.1 connection between requests closes now; one with a
//     request in flight answers it with Connection: close, then closes;
//   - an HTTP/2 connection gets GOAWAY and closes once its streams are done;
//   - WebSocket tunnels run on, untouched;
//   - a connection that arrives later is served one request.
//
// Retire returns at once; it is idempotent.
func (rt *Route) Retire() {
	rt.mu.Lock()
	if rt.retired.Swap(true) {
		rt.mu.Unlock()
		return
	}
	vs := make([]*vconn, 0, len(rt.live))
	for v := range rt.live {
		vs = append(vs, v)
	}
	hs := make([]*h2conn, 0, len(rt.liveH2))
	for h := range rt.liveH2 {
		hs = append(hs, h)
	}
	rt.mu.Unlock()
	for _, v := range vs {
		v.endKeepAlive()
	}
	for _, h := range hs {
		h.goAway()
	}
}

// track and untrack keep the registries Retire walks.
func (rt *Route) track(v *vconn, h *h2conn) {
	rt.mu.Lock()
	if v != nil {
		rt.live[v] = struct{}{}
	}
	if h != nil {
		rt.liveH2[h] = struct{}{}
	}
	rt.mu.Unlock()
}

func (rt *Route) untrack(v *vconn, h *h2conn) {
	rt.mu.Lock()
	delete(rt.live, v)
	delete(rt.liveH2, h)
	rt.mu.Unlock()
}

type clientAddrKey struct{}

// WithClientAddr returns a ctx that makes ServeConn use addr as the client's
// address (X-Forwarded-For, X-Real-IP, the PROXY header to backends) instead
// of the socket's peer: for a listener that accepted a trusted PROXY header.
func WithClientAddr(ctx context.Context, addr net.Addr) context.Context {
	return context.WithValue(ctx, clientAddrKey{}, addr)
}

// ServeConn serves one accepted connection whose first bytes, prefix (the
// peeked ClientHello for TLS, the bytes read so far for cleartext), were
// already read from c. It runs the TLS handshake under accepted +
// HandshakeTimeout, then HTTP/1.1, and returns once c is closed. ServeConn
// owns c. Cancelling ctx closes the connection (drain).
func (rt *Route) ServeConn(ctx context.Context, c *net.TCPConn, prefix []byte, accepted time.Time) Result {
	res := make(chan Result, 1)
	rt.Serve(ctx, c, nil, prefix, accepted, func(r Result) { res <- r })
	return <-res
}

// Serve is ServeConn without the wait: it runs the TLS handshake on the
// caller's goroutine, hands the connection to the route's HTTP server and
// returns. done is called once with the Result when the connection has
// ended: on the caller's goroutine if it ended before HTTP (a failed
// handshake, a closed route), else on the goroutine that ended it (net/http's
// or, for a WebSocket tunnel, the relay's).
//
// The caller's goroutine grew its stack in the handshake; returning frees it
// for the connection's whole life, and a tunnel leaves no HTTP goroutine or
// buffer behind either: an idle wss:// player costs its TLS state and two
// relay goroutines.
//
// client is the player's address, as logs, X-Forwarded-For, X-Real-IP, the
// client_ip hash key and PROXY headers to backends see it: the source of a
// PROXY header the listener read, or nil for c's peer.
func (rt *Route) Serve(ctx context.Context, c *net.TCPConn, client net.Addr, prefix []byte, accepted time.Time, done func(Result)) {
	if client == nil {
		client = c.RemoteAddr()
	}
	rt.mu.Lock()
	if rt.closed {
		rt.mu.Unlock()
		_ = c.Close()
		done(Result{Reason: l4.ReasonDrain, Err: ErrClosed})
		return
	}
	rt.wg.Add(1)
	rt.mu.Unlock()

	cctx, cancel := context.WithCancel(ctx)
	stopRoute := context.AfterFunc(rt.ctx, cancel)
	end := func(res Result) {
		stopRoute()
		cancel()
		rt.wg.Done()
		done(res)
	}

	cs := &connState{ctx: cctx, client: client, local: c.LocalAddr(), tls: rt.tls != nil}
	if a, ok := ctx.Value(clientAddrKey{}).(net.Addr); ok && a != nil {
		cs.client = a
	}
	cs.ip = clientIP(cs.client)

	var tc net.Conn = c
	var rw *recordWriter
	start := accepted
	if rt.tls != nil {
		// One absolute deadline for the handshake, read and write; it stays
		// until the first head's deadline replaces it (rule 1).
		_ = c.SetDeadline(accepted.Add(rt.handshakeTimeout))
		rw = &recordWriter{Conn: tlsutil.NewPrefixConn(c, prefix), sock: newSockIO(c)}
		t := tls.Server(rw, rt.tls)
		hs := time.Now()
		if err := t.HandshakeContext(cctx); err != nil {
			reason := ReasonHandshakeFailed
			switch {
			case isTimeout(err):
				reason = ReasonHandshakeTimeout
			case cctx.Err() != nil:
				reason = l4.ReasonDrain
			}
			_ = c.Close() // a FIN after crypto/tls's alert, if any: no RST to race it
			if ce := rt.log.Check(zap.DebugLevel, "tls handshake failed"); ce != nil {
				ce.Write(zap.String("route", rt.name), zap.Stringer("client", cs.client), zap.Error(err))
			}
			end(Result{Reason: reason, Err: err})
			return
		}
		start = time.Now()
		cs.res.Handshake = start.Sub(hs)
		state := t.ConnectionState()
		cs.sni = state.ServerName
		cs.res.SNI = cs.sni
		if state.NegotiatedProtocol == http2.NextProtoTLS && rt.h2 {
			cs.h2 = true
			cs.end = func() { end(cs.result()) }
			go rt.serveH2(cs, t, c, rw, start)
			return
		}
		tc, prefix = t, nil
	}
	v := newVconn(rt, cs, tc, c, prefix, start)
	v.rw = rw
	cs.v = v
	_ = c.SetReadDeadline(v.firstDL)
	_ = c.SetWriteDeadline(v.firstDL)

	stop := context.AfterFunc(cctx, v.closeHard)
	rt.track(v, nil)
	cs.end = func() {
		stop()
		rt.untrack(v, nil)
		end(cs.result())
	}
	var hc net.Conn = v
	if rt.tls != nil {
		hc = tlsVconn{v}
	}
	if rt.fast || rt.fastUpgrade {
		go rt.serveH1(v, hc)
		return
	}
	rt.handOff(v, hc)
}

// handOff gives the connection to the route's http.Server.
func (rt *Route) handOff(v *vconn, hc net.Conn) {
	rt.handoffs.Add(1)
	select {
	case rt.ln.c <- hc:
	case <-rt.ln.closed:
		v.cs.setReason(l4.ReasonDrain, ErrClosed)
		v.hard.Store(true)
		_ = v.Close() // ends it: cs.end
	}
}

type connStateKey struct{}

func stateFrom(ctx context.Context) *connState {
	cs, _ := ctx.Value(connStateKey{}).(*connState)
	return cs
}

// statusWriter records the status of a response for the Result, and
// closes keep-alive on a response that starts after Retire: net/http closes
// the connection after it, h2server sends GOAWAY (and drops the header).
type statusWriter struct {
	http.ResponseWriter
	status  int
	retired *atomic.Bool // the route's
}

// starts runs before the final response's header goes out.
func (w *statusWriter) starts(code int) {
	w.status = code
	if w.retired != nil && w.retired.Load() {
		w.Header().Set("Connection", "close")
	}
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.starts(code)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.starts(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// ReadFrom lets io.Copy into the response (http.ServeContent's) use
// net/http's pooled copy buffer: without it io.Copy allocated one per
// response, 20 KiB for issue 10's static file and 85% of the bytes the
// http-static bench allocated.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.starts(http.StatusOK)
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	// HTTP/2's ResponseWriter has none: a pooled buffer too (BenchmarkH2,
	// static/h2: 29 KB allocated per 20 KiB file without it).
	bp := copyBuffers.get()
	defer copyBuffers.put(bp)
	return io.CopyBuffer(struct{ io.Writer }{w.ResponseWriter}, r, *bp)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serveHTTP is the route's handler: Host check, path check, location.
func (rt *Route) serveHTTP(w http.ResponseWriter, r *http.Request) {
	cs := stateFrom(r.Context())
	sw := &cs.sw // one request at a time per HTTP/1.1 conn
	if cs.h2 {
		sw = &statusWriter{} // streams run at once
	}
	*sw = statusWriter{ResponseWriter: w, retired: &rt.retired}
	tunneled := false
	defer func() {
		cs.mu.Lock()
		cs.res.Requests++
		if sw.status != 0 {
			cs.res.Status = sw.status
		}
		cs.mu.Unlock()
		// Drop net/http's response: a tunnel keeps cs for its whole life,
		// and the response (its buffers, the request) would stay with it
		// (+11 KiB per idle wss:// player, BenchmarkIdleWSSMemory).
		*sw = statusWriter{}
		if tunneled {
			cs.tunnelDone() // net/http will not Close a hijacked conn
		}
	}()
	upgrade := len(r.Header["Upgrade"]) > 0
	if upgrade {
		// What follows an upgrade request is not HTTP: any answer but a
		// tunnel closes the connection (rule 5).
		w.Header().Set("Connection", "close")
	}
	if r.Host == "" {
		rt.refuse(sw, cs, http.StatusBadRequest, ReasonBadRequest, "missing Host")
		return
	}
	host, ok := rt.hostAllowed(r.Host)
	if !ok {
		rt.refuse(sw, cs, http.StatusMisdirectedRequest, ReasonMisdirected, "misdirected request")
		return
	}
	if hasDotSegment(r.URL.Path) || !strings.HasPrefix(r.URL.Path, "/") && r.URL.Path != "" {
		rt.refuse(sw, cs, http.StatusBadRequest, ReasonBadRequest, "invalid path")
		return
	}
	if rt.redirect {
		target := r.URL.RequestURI()
		if !strings.HasPrefix(target, "/") {
			target = "/"
		}
		w.Header().Set("Location", "https://"+host+rt.redirectTo+target)
		sw.WriteHeader(http.StatusPermanentRedirect)
		return
	}
	if !upgrade && rt.slashless[r.URL.Path] {
		localRedirect(sw, r) // nginx's answer for a location "/static/"
		return
	}
	loc := rt.match(r.URL.Path)
	switch {
	case loc == nil:
		http.NotFound(sw, r)
	case upgrade && loc.proxy == nil:
		rt.refuse(sw, cs, http.StatusBadRequest, ReasonUpgradeRejected, "no WebSocket at this path")
	case upgrade:
		tunneled = rt.serveUpgrade(sw, r, cs, loc.proxy.pool)
	case loc.proxy != nil:
		if rt.readBody(sw, r, cs) {
			loc.serve(sw, r)
		}
	case loc.static:
		held := cs.v.hold()
		loc.serve(sw, r)
		if held && cs.v.unhold() != nil {
			panic(http.ErrAbortHandler) // as a failed write would: the conn closes
		}
	default:
		loc.serve(sw, r)
	}
}

// serve answers a request that is not an upgrade with the location's
// pool, files or redirect, adding its headers and compressing proxied
// responses (gzipWriter) if so configured.
func (l *location) serve(w http.ResponseWriter, r *http.Request) {
	var gw *gzipWriter
	if l.gzip && r.Method != http.MethodHead && len(r.Header["Range"]) == 0 {
		gz, _ := acceptEncoding(r.Header["Accept-Encoding"])
		gw = newGzipWriter(w, gz > 0)
		w = gw
	}
	if l.headers != nil {
		w = &headerWriter{ResponseWriter: w, add: l.headers}
	}
	if l.proxy != nil {
		l.proxy.ServeHTTP(w, r)
	} else {
		l.handler.ServeHTTP(w, r)
	}
	if gw != nil && gw.finish() != nil {
		panic(http.ErrAbortHandler) // as a failed write would: the conn closes
	}
}

// refuse answers an error and closes the connection; on HTTP/2 it ends
// only the stream (h2server would take Connection: close for a GOAWAY), and
// the connection's reason stays why the connection ends.
func (rt *Route) refuse(w http.ResponseWriter, cs *connState, code int, reason l4.Reason, msg string) {
	h := w.Header()
	if !cs.h2 {
		cs.mu.Lock()
		cs.res.Reason, cs.res.Err = reason, errors.New("l7: "+msg)
		cs.mu.Unlock()
		h.Set("Connection", "close")
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, msg)
}

// hostAllowed normalizes a Host header (port and one trailing dot stripped,
// lower-cased) and reports whether the route answers for it.
func (rt *Route) hostAllowed(hostport string) (string, bool) {
	h := hostport
	if strings.IndexByte(hostport, ':') >= 0 { // no error to allocate for a Host without port
		if host, _, err := net.SplitHostPort(hostport); err == nil {
			h = host
		}
	}
	h = strings.TrimSuffix(h, ".")
	n, ok := tlsutil.NormalizeSNI(h)
	if rt.anyHost {
		if ok {
			return n, true
		}
		if strings.Contains(h, ":") {
			return "[" + strings.Trim(h, "[]") + "]", true
		}
		return h, true
	}
	if ok {
		if _, found := rt.hosts.Lookup(n); found {
			return n, true
		}
	}
	if rt.otherRoute == nil || (ok && rt.otherRoute(n)) {
		return "", false
	}
	if ok {
		return n, true
	}
	if strings.Contains(h, ":") {
		return "[" + strings.Trim(h, "[]") + "]", true
	}
	return h, true
}

// match returns the location with the longest prefix of path.
func (rt *Route) match(path string) *location {
	if path == "" {
		path = "/"
	}
	for _, l := range rt.locations {
		if strings.HasPrefix(path, l.path) {
			return l
		}
	}
	return nil
}

// hasDotSegment reports whether a decoded path has a "." or ".." segment: a
// path a backend may resolve to another location than ours.
func hasDotSegment(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

func redirectHandler(target string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", target)
		w.WriteHeader(http.StatusFound)
	})
}
