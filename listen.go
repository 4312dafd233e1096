package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"sluice/balancer"
	"sluice/l4"
	"sluice/l7"
	"sluice/tlsutil"
)

// Keepalive of accepted connections (RELIABILITY T17); listenConfig
// (sockopt_linux.go, sockopt_other.go) sets them.
const (
	keepAliveIdle     = 30 * time.Second
	keepAliveInterval = 10 * time.Second
	keepAliveCount    = 3

	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = 100 * time.Millisecond

	// rejectWriteTimeout bounds writing a refusal (TLS alert, HTTP 400) to a
	// client that does not read; lingerTimeout bounds the read-and-discard
	// before close, so the refusal is not destroyed by a RST (unread input at
	// close makes Linux reset the connection).
	rejectWriteTimeout = time.Second
	lingerTimeout      = 500 * time.Millisecond
)

// misdirected answers a cleartext request whose Host no route serves.
const misdirected = "HTTP/1.1 421 Misdirected Request\r\nContent-Type: text/plain\r\nContent-Length: 25\r\nConnection: close\r\n\r\nNo route for this Host.\r\n"

// httpOnTLSPort is what a plain HTTP client gets on a TLS port: exactly Go's
// net/http answer, as RELIABILITY T3 fixes it (HTTP/1.0: the close ends it).
const httpOnTLSPort = "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"

// server runs the listeners of one Runtime and every connection they accept.
type server struct {
	log       *zap.Logger // access lines and lifecycle: never sampled
	rejectLog *zap.Logger // refusals before routing: sampled per reason (RELIABILITY T26)

	rt       atomic.Pointer[Runtime]
	maxConns atomic.Int64
	active   atomic.Int64
	released chan struct{} // wakes an accept loop backing off on EMFILE

	mu        sync.Mutex
	listeners map[string]*net.TCPListener // by listenerRuntime.key: a reload keeps them
	timers    map[*time.Timer]struct{}    // drains of backends removed by a reload

	configPath string     // what reload reads
	reloadMu   sync.Mutex // one reload at a time
	onReload   func(ok bool)
	stopWatch  chan struct{}
	watchers   sync.WaitGroup
	stopping   atomic.Bool

	ctx     context.Context // cancelled when the drain ends: relays close
	cancel  context.CancelFunc
	accepts sync.WaitGroup
	conns   sync.WaitGroup

	rejected sync.Map // l4.Reason → *atomic.Uint64, read by tests
	metrics  *metrics
}

func newServer(rt *Runtime, log *zap.Logger, rejectLog *zap.Logger) *server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{
		log:       log,
		rejectLog: rejectLog,
		released:  make(chan struct{}, 1),
		listeners: map[string]*net.TCPListener{},
		timers:    map[*time.Timer]struct{}{},
		stopWatch: make(chan struct{}),
		ctx:       ctx,
		cancel:    cancel,
	}
	s.rt.Store(rt)
	s.setMaxConns(rt)
	s.metrics = newMetrics(s.rt.Load)
	s.metrics.trackConnections(func() (int64, int64) { return s.active.Load(), s.maxConns.Load() })
	s.onReload = s.metrics.reloaded
	return s
}

func (s *server) setMaxConns(rt *Runtime) {
	n := int64(rt.MaxConnections)
	if n == 0 {
		n = autoMaxConnections()
	}
	s.maxConns.Store(n)
}

// autoMaxConnections derives the global cap from the open-file limit (Go
// raises the soft limit to the hard one at start), so sluice refuses new
// players cleanly instead of failing on EMFILE (RELIABILITY T18).
func autoMaxConnections() int64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == unix.RLIM_INFINITY {
		return 10000
	}
	n := (int64(lim.Cur) - fdReserve) / fdsPerSession
	return max(n, 16)
}

// listen binds every listener, or none: on error the ones bound are closed.
func (s *server) listen() error {
	_, err := s.bindNew(s.rt.Load())
	return err
}

