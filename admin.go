package main

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"sluice/balancer"
)

// Admin server timeouts: its clients are Prometheus, curl, an orchestrator
// and the status page, all nearby; a slow one must not hold a goroutine.
const (
	adminReadHeaderTimeout = 5 * time.Second
	adminReadTimeout       = 10 * time.Second
	adminWriteTimeout      = 30 * time.Second
	adminIdleTimeout       = 60 * time.Second
	adminShutdownTimeout   = 2 * time.Second
	adminMaxHeaderBytes    = 16 << 10
)

// GET /api/v1/backends/{pool}/{id}/wait: the default and longest wait, how
// often a waiter looks at the backend (a few atomic loads: a preStop hook
// learns within a quarter second, no tight loop), and how many may wait at
// once (each holds a connection and a goroutine; the endpoint needs no
// token).
const (
	adminWaitDefault = 10 * time.Minute
	adminWaitMax     = time.Hour
	adminWaitPoll    = 250 * time.Millisecond
	adminMaxWaiters  = 256
)

// The status page: plain files, no build step, no external resources.
var (
	//go:embed status.html
	statusHTML []byte
	//go:embed status.js
	statusJS []byte
	//go:embed status.css
	statusCSS []byte
)

// admin is the operations endpoint ([admin] listen): Prometheus metrics,
// liveness and readiness, the state API, backend drain/maint/ready, reload
// and the status page. GETs are open (it listens on loopback unless a token
// is set, config.go enforces that); when [admin] token is set every POST
// needs "Authorization: Bearer <token>".
type admin struct {
	s      *server
	m      *metrics
	reload func() error // nil: POST /api/v1/reload answers 501
	log    *zap.Logger
	// writeTimeout is the server's WriteTimeout: adminWriteTimeout (tests
	// shorten it before start).
	writeTimeout time.Duration

	mu   sync.Mutex
	srv  *http.Server
	done chan struct{} // Serve returned

	waiters   atomic.Int32  // GET .../wait in progress
	closing   chan struct{} // closed by stop: waiters answer at once
	closeOnce sync.Once
}

// newAdmin returns the admin endpoint of s; start serves it.
func newAdmin(s *server, m *metrics, reload func() error) *admin {
	m.trackConnections(func() (int64, int64) { return s.active.Load(), s.maxConns.Load() })
	return &admin{s: s, m: m, reload: reload, log: s.log.Named("admin"),
		writeTimeout: adminWriteTimeout, closing: make(chan struct{})}
}

// handler routes the admin endpoints.
func (a *admin) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.m.handler())
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.HandleFunc("GET /api/v1/state", a.getState)
	mux.HandleFunc("POST /api/v1/backends/{pool}/{address}/{state}", a.authorized(a.setBackendState))
	mux.HandleFunc("GET /api/v1/backends/{pool}/{id}/wait", a.waitBackend)
	mux.HandleFunc("POST /api/v1/reload", a.authorized(a.doReload))
	mux.HandleFunc("GET /{$}", static("text/html; charset=utf-8", statusHTML))
	mux.HandleFunc("GET /status.js", static("text/javascript; charset=utf-8", statusJS))
	mux.HandleFunc("GET /status.css", static("text/css; charset=utf-8", statusCSS))
	// A web page the operator visits must not drive the API from their
	// browser: cross-site POSTs are refused (Sec-Fetch-Site / Origin), and
	// without a token so is any Host that is not this machine (DNS rebinding).
	return http.NewCrossOriginProtection().Handler(a.checkHost(mux))
}

// start binds addr and serves in the background. The returned address is
// bound (tests pass 127.0.0.1:0). It fails if the admin server runs already.
func (a *admin) start(addr string) (net.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.srv != nil {
		return nil, errors.New("admin: already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin.listen: %w", err)
	}
	a.srv = &http.Server{
		Handler:           a.handler(),
		ReadHeaderTimeout: adminReadHeaderTimeout,
		ReadTimeout:       adminReadTimeout,
		WriteTimeout:      a.writeTimeout,
		IdleTimeout:       adminIdleTimeout,
		MaxHeaderBytes:    adminMaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(a.log.WithOptions(zap.IncreaseLevel(zapcore.WarnLevel))),
	}
	a.done = make(chan struct{})
	go a.serve(a.srv, ln, a.done)
	return ln.Addr(), nil
}

