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

	mu   sync.Mutex
	srv  *http.Server
	done chan struct{} // Serve returned
}

// newAdmin returns the admin endpoint of s; start serves it.
func newAdmin(s *server, m *metrics, reload func() error) *admin {
	m.trackConnections(func() (int64, int64) { return s.active.Load(), s.maxConns.Load() })
	return &admin{s: s, m: m, reload: reload, log: s.log.Named("admin")}
}

// handler routes the admin endpoints.
func (a *admin) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.m.handler())
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.HandleFunc("GET /api/v1/state", a.getState)
	mux.HandleFunc("POST /api/v1/backends/{pool}/{address}/{state}", a.authorized(a.setBackendState))
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
		WriteTimeout:      adminWriteTimeout,
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