// bindNew binds the listener addresses of rt that are not bound yet, all or
// none, and returns them. Addresses already bound are kept as they are: a
// reload never closes and reopens a socket (no connection refused).
func (s *server) bindNew(rt *Runtime) ([]string, error) {
	lc := listenConfig()
	s.mu.Lock()
	defer s.mu.Unlock()
	var added []string
	for _, name := range sortedKeys(rt.Listeners) {
		key, addr := rt.Listeners[name].key, rt.Listeners[name].address
		if _, bound := s.listeners[key]; bound {
			continue
		}
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			for _, a := range added {
				s.listeners[a].Close()
				delete(s.listeners, a)
			}
			return nil, fmt.Errorf("listeners.%s: %w", name, err)
		}
		s.listeners[key] = ln.(*net.TCPListener)
		added = append(added, key)
	}
	return added, nil
}

// addr returns the bound address of a listener (tests listen on port 0).
func (s *server) addr(name string) net.Addr {
	lr := s.rt.Load().Listeners[name]
	if lr == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ln := s.listeners[lr.key]; ln != nil {
		return ln.Addr()
	}
	return nil
}

// serve starts the pools' health checks and one accept loop per bound
// listener.
func (s *server) serve() {
	rt := s.rt.Load()
	rt.OnHealthChange(s.logHealth)
	rt.Start()
	s.mu.Lock()
	defer s.mu.Unlock()
	for addr, ln := range s.listeners {
		s.accepts.Add(1)
		go s.acceptLoop(addr, ln)
	}
}

func (s *server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for addr, ln := range s.listeners {
		ln.Close()
		delete(s.listeners, addr)
	}
	for t := range s.timers {
		t.Stop()
		delete(s.timers, t)
	}
}

// shutdown stops accepting at once, lets live connections run for up to
// drain, then closes them, and returns when every goroutine has ended.
func (s *server) shutdown(drain time.Duration) {
	if !s.stopping.Swap(true) {
		close(s.stopWatch)
	}
	s.watchers.Wait()
	// A reload in progress finishes first; none starts after (stopping).
	s.reloadMu.Lock()
	//lint:ignore SA2001 the empty critical section is a barrier
	s.reloadMu.Unlock()
	s.closeListeners()
	s.accepts.Wait()
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	if drain > 0 {
		t := time.NewTimer(drain)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}
	s.cancel()
	<-done
	s.rt.Load().retire() // closes it: no connection is left
}

// acceptLoop accepts until the listener closes. It never spins: temporary
// errors (EMFILE, ENFILE, ENOBUFS...) back off from 5 ms doubling to 100 ms,
// waking early when a connection is released (RELIABILITY rule 9).
func (s *server) acceptLoop(addr string, ln *net.TCPListener) {
	defer s.accepts.Done()
	var delay time.Duration
	var lastLog time.Time
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			if now := time.Now(); now.Sub(lastLog) >= time.Second {
				lastLog = now
				s.log.Warn("accept failed; backing off", zap.String("address", addr), zap.Duration("backoff", delay), zap.Error(err))
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-s.released:
			case <-s.ctx.Done():
			}
			t.Stop()
			continue
		}
		delay = 0
		accepted := time.Now()
		// The connection keeps the config it was accepted under: its route,
		// mode and backend, whatever reloads happen while it lives.
		rt := s.rt.Load()
		for !rt.acquire() { // retired by a reload just now: the new one is stored
			rt = s.rt.Load()
		}
		lr := rt.byAddr[addr]
		if lr == nil { // removed by a reload; its socket is closing
			rt.release()
			c.Close()
			continue
		}
		s.metrics.accepted(lr.name)
		if s.active.Add(1) > s.maxConns.Load() {
			s.active.Add(-1)
			rt.release()
			c.SetLinger(0)
			c.Close()
			s.reject(lr.name, c.RemoteAddr(), l4.ReasonMaxConnections, "", zap.Int64("max_connections", s.maxConns.Load()))
			continue
		}
		s.conns.Add(1)
		if lr.tls {
			go s.serveConn(rt, lr, c, accepted)
		} else {
			go s.serveCleartext(rt, lr, c, accepted)
		}
	}
}