func (a *admin) serve(srv *http.Server, ln net.Listener, done chan struct{}) {
	defer close(done)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error("admin server failed", zap.Error(err))
	}
}

// stop closes the admin server: requests in flight get a short grace, then
// their connections close. It returns once the server's goroutines ended.
func (a *admin) stop() {
	a.closeOnce.Do(func() { close(a.closing) })
	a.mu.Lock()
	srv, done := a.srv, a.done
	a.srv = nil
	a.mu.Unlock()
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminShutdownTimeout)
	defer cancel()
	if srv.Shutdown(ctx) != nil {
		srv.Close()
	}
	<-done
}

// healthz is liveness: the process answers.
func (a *admin) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprintln(w, "ok")
}

// readyz is readiness: a config is loaded and every listener of it is
// bound. It fails from the moment a shutdown closes the listeners, so an
// upstream load balancer stops sending players during the drain.
func (a *admin) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := a.ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (a *admin) ready() error {
	rt := a.s.rt.Load()
	if rt == nil {
		return errors.New("no configuration loaded")
	}
	for _, name := range sortedKeys(rt.Listeners) {
		if a.s.addr(name) == nil {
			return fmt.Errorf("listener %s is not bound", name)
		}
	}
	return nil
}

func (a *admin) getState(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.state())
}

// setBackendState is POST /api/v1/backends/{pool}/{address}/{state} (the
// backend's id or address): drain,
// maint or ready one backend of the current config. It answers the
// backend's new status.
func (a *admin) setBackendState(w http.ResponseWriter, r *http.Request) {
	pname, addr := r.PathValue("pool"), r.PathValue("address")
	p := a.s.rt.Load().Pools[pname]
	if p == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown pool %q", pname))
		return
	}
	st, err := balancer.ParseAdminState(r.PathValue("state"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := p.SetState(addr, st); err != nil {
		if errors.Is(err, balancer.ErrUnknownBackend) {
			writeError(w, http.StatusNotFound, fmt.Sprintf("pool %q has no backend %q", pname, addr))
			return
		}
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	a.log.Info("backend admin state set", zap.String("pool", pname), zap.String("backend", addr),
		zap.String("state", st.String()), zap.String("client", r.RemoteAddr))
	for _, b := range p.Status() {
		if b.ID == addr || b.Address == addr {
			writeJSON(w, http.StatusOK, backendState(b))
			return
		}
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("pool %q has no backend %q", pname, addr))
}

// waitJSON answers GET /api/v1/backends/{pool}/{id}/wait.
type waitJSON struct {
	Pool    string `json:"pool"`
	Backend string `json:"backend"` // its id
	Address string `json:"address"`
	State   string `json:"state"` // ready | drain | maint
	// Removed: discovery or a reload took it out of the pool; its
	// connections drain.
	Removed bool  `json:"removed"`
	Active  int64 `json:"active"`
	// Drained: it takes no new unkeyed player (drain, maint or removed)
	// and has no live connection.
	Drained bool   `json:"drained"`
	Error   string `json:"error,omitempty"`
}

// waitBackend is GET /api/v1/backends/{pool}/{id}/wait?until=drained&
// timeout=10m (id or address): it answers 200 once the backend is drained
// (see waitJSON.Drained; at once if it is already), 504 when timeout
// passes first, 503 when sluice shuts down, all with the backend's
// current state. A Kubernetes preStop hook or an Agones sidecar calls it
// after POST .../drain (or after the server reported drain through its
// agent, or left DNS). It follows the backend through reloads and
// discovery changes: its connections are counted wherever they were
// made. Read-only, so open like the other GETs.
func (a *admin) waitBackend(w http.ResponseWriter, r *http.Request) {
	pname, id := r.PathValue("pool"), r.PathValue("id")
	q := r.URL.Query()
	if u := q.Get("until"); u != "drained" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("until=%q: want until=drained", u))
		return
	}
	timeout := adminWaitDefault
	if v := q.Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("timeout=%q: want a positive Go duration such as 10m", v))
			return
		}
		timeout = min(d, adminWaitMax)
	}
	p := a.s.rt.Load().Pools[pname]
	if p == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown pool %q", pname))
		return
	}
	b, removed := p.Find(id)
	if b == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("pool %q has no backend %q (a removed one is forgotten once its connections ended)", pname, id))
		return
	}
	if a.waiters.Add(1) > adminMaxWaiters {
		a.waiters.Add(-1)
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("more than %d waits in progress", adminMaxWaiters))
		return
	}
	defer a.waiters.Add(-1)
	// The server's write timeout, counted from the request, would lose an
	// answer that comes later.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(timeout + a.writeTimeout))

	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	tick := time.NewTicker(adminWaitPoll)
	defer tick.Stop()
	for {
		st := waitJSON{Pool: pname, Backend: b.ID(), Address: b.Addr(), State: b.AdminState().String(),
			Removed: removed, Active: b.Active()}
		st.Drained = (removed || b.AdminState() != balancer.Ready) && st.Active == 0
		if st.Drained {
			writeJSON(w, http.StatusOK, st)
			return
		}
		select {
		case <-tick.C:
			b, removed = a.follow(pname, b)
		case <-ctx.Done():
			if r.Context().Err() != nil {
				return // the client left
			}
			st.Error = fmt.Sprintf("not drained within %v", timeout)
			writeJSON(w, http.StatusGatewayTimeout, st)
			return
		case <-a.closing:
			st.Error = "sluice is shutting down"
			writeJSON(w, http.StatusServiceUnavailable, st)
			return
		}
	}
}

