package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"sluice/balancer"
	"sluice/l4"
	"sluice/tlsutil"
)

const (
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

// server is a running sluice: the accept side (acceptor: sockets and accept
// loops), the config side (the embedded reloader: the current Runtime, the
// file, its watch, reloads and the drains they start) and what every
// connection shares (caps, per-client limiters, metrics, the drain context).
// Each accepted connection becomes a session (session.go), its one owner.
type server struct {
	*reloader
	acc   *acceptor
	bound []string // what listen bound, for serve

	log       *zap.Logger // access lines and lifecycle: never sampled
	rejectLog *zap.Logger // refusals before routing: sampled per reason (RELIABILITY T26)

	maxConns atomic.Int64
	active   atomic.Int64

	mu       sync.Mutex
	limiters map[string]*ipLimiter // per-client limits by listenerRuntime.key

	ctx    context.Context // cancelled when the drain ends: relays close
	cancel context.CancelFunc
	conns  sync.WaitGroup

	metrics *metrics
}

func newServer(rt *Runtime, log *zap.Logger, rejectLog *zap.Logger) *server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{
		log:       log,
		rejectLog: rejectLog,
		limiters:  map[string]*ipLimiter{},
		ctx:       ctx,
		cancel:    cancel,
	}
	s.acc = newAcceptor(log, s.accepted)
	s.acc.raw, s.acc.handleRaw = s.rawAccept, s.acceptedRaw
	s.reloader = newReloader(log, s.acc, s.install)
	s.prepare(rt)
	s.rt.Store(rt)
	s.metrics = newMetrics(s.rt.Load)
	s.metrics.trackConnections(func() (int64, int64) { return s.active.Load(), s.maxConns.Load() })
	s.onReload = s.metrics.reloaded
	return s
}

// prepare sets what the server derives from rt before rt becomes current:
// the per-client limiters and the global connection cap.
func (s *server) prepare(rt *Runtime) {
	s.attachLimiters(rt)
	s.setMaxConns(rt)
}