func (s *server) release(rt *Runtime) {
	rt.release()
	s.active.Add(-1)
	select {
	case s.released <- struct{}{}:
	default:
	}
}

// serveConn peeks one accepted connection's ClientHello, routes it and hands
// it to its route (forward or serveL7), which write its one access line and
// end it (connDone) when it closes; a refusal ends here.
func (s *server) serveConn(rt *Runtime, lr *listenerRuntime, c *net.TCPConn, accepted time.Time) {
	handedOff := false // to the relay's goroutines, which end the connection
	defer func() {
		if !handedOff {
			s.connDone(rt)
		}
	}()

	// One absolute deadline from accept covers the whole peek (RELIABILITY
	// rule 1, T1): progress never extends it. The relay sets its own.
	c.SetReadDeadline(accepted.Add(lr.helloTimeout))
	h, err := tlsutil.ReadClientHello(c, lr.maxHelloBytes)
	if err == nil || errors.Is(err, tlsutil.ErrNotTLS) {
		s.metrics.helloDone(lr.name, time.Since(accepted))
	}
	var r *route
	switch {
	case err == nil:
		r = lr.table.lookup(h.ServerName)
		if r == nil {
			reason := l4.ReasonNoRoute
			if h.SNIInvalid {
				reason = l4.ReasonSNIInvalid
			} else if h.ServerName == "" {
				reason = l4.ReasonNoSNI
			}
			c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
			tlsutil.WriteAlert(c, tlsutil.AlertUnrecognizedName)
			lingerClose(c)
			s.reject(lr.name, c.RemoteAddr(), reason, h.RawServerName)
			return
		}
	case errors.Is(err, tlsutil.ErrNotTLS):
		if r = lr.table.plain; r == nil {
			if tlsutil.LooksLikeHTTP(h.Raw) {
				c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
				io.WriteString(c, httpOnTLSPort)
				lingerClose(c)
			} else {
				c.Close()
			}
			s.reject(lr.name, c.RemoteAddr(), l4.ReasonNotTLS, "")
			return
		}
	default:
		c.Close()
		s.reject(lr.name, c.RemoteAddr(), peekFailure(err), h.RawServerName, zap.Error(err))
		return
	}

	handedOff = true
	if r.mode == "l7" {
		s.serveL7(rt, lr, r, c, h.Raw, h.RawServerName, accepted)
		return
	}
	s.forward(rt, lr, r, c, h, err == nil, accepted)
}

// connDone is the end of one accepted connection.
func (s *server) connDone(rt *Runtime) {
	s.release(rt)
	s.conns.Done()
}

// serveCleartext serves a connection on a cleartext HTTP listener
// (tls = false): the first request's Host picks the route.
func (s *server) serveCleartext(rt *Runtime, lr *listenerRuntime, c *net.TCPConn, accepted time.Time) {
	handedOff := false // to serveL7, which ends the connection
	defer func() {
		if !handedOff {
			s.connDone(rt)
		}
	}()
	if lr.redirect != nil {
		handedOff = true
		s.serveL7(rt, lr, &route{name: "redirect_https", mode: "l7", l7: lr.redirect}, c, nil, "", accepted)
		return
	}
	c.SetReadDeadline(accepted.Add(lr.headerTimeout))
	host, head, err := peekHost(c, maxHTTPHead)
	if err != nil && len(head) == 0 {
		c.Close()
		s.reject(lr.name, c.RemoteAddr(), peekFailure(err), "", zap.Error(err))
		return
	}
	name, _ := tlsutil.NormalizeSNI(host)
	r := lr.table.lookup(name)
	if r == nil {
		c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
		io.WriteString(c, misdirected)
		lingerClose(c)
		s.reject(lr.name, c.RemoteAddr(), l4.ReasonNoRoute, host)
		return
	}
	handedOff = true
	s.serveL7(rt, lr, r, c, head, host, accepted)
}

