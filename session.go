package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"sluice/balancer"
	"sluice/l4"
	"sluice/l7"
	"sluice/tlsutil"
)

// session is one accepted connection, from accept to its access line.
//
// Ownership, in one rule (as inetaf/tcpproxy writes it): the accept loop
// creates a session, counts it, and hands it to exactly one goroutine
// (serve or serveCleartext); from then on the session owns the conn. It
// either refuses it (writes a refusal, closes the conn, logs the rejection
// and ends), or hands the conn to its route: the relay (toL4) or l7.Route.Serve,
// after which the session never touches the conn again, and the route's
// completion callback (exactly one call) writes the access line and ends
// the session. end runs exactly once and releases the session's slot in
// the global cap and its config generation.
type session struct {
	srv      *server
	rt       *Runtime // the config generation it was accepted under
	lr       *listenerRuntime
	c        *net.TCPConn
	fd       int        // accepted raw (serveRaw): the descriptor, until wrap makes c of it; else -1
	client   net.Addr   // the player's address: c's peer, or the PROXY header's source
	local    net.Addr   // the address the player connected to: c's, or the PROXY header's destination
	first    []byte     // bytes read past a PROXY header: the start of the hello or head
	limited  *ipLimiter // holding a per-client slot under limitKey
	limitKey netip.Addr
	accepted time.Time
	ended    atomic.Bool
}

// end is the end of the session; only the first call counts.
func (ss *session) end() {
	if ss.ended.CompareAndSwap(false, true) {
		if ss.limited != nil {
			ss.limited.done(ss.limitKey)
		}
		ss.srv.release(ss.rt)
		ss.srv.conns.Done()
	}
}

// refuse closes the conn (with close, or lingerClose after a refusal was
// written), counts and logs the rejection, and ends the session.
func (ss *session) refuse(linger bool, reason l4.Reason, sni string, extra ...zap.Field) {
	switch {
	case ss.c == nil: // raw: nothing was written
		if ss.fd >= 0 {
			closeRaw(ss.fd, false)
			ss.fd = -1
		}
	case linger:
		lingerClose(ss.c)
	default:
		ss.c.Close()
	}
	ss.srv.reject(ss.lr.name, ss.client, reason, sni, extra...)
	ss.end()
}

// serve peeks the ClientHello on a TLS listener, routes it and hands the
// conn to its route; a refusal ends here.
func (ss *session) serve() {
	growStack()
	c, lr := ss.c, ss.lr
	// One absolute deadline from accept covers the whole peek, a PROXY
	// header included (RELIABILITY rule 1, T1): progress never extends it.
	// The relay sets its own.
	c.SetReadDeadline(ss.accepted.Add(lr.helloTimeout))
	if !ss.admit() {
		return
	}
	ss.route()
}

// route reads the ClientHello (or first bytes) under the read deadline
// set and dispatches it.
func (ss *session) route() {
	lr := ss.lr
	h, err := tlsutil.ReadClientHello(ss.reader(), lr.maxHelloBytes)
	ss.dispatch(h, err)
}

// dispatch counts the hello's time, routes what the hello read gave
// (h, err) and hands the client to its route; a refusal ends here. A
// client accepted raw stays a descriptor for an l4 route and a refusal
// that writes nothing; for the rest (a TLS alert or an HTTP answer to
// write, an l7 route) conn makes a *net.TCPConn of it first.
func (ss *session) dispatch(h *tlsutil.ClientHello, err error) {
	lr := ss.lr
	if err == nil || errors.Is(err, tlsutil.ErrNotTLS) {
		ss.srv.metrics.helloDone(lr.name, time.Since(ss.accepted))
	}
	var r *route
	switch {
	case err == nil:
		r = lr.table.lookup(h.ServerName)
		if r == nil {
			reason := reasonNoRoute
			if h.SNIInvalid {
				reason = reasonSNIInvalid
			} else if h.ServerName == "" {
				reason = reasonNoSNI
			}
			if !ss.conn(h.RawServerName) {
				return
			}
			ss.c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
			tlsutil.WriteAlert(ss.c, tlsutil.AlertUnrecognizedName)
			ss.refuse(true, reason, h.RawServerName)
			return
		}
	case errors.Is(err, tlsutil.ErrNotTLS):
		if r = lr.table.plain; r == nil {
			if !tlsutil.LooksLikeHTTP(h.Raw) {
				ss.refuse(false, reasonNotTLS, "")
			} else if ss.conn("") {
				ss.c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
				io.WriteString(ss.c, httpOnTLSPort)
				ss.refuse(true, reasonNotTLS, "")
			}
			return
		}
	case len(h.Raw) == 0 && lr.table.plain != nil && errors.Is(err, os.ErrDeadlineExceeded):
		// A raw TCP client may be waiting for the server to speak: say
		// so, not that a ClientHello was late.
		ss.refuse(false, reasonNoFirstBytes, "")
		return
	default:
		ss.refuse(false, peekFailure(err), h.RawServerName, zap.Error(err))
		return
	}
	if lr.mixedRaw {
		lr.mix.saw(r.mode)
	}
	if r.mode == "l7" {
		if ss.conn(h.RawServerName) {
			ss.toL7(r, h.Raw, h.RawServerName)
		}
		return
	}
	ss.toL4(r, h, err == nil)
}