// follow finds b again in the Runtime serving now, after a reload or a
// discovery change: the backend of the same id and address, current or
// draining. When there is none, b itself (its connections still count
// there) is reported removed.
func (a *admin) follow(pname string, b *balancer.Backend) (*balancer.Backend, bool) {
	if p := a.s.rt.Load().Pools[pname]; p != nil {
		if nb, removed := p.Find(b.ID()); nb != nil && nb.Addr() == b.Addr() {
			return nb, removed
		}
	}
	return b, true
}

// doReload is POST /api/v1/reload: the same reload as SIGHUP. A config
// with errors is refused (422, the old one keeps serving) with every
// problem in the answer.
func (a *admin) doReload(w http.ResponseWriter, r *http.Request) {
	if a.reload == nil {
		writeError(w, http.StatusNotImplemented, "reload is not available")
		return
	}
	a.log.Info("reload requested", zap.String("client", r.RemoteAddr))
	if err := a.reload(); err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
			"ok": false, "error": err.Error(), "version": a.s.rt.Load().Version,
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "version": a.s.rt.Load().Version})
}

// authorized requires the bearer token of the current config, if it has
// one, compared in constant time.
func (a *admin) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token := a.s.rt.Load().AdminToken
		if token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="sluice admin"`)
				writeError(w, http.StatusUnauthorized, "missing or wrong bearer token ([admin] token)")
				return
			}
		}
		h(w, r)
	}
}

// checkHost refuses, when no token is configured, requests whose Host is
// not a loopback name or address: the admin server then listens on loopback
// only, and another Host means a DNS rebinding page in a local browser.
func (a *admin) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.s.rt.Load().AdminToken == "" {
			host := r.Host
			if h, _, err := net.SplitHostPort(host); err == nil {
				host = h
			}
			if !isLoopback(strings.Trim(host, "[]")) {
				writeError(w, http.StatusMisdirectedRequest, "the admin server without a token answers loopback host names only")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func static(contentType string, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		w.Write(body)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