// serveL7 hands a connection to an l7 route (TLS termination, HTTP and
// WebSocket) and returns once it is in the route's HTTP server; whichever
// goroutine ends the connection writes its access line and ends it
// (connDone).
func (s *server) serveL7(rt *Runtime, lr *listenerRuntime, r *route, c *net.TCPConn, prefix []byte, sni string, accepted time.Time) {
	s.metrics.connOpened(lr.name, r.name, "l7")
	r.l7.Serve(s.ctx, c, prefix, accepted, func(res l7.Result) {
		defer s.connDone(rt)
		if res.Handshake > 0 {
			s.metrics.handshakeDone(r.name, res.Handshake)
		}
		s.metrics.connClosed(lr.name, r.name, "l7", res.Reason, res.BytesIn, res.BytesOut)
		s.logL7(lr, r, c, sni, accepted, res)
	})
}

func (s *server) logL7(lr *listenerRuntime, r *route, c *net.TCPConn, sni string, accepted time.Time, res l7.Result) {
	fields := s.accessFields(lr, r, c, sni, accepted, res.Reason, zap.Int("requests", res.Requests))
	if res.Status != 0 {
		fields = append(fields, zap.Int("status", res.Status))
	}
	if res.Backend != "" {
		fields = append(fields, zap.String("backend", res.Backend))
	}
	if res.Upgraded {
		fields = append(fields,
			zap.Bool("websocket", true),
			zap.Int64("bytes_in", res.BytesIn),
			zap.Int64("bytes_out", res.BytesOut),
			zap.Stringer("path_in", res.Relay.PathIn),
			zap.Stringer("path_out", res.Relay.PathOut),
		)
	}
	if res.Err != nil {
		fields = append(fields, zap.Error(res.Err))
	}
	s.log.Info("connection closed", fields...)
}

// forward connects an l4 route to its backend and hands the two sockets to
// the relay's own goroutines, so this one (whose stack grew peeking and
// dialling) can exit; the relay's last goroutine writes the access line and
// ends the connection (connDone). Nothing of the ClientHello but the two
// names is kept while the relay runs.
//
// For a TLS ClientHello the dial waits for the backend's first byte
// (AwaitAnswer): a TLS server answers a hello without more bytes from the
// client, so a backend that accepts and then closes or resets is retried on
// another one with the same hello instead of resetting the player (T12).
// Other first bytes (a plain_route) may need more from the client first.
func (s *server) forward(rt *Runtime, lr *listenerRuntime, r *route, c *net.TCPConn, h *tlsutil.ClientHello, isHello bool, accepted time.Time) {
	s.metrics.connOpened(lr.name, r.name, r.mode)
	sni := h.RawServerName
	l4.Forward(s.ctx, r.pool, c, balancer.DialRequest{
		Client:      c.RemoteAddr(),
		Local:       c.LocalAddr(),
		SNI:         h.ServerName,
		Prefix:      h.Raw,
		AwaitAnswer: isHello,
	}, r.relay, func(res l4.ForwardResult) {
		defer s.connDone(rt)
		s.logForward(lr, r, c, sni, accepted, res)
	})
}