// install readies rt to become current (the reloader's hook): prepare, then
// its health checks and discovery start, logged by logHealth.
func (s *server) install(rt *Runtime) {
	s.prepare(rt)
	rt.OnHealthChange(s.logHealth)
	rt.Start()
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

// listen binds every listener of the current config, or none; serve starts
// accepting on them.
func (s *server) listen() error {
	keys, err := s.acc.bind(s.rt.Load().listenAddrs())
	s.bound = keys
	return err
}

// addr returns the bound address of a listener (tests listen on port 0).
func (s *server) addr(name string) net.Addr {
	lr := s.rt.Load().Listeners[name]
	if lr == nil {
		return nil
	}
	return s.acc.addr(lr.key)
}

// serve starts the pools' health checks and one accept loop per bound
// listener.
func (s *server) serve() {
	rt := s.rt.Load()
	rt.OnHealthChange(s.logHealth)
	rt.Start()
	s.acc.start(s.bound)
}

// closeListeners stops accepting and the drains reloads scheduled.
func (s *server) closeListeners() {
	s.acc.close()
	s.stopDrains()
}

// shutdown stops accepting at once, lets live connections run for up to
// drain, then closes them, and returns when every goroutine has ended.
func (s *server) shutdown(drain time.Duration) {
	s.stop() // no reload runs or starts from here on
	s.closeListeners()
	// Idle HTTP keep-alive connections close now and busy ones after their
	// response: the drain waits only for what is really in use.
	s.rt.Load().endKeepAlive()
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

// accepted takes a connection from the acceptor and starts its session. The
// connection keeps the config it was accepted under: its route, mode and
// backend, whatever reloads happen while it lives.
func (s *server) accepted(key string, c *net.TCPConn, at time.Time) {
	rt := s.rt.Load()
	for !rt.acquire() { // retired by a reload just now: the new one is stored
		rt = s.rt.Load()
	}
	lr := rt.byAddr[key]
	if lr == nil { // removed by a reload; its socket is closing
		rt.release()
		c.Close()
		return
	}
	s.metrics.accepted(lr.name)
	if s.active.Add(1) > s.maxConns.Load() {
		s.active.Add(-1)
		rt.release()
		c.SetLinger(0)
		c.Close()
		s.reject(lr.name, c.RemoteAddr(), reasonMaxConnections, "", zap.Int64("max_connections", s.maxConns.Load()))
		return
	}
	s.conns.Add(1)
	ss := &session{srv: s, rt: rt, lr: lr, c: c, fd: -1, client: c.RemoteAddr(), local: c.LocalAddr(), accepted: at}
	if lr.tls {
		go ss.serve()
	} else {
		go ss.serveCleartext()
	}
}

// rawAccept reports whether key's next connection is accepted raw: its
// listener's rawAccept, in the current config.
func (s *server) rawAccept(key string) bool {
	lr := s.rt.Load().byAddr[key]
	return lr != nil && (lr.rawAccept || lr.mixedRaw && lr.mix.raw())
}

// acceptedRaw is accepted for a connection accepted raw (acceptRaw): a
// descriptor and the peer's address, no *net.TCPConn. Its session reads
// the hello and runs an l4 route on the descriptor (serveRaw); anything
// else gets a conn made of it there.
func (s *server) acceptedRaw(key string, fd int, peer netip.AddrPort, at time.Time) {
	rt := s.rt.Load()
	for !rt.acquire() {
		rt = s.rt.Load()
	}
	lr := rt.byAddr[key]
	if lr == nil {
		rt.release()
		closeRaw(fd, false)
		return
	}
	client := net.TCPAddrFromAddrPort(peer)
	s.metrics.accepted(lr.name)
	if s.active.Add(1) > s.maxConns.Load() {
		s.active.Add(-1)
		rt.release()
		closeRaw(fd, true)
		s.reject(lr.name, client, reasonMaxConnections, "", zap.Int64("max_connections", s.maxConns.Load()))
		return
	}
	s.conns.Add(1)
	ss := &session{srv: s, rt: rt, lr: lr, fd: fd, client: client, accepted: at}
	go ss.serveRaw()
}

// release ends a session's hold on its config and on a connection slot.
func (s *server) release(rt *Runtime) {
	rt.release()
	s.active.Add(-1)
	s.acc.wake()
}

// maxLogField caps attacker-controlled strings in log fields: RELIABILITY
// T26 says 256 bytes, its test A15 at most 255; 255 meets both.
const maxLogField = 255

// reject counts and logs (sampled per reason) a connection refused before it
// reached a route.
func (s *server) reject(listener string, client net.Addr, reason l4.Reason, sni string, extra ...zap.Field) {
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
	switch e.Kind {
	case balancer.EventAdded:
		s.log.Info("backend discovered", append(f, zap.Bool("healthy", e.Healthy))...)
	case balancer.EventRemoved:
		s.log.Info("backend removed by discovery", f...)
	case balancer.EventDiscoveryFailed:
		s.log.Warn("discovery failing, keeping the last backends", f...)
	case balancer.EventDiscoveryOK:
		s.log.Info("discovery recovered", f...)
	case balancer.EventAgent:
		s.log.Info("agent changed backend state", append(f, zap.Bool("healthy", e.Healthy))...)
	case balancer.EventAgentError:
		s.log.Warn("agent answer ignored", f...)
	default:
		if e.Healthy {
			s.log.Info("backend up", f...)
		} else {
			s.log.Warn("backend down", f...)
		}
	}
}

// rejectedCount reports how many connections were refused for reason, on
// every listener: what the sluice_connections_rejected_total counters say.
func (s *server) rejectedCount(reason l4.Reason) uint64 {
	var n uint64
	for k, c := range s.metrics.rejects.snapshot() {
		if k.reason == reason {
			n += c.Load()
		}
	}
	return n
}

// peekFailure classifies a failed ClientHello read.
func peekFailure(err error) l4.Reason {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return reasonHelloTimeout
	case errors.Is(err, tlsutil.ErrHelloTooLarge):
		return reasonHelloTooLarge
	case errors.Is(err, tlsutil.ErrMalformed):
		return reasonHelloMalformed
	case errors.Is(err, syscall.ECONNRESET):
		return l4.ReasonClientReset
	case balancer.ClassifyLocal(err) != balancer.NotLocal:
		// The wait for the rest of a hello read raw could not be set up
		// (l4.WaitFD: epoll's watch limit, no memory): sluice's trouble.
		return l4.ReasonLocalLimit
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