// conn makes the raw descriptor of a client accepted raw a *net.TCPConn
// (fdConn), if it is not one yet, and reports whether the session goes on:
// on failure the connection is closed and refused.
func (ss *session) conn(sni string) bool {
	if ss.c != nil {
		return true
	}
	c, err := fdConn(ss.fd)
	ss.fd = -1 // closed by fdConn, failed or not
	if err != nil {
		ss.srv.reject(ss.lr.name, ss.client, l4.ReasonError, sni, zap.Error(err))
		ss.end()
		return false
	}
	ss.c, ss.local = c, c.LocalAddr()
	return true
}

// serveCleartext serves a conn on a cleartext HTTP listener (tls = false):
// the first request's Host picks the route.
func (ss *session) serveCleartext() {
	c, lr := ss.c, ss.lr
	if lr.redirect != nil {
		c.SetReadDeadline(ss.accepted.Add(lr.headerTimeout))
		if !ss.admit() {
			return
		}
		ss.toL7(&route{name: "redirect_https", mode: "l7", l7: lr.redirect}, ss.first, "")
		return
	}
	c.SetReadDeadline(ss.accepted.Add(lr.headerTimeout))
	if !ss.admit() {
		return
	}
	host, head, err := l7.PeekHost(ss.reader(), l7.MaxPeekHead)
	if err != nil && len(head) == 0 {
		ss.refuse(false, peekFailure(err), "", zap.Error(err))
		return
	}
	name, _ := tlsutil.NormalizeSNI(host)
	r := lr.table.lookup(name)
	if r == nil {
		c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
		io.WriteString(c, misdirected)
		ss.refuse(true, reasonNoRoute, host)
		return
	}
	ss.toL7(r, head, host)
}

// serveRaw is serve for a connection accepted raw (server.acceptedRaw): it
// reads the ClientHello from the descriptor (waiting on the shards' epoll
// sets, l4.WaitFD, until hello_timeout from accept) and dispatches it: an
// l4 route runs on the descriptor as it is, so the socket never becomes
// one of Go's (issue 11).
func (ss *session) serveRaw() {
	growStack()
	lr := ss.lr
	if !ss.admit() {
		return
	}
	h, err := tlsutil.ReadClientHello(&fdReader{fd: ss.fd, deadline: ss.accepted.Add(lr.helloTimeout), ctx: ss.srv.ctx}, lr.maxHelloBytes)
	ss.dispatch(h, err)
}

// fdReader reads a raw descriptor for ReadClientHello: what is there, and
// while nothing is, a wait on its readability (l4.WaitFD) until deadline
// (os.ErrDeadlineExceeded) or the server's drain context ends.
type fdReader struct {
	fd       int
	deadline time.Time
	ctx      context.Context
}

func (r *fdReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, errno := recvRaw(r.fd, b)
		switch {
		case errno == 0 && n > 0:
			return n, nil
		case errno == 0:
			return 0, io.EOF
		case errno == syscall.EINTR:
		case errno == syscall.EAGAIN:
			wait := l4.FDWaiter()
			if wait == nil {
				return 0, errors.ErrUnsupported
			}
			if _, err := wait(r.ctx, r.fd, false, r.deadline); err != nil {
				return 0, err
			}
		default:
			return 0, os.NewSyscallError("read", errno)
		}
	}
}

// toL7 hands the conn to an l7 route (TLS termination, HTTP and WebSocket)
// and returns once it is in the route's HTTP server; whichever goroutine
// ends the connection writes its access line and ends the session.
func (ss *session) toL7(r *route, prefix []byte, sni string) {
	s, lr := ss.srv, ss.lr
	s.metrics.connOpened(lr.name, r.name, "l7")
	r.l7.Serve(s.ctx, ss.c, ss.client, prefix, ss.accepted, func(res l7.Result) {
		defer ss.end()
		if res.Handshake > 0 {
			s.metrics.handshakeDone(r.name, res.Handshake)
		}
		s.metrics.connClosed(lr.name, r.name, "l7", res.Reason, res.BytesIn, res.BytesOut)
		ss.logL7(r, sni, res)
	})
}