// logForward counts the end of an l4 connection and writes its access line.
func (s *server) logForward(lr *listenerRuntime, r *route, c *net.TCPConn, sni string, accepted time.Time, res l4.ForwardResult) {
	s.metrics.connClosed(lr.name, r.name, r.mode, res.Reason, res.BytesIn, res.BytesOut)
	fields := s.accessFields(lr, r, c, sni, accepted, res.Reason, zap.String("pool", r.pool.Name()))
	if res.Backend != "" {
		fields = append(fields,
			zap.String("backend", res.Backend),
			zap.Int("attempts", res.Attempts),
			zap.Int64("bytes_in", res.BytesIn),
			zap.Int64("bytes_out", res.BytesOut),
			zap.Stringer("path_in", res.PathIn),
			zap.Stringer("path_out", res.PathOut),
			zap.Int64("spliced_in", res.SplicedIn),
			zap.Int64("spliced_out", res.SplicedOut),
		)
	}
	if res.Err != nil {
		fields = append(fields, zap.Error(res.Err))
	}
	switch res.Reason {
	case l4.ReasonError:
		s.log.Error("connection closed", fields...)
	case l4.ReasonNoBackend, l4.ReasonConnectFailed, l4.ReasonLocalLimit:
		s.log.Warn("connection closed", fields...)
	default:
		s.log.Info("connection closed", fields...)
	}
}

// accessFields are the fixed keys of an access line; sni is as the client
// sent it (escaped and capped here).
func (s *server) accessFields(lr *listenerRuntime, r *route, c *net.TCPConn, sni string, accepted time.Time, reason l4.Reason, extra ...zap.Field) []zap.Field {
	f := make([]zap.Field, 0, 16+len(extra))
	f = append(f,
		zap.Stringer("client", c.RemoteAddr()),
		zap.String("listener", lr.name),
		zap.String("route", r.name),
		zap.String("mode", r.mode),
		zap.String("sni", tlsutil.EscapeForLog(sni, maxLogField)),
		zap.Duration("duration", time.Since(accepted)),
		zap.String("reason", string(reason)),
	)
	return append(f, extra...)
}

// maxLogField caps attacker-controlled strings in log fields: RELIABILITY
// T26 says 256 bytes, its test A15 at most 255; 255 meets both.
const maxLogField = 255

// reject counts and logs (sampled per reason) a connection refused before it
// reached a route.
func (s *server) reject(listener string, client net.Addr, reason l4.Reason, sni string, extra ...zap.Field) {
	n, _ := s.rejected.LoadOrStore(reason, new(atomic.Uint64))
	n.(*atomic.Uint64).Add(1)
	s.metrics.rejected(listener, reason)
	if ce := s.rejectLog.Check(zap.InfoLevel, "rejected: "+string(reason)); ce != nil {
		f := []zap.Field{zap.Stringer("client", client), zap.String("listener", listener), zap.String("reason", string(reason))}
		if sni != "" {
			f = append(f, zap.String("sni", tlsutil.EscapeForLog(sni, maxLogField)))
		}
		ce.Write(append(f, extra...)...)
	}
}

// logHealth writes one line per backend health transition.
func (s *server) logHealth(e balancer.Event) {
	f := []zap.Field{zap.String("pool", e.Pool), zap.String("backend", e.Backend), zap.String("reason", e.Reason)}
	if e.Healthy {
		s.log.Info("backend up", f...)
	} else {
		s.log.Warn("backend down", f...)
	}
}

// rejectedCount reports how many connections were refused for reason.
func (s *server) rejectedCount(reason l4.Reason) uint64 {
	if n, ok := s.rejected.Load(reason); ok {
		return n.(*atomic.Uint64).Load()
	}
	return 0
}

// peekFailure classifies a failed ClientHello read.
func peekFailure(err error) l4.Reason {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return l4.ReasonHelloTimeout
	case errors.Is(err, tlsutil.ErrHelloTooLarge):
		return l4.ReasonHelloTooLarge
	case errors.Is(err, tlsutil.ErrMalformed):
		return l4.ReasonHelloMalformed
	case errors.Is(err, syscall.ECONNRESET):
		return l4.ReasonClientReset
	default:
		return l4.ReasonClientClosed
	}
}

// lingerClose sends FIN, then reads and discards briefly before closing, so
// a refusal just written reaches a client that is still sending instead of
// being destroyed by the RST Linux sends when unread data is closed on.
func lingerClose(c *net.TCPConn) {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	c.Close()
}