func (ss *session) logL7(r *route, sni string, res l7.Result) {
	fields := ss.accessFields(r, sni, res.Reason, zap.Int("requests", res.Requests))
	if res.Status != 0 {
		fields = append(fields, zap.Int("status", res.Status))
	}
	if res.Requests > 0 || res.Upgraded {
		proto := "http/1.1"
		if res.HTTP2 {
			proto = "h2"
		}
		fields = append(fields, zap.String("proto", proto))
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
	ss.srv.log.Info("connection closed", fields...)
}

// toL4 connects an l4 route to its backend and hands the two sockets to the
// relay's own goroutines, so this one (whose stack grew peeking and
// dialling) can exit; the relay's last goroutine writes the access line and
// ends the session. Nothing of the ClientHello but the two names is kept
// while the relay runs.
//
// For a TLS ClientHello the dial waits for the backend's first byte
// (AwaitAnswer): a TLS server answers a hello without more bytes from the
// client, so a backend that accepts and then closes or resets is retried on
// another one with the same hello instead of resetting the player (T12).
// Other first bytes (a plain_route) may need more from the client first.
func (ss *session) toL4(r *route, h *tlsutil.ClientHello, isHello bool) {
	s := ss.srv
	s.metrics.connOpened(ss.lr.name, r.name, r.mode)
	sni := h.RawServerName
	req := balancer.DialRequest{
		Client:      ss.client,
		Local:       ss.local,
		SNI:         h.ServerName,
		Prefix:      h.Raw, // written with the PROXY header, if any, in one write
		AwaitAnswer: isHello,
	}
	if r.pool.Balance() == balancer.Hash {
		req.HashKey, req.HasHashKey = r.pool.HashKey().ConnKey(req.Client, req.SNI)
	}
	if r.relay.Engine == l4.EngineEpoll {
		// The backend's socket is the relay's own from the connect on:
		// none of Go's netFD costs (balancer's raw dial, issue 11).
		req.Wait = l4.FDWaiter()
	}
	if req.Local == nil && ss.c == nil && r.pool.ProxyProtocol() != balancer.ProxyNone {
		req.Local = localAddrOf(ss.fd) // accepted raw: asked only for the PROXY header
	}
	lease, err := r.pool.Dial(s.ctx, req)
	if err != nil {
		ss.closeClient()
		ss.logL4(r, sni, l4Result{Stats: l4.Stats{Reason: l4.DialFailure(err), Err: err}})
		ss.end()
		return
	}
	prefix := int64(len(h.Raw)) // not h.Raw: the relay must not keep the hello alive
	opts := r.relay
	opts.Owner, opts.ShedClient = lease, true // an idle relay sheds Go's socket state
	c, cfd := ss.c, ss.fd
	ss.c, ss.fd = nil, -1 // nor the client conn, which would keep that state alive
	ss.local = nil        // nor its local address: only the dial needed it
	done := func(st l4.Stats) {
		defer ss.end()
		// Passive health: a backend that resets before sending anything
		// counts as a failure, like a refused connect.
		lease.Observe(st.BytesOut, st.Reason == l4.ReasonBackendReset)
		lease.Release()
		st.BytesIn += prefix // the hello went out with the connect
		ss.logL4(r, sni, l4Result{Stats: st, Backend: lease.Backend.ID(), Attempts: lease.Attempts})
	}
	if lease.Conn != nil && c != nil {
		l4.Start(s.ctx, c, lease.Conn, opts, done)
		return
	}
	// A side without its conn is a descriptor (raw accept, raw dial). A
	// nil *net.TCPConn must not go into Socket.Conn: it would not be nil.
	client, backend := l4.Socket{FD: cfd}, l4.Socket{FD: lease.FD}
	if c != nil {
		client = l4.Socket{Conn: c, FD: -1}
	}
	if lease.Conn != nil {
		backend = l4.Socket{Conn: lease.Conn, FD: -1}
	} else {
		opts.BackendOptions = balancer.SetBackendOptions
	}
	if !l4.StartSockets(s.ctx, client, backend, opts, done) {
		// The epoll set refused the sockets (ENOMEM, max_user_watches):
		// sluice's own trouble, after a good connect.
		if lease.Conn != nil {
			lease.Conn.Close()
		} else {
			unix.Close(lease.FD)
		}
		if c != nil {
			c.SetLinger(0)
			c.Close()
		} else {
			closeRaw(cfd, true)
		}
		done(l4.Stats{Reason: l4.ReasonError, Err: errors.New("l4: the relay could not start on its sockets")})
	}
}

// closeClient closes the client's conn, or its descriptor if accepted raw.
func (ss *session) closeClient() {
	if ss.c != nil {
		ss.c.Close()
	} else if ss.fd >= 0 {
		closeRaw(ss.fd, false)
		ss.fd = -1
	}
}

// l4Result is the outcome of one l4 connection.
type l4Result struct {
	l4.Stats
	Backend  string // the backend's id; "" when none was connected
	Attempts int    // connect attempts it took
}

// logL4 counts the end of an l4 connection and writes its access line.
func (ss *session) logL4(r *route, sni string, res l4Result) {
	s := ss.srv
	s.metrics.connClosed(ss.lr.name, r.name, r.mode, res.Reason, res.BytesIn, res.BytesOut)
	level := zap.InfoLevel
	switch res.Reason {
	case l4.ReasonError:
		level = zap.ErrorLevel
	case l4.ReasonNoBackend, l4.ReasonConnectFailed, l4.ReasonLocalLimit:
		level = zap.WarnLevel
	}
	if ce := s.log.Check(level, "connection closed"); ce != nil {
		ss.writeL4Line(ce, r, sni, &res)
	}
	// else not logged at this level: no fields built (and logL4, on the
	// relay's fresh goroutine, keeps a frame small enough for its stack)
}

// writeL4Line writes an l4 access line.
func (ss *session) writeL4Line(ce *zapcore.CheckedEntry, r *route, sni string, res *l4Result) {
	fields := ss.accessFields(r, sni, res.Reason, zap.String("pool", r.pool.Name()))
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
	ce.Write(fields...)
}

// accessFields are the fixed keys of an access line; sni is as the client
// sent it (escaped and capped here).
func (ss *session) accessFields(r *route, sni string, reason l4.Reason, extra ...zap.Field) []zap.Field {
	f := make([]zap.Field, 0, 16+len(extra))
	f = append(f,
		zap.Stringer("client", ss.client),
		zap.String("listener", ss.lr.name),
		zap.String("route", r.name),
		zap.String("mode", r.mode),
		zap.String("sni", tlsutil.EscapeForLog(sni, maxLogField)),
		zap.Duration("duration", time.Since(ss.accepted)),
		zap.String("reason", string(reason)),
	)
	return append(f, extra...)
}

// reader is where the hello or head is read from: the bytes already read
// past a PROXY header, then the conn.
func (ss *session) reader() io.Reader {
	if len(ss.first) == 0 {
		return ss.c
	}
	return io.MultiReader(bytes.NewReader(ss.first), ss.c)
}

// readProxyHeader reads the PROXY header a listener with accept_proxy
// requires (issue 12), under the read deadline already set: from a peer
// outside trusted_cidrs, or without a valid header, the connection is
// refused and counted, never guessed. A PROXY header's source becomes the
// session's client (logs, hash keys, PROXY out, X-Forwarded-For) and its
// destination the local address; a LOCAL header (the front balancer's own
// health check) keeps the connection's addresses, as HAProxy does, so the
// probe is answered like any connection. It reports whether to go on.
func (ss *session) readProxyHeader() bool {
	peer, ok := ss.c.RemoteAddr().(*net.TCPAddr)
	if !ok || !ss.lr.proxyIn.trusts(peer.AddrPort().Addr()) {
		ss.refuse(false, reasonProxyUntrusted, "")
		return false
	}
	h, rest, err := balancer.ReadProxyHeader(ss.c)
	if err != nil {
		reason := reasonProxyInvalid
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
			reason = peekFailure(err)
		}
		ss.refuse(false, reason, "", zap.Error(err))
		return false
	}
	ss.first = rest
	if h.Command.IsProxy() {
		if src, dst, ok := h.TCPAddrs(); ok {
			ss.client, ss.local = src, dst
		}
	}
	return true
}

// admit reads the PROXY header a listener with accept_proxy requires, then
// applies the listener's per-client limits to the client it names; it
// refuses the connection (closed at once, counted by reason) and reports
// false when one fails.
func (ss *session) admit() bool {
	if ss.lr.proxyIn.accept && !ss.readProxyHeader() {
		return false
	}
	l := ss.lr.limiter
	if l == nil {
		return true
	}
	key, ok := clientKey(ss.client)
	if !ok {
		return true
	}
	if ok, reason := l.admit(key, time.Now()); !ok {
		if ss.c != nil {
			ss.c.SetLinger(0)
		} else {
			closeRaw(ss.fd, true)
			ss.fd = -1
		}
		ss.refuse(false, reason, "")
		return false
	}
	ss.limited, ss.limitKey = l, key
	return true
}
