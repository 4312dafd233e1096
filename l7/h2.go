package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"sluice/l4"
)

// HTTP/2 (issue 10 part 4). A TLS route with HTTP2 set offers ALPN "h2"
// before "http/1.1". A connection that negotiates h2 is served by sluice's
// own HTTP/2 server (h2srv.go), not by the route's http.Server. Every
// stream runs the route's handler (serveHTTP), so the Host (:authority)
// check and its 421, locations, body buffering and limits, and backends are
// those of HTTP/1.1; backends still speak HTTP/1.1.
//
// WebSocket stays on HTTP/1.1: the server does not send
// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441, Section 3), so a browser
// opens a separate connection for wss:// and offers only http/1.1 in its
// ALPN. Cleartext routes have no h2c.
//
// Timeouts, as for HTTP/1.1:
//   - first request: the connection's read deadline is the end of the
//     handshake + HeaderTimeout until the first stream's headers are in;
//   - between requests: KeepAliveTimeout with no stream open (h2server's
//     rearm: GOAWAY, then close);
//   - body: BodyTimeout per read, per stream (h2body): 408 for that stream;
//   - one request: Relay.IdleTimeout from its headers (the stream is reset
//     and its ctx cancelled);
//   - writes: WriteStallTimeout per write on the connection (h2conn.write:
//     the conn closes) and per wait for a stream's flow-control credit
//     (waitWindow: the stream is reset).

// h2MaxStreams is SETTINGS_MAX_CONCURRENT_STREAMS. HAProxy's default is 100
// (Go's 250, nginx's 128).
const h2MaxStreams = 100

// h2BodySlots is how many streams of a connection may read a request body
// at once; the others wait (their first bytes in the connection's
// flow-control window, 1 MiB) until one's handler returns. Each may
// buffer request_buffer_bytes (readBody): without the bound one connection
// could hold h2MaxStreams of them, where an HTTP/1.1 connection holds one.
const h2BodySlots = 8

// testHookBodySlot, if set, runs when a stream has taken a body slot. It is
// atomic: a stream's handler may still run when its test resets it.
var testHookBodySlot atomic.Pointer[func()]

// h2conn is an HTTP/2 connection: the *tls.Conn with the route's write
// deadlines and record coalescing, what ends it and why, and its streams'
// bookkeeping; own is its server loop.
type h2conn struct {
	rt  *Route
	cs  *connState
	tc  *tls.Conn
	raw *net.TCPConn
	rw  *recordWriter

	start time.Time // end of the handshake
	wdlAt time.Time // when write last set the write deadline (under wmu)

	mu        sync.Mutex
	started   bool      // a stream reached the handler
	ended     bool      // the server loop returned: no more handlers
	active    int       // handlers running
	idleSince time.Time // when active last dropped to 0 (or the handshake ended)
	protoErr  string    // the last connection error
	handlers  sync.WaitGroup
	bodies    chan struct{} // a slot per stream reading a body (h2BodySlots)

	closeOnce sync.Once
	hard      atomic.Bool // drain or route close: no graceful close

	wmu  sync.Mutex      // the conn's writes (h2server's frames, close_notify)
	own  *h2server       // the server loop
	sctx context.Context // the streams' parent context
}

// serveH2 serves a connection that negotiated h2 until it ends, then ends
// it (cs.finish) once every stream's handler has returned.
func (rt *Route) serveH2(cs *connState, t *tls.Conn, c *net.TCPConn, rw *recordWriter, start time.Time) {
	h := &h2conn{rt: rt, cs: cs, tc: t, raw: c, rw: rw, start: start, idleSince: start,
		bodies: make(chan struct{}, h2BodySlots)}
	_ = c.SetReadDeadline(start.Add(rt.headerTimeout))
	_ = c.SetWriteDeadline(time.Time{}) // Write sets its own
	stop := context.AfterFunc(cs.ctx, h.closeHard)
	// Not cancelled with cs.ctx: closeHard records drain first, then
	// closes the conn, and the streams' contexts are cancelled as it ends.
	h.sctx = context.WithValue(context.WithoutCancel(cs.ctx), connStateKey{}, cs)
	h.own = newH2server(h)
	rt.track(nil, h)
	h.own.run()
	rt.untrack(nil, h)
	_ = h.Close()
	h.mu.Lock()
	h.ended = true
	h.mu.Unlock()
	// The streams' contexts are cancelled (h2server.run); wait for their
	// handlers.
	h.handlers.Wait()
	stop()
	cs.finish()
}

func (h *h2conn) streamDone() {
	h.mu.Lock()
	if h.active--; h.active == 0 {
		h.idleSince = time.Now()
	}
	h.mu.Unlock()
	h.handlers.Done()
}

// idledOut reports whether the conn has had no stream for KeepAliveTimeout.
func (h *h2conn) idledOut() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.started && h.active == 0 && time.Since(h.idleSince) >= h.rt.keepAliveTimeout
}

// countError records a connection error ("conn_..."): the likely reason
// when the conn closes. A stream's error (a stream reset, the others go
// on) is not recorded: it is not the connection's.
func (h *h2conn) countError(name string) {
	h.mu.Lock()
	h.protoErr = name
	h.mu.Unlock()
}

// slack is how long a deadline of timeout may go unmoved:
// writeDeadlineSlack, or less for a short timeout (tests), which would
// otherwise expire before it is moved.
func slack(timeout time.Duration) time.Duration { return min(writeDeadlineSlack, timeout/4) }

// readFailed records why reading the conn ended.
func (h *h2conn) readFailed(err error) {
	h.mu.Lock()
	started, active := h.started, h.active
	h.mu.Unlock()
	if h.own != nil {
		// A stream whose response is written may still be running: it
		// was answered.
		active = h.own.unanswered()
	}
	cs := h.cs
	switch {
	case h.hard.Load():
		cs.setReason(l4.ReasonDrain, nil)
	case errors.Is(err, net.ErrClosed):
		// closed here: Close says why.
	case isTimeout(err) && !started:
		cs.setReason(ReasonHeaderTimeout, nil)
	case h.idledOut():
		cs.setReason(l4.ReasonIdleTimeout, nil) // the client closed after our GOAWAY
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		if active > 0 {
			cs.setReason(l4.ReasonClientClosed, nil)
		} else {
			cs.setReason(l4.ReasonEOF, nil)
		}
	case errors.Is(err, syscall.ECONNRESET):
		cs.setReason(l4.ReasonClientReset, err)
	default:
		cs.setReason(ReasonBadRequest, err) // a TLS alert or record error
	}
}

// write gives every write WriteStallTimeout to make progress (vconn.Write).
// The records of one write leave in one syscall.
func (h *h2conn) write(p []byte) (int, error) {
	if now := time.Now(); now.Sub(h.wdlAt) >= slack(h.rt.writeStall) {
		_ = h.raw.SetWriteDeadline(now.Add(h.rt.writeStall))
		h.wdlAt = now
	}
	var n int
	var err error
	if h.rw == nil || !h.rw.collect(len(p)) {
		n, err = h.tc.Write(p)
	} else {
		n, err = h.tc.Write(p)
		if ferr := h.rw.flush(); err == nil && ferr != nil {
			n, err = 0, ferr
		}
	}
	if err != nil {
		h.writeFailed(err)
	}
	return n, err
}

// writeFailed records why writing the conn failed: h2server then closes
// it, and the read that fails next sees only that (net.ErrClosed).
func (h *h2conn) writeFailed(err error) {
	h.mu.Lock()
	active := h.active
	h.mu.Unlock()
	if h.own != nil {
		// As readFailed: a write of a frame after the last answer (a
		// WINDOW_UPDATE for a refused body) that finds the client gone
		// found a finished conn.
		active = h.own.unanswered()
	}
	cs := h.cs
	switch {
	case isTimeout(err):
		cs.setReason(l4.ReasonWriteStall, err)
	case h.hard.Load():
		cs.setReason(l4.ReasonDrain, nil)
	case errors.Is(err, net.ErrClosed):
		// closed here: its reason is recorded already
	case errors.Is(err, syscall.ECONNRESET):
		cs.setReason(l4.ReasonClientReset, err)
	case active > 0:
		cs.setReason(l4.ReasonClientClosed, nil) // EPIPE: gone mid-request
	default:
		cs.setReason(l4.ReasonEOF, nil)
	}
}

// Close ends the conn: after a GOAWAY (idle, protocol error, shutdown) or
// when reading failed. It records why, if reading did not, and closes with
// close_notify and a FIN unless the conn is closed hard.
func (h *h2conn) Close() error {
	h.closeOnce.Do(h.closeConn)
	return nil
}

func (h *h2conn) closeConn() {
	h.mu.Lock()
	started, protoErr := h.started, h.protoErr
	h.mu.Unlock()
	cs := h.cs
	switch {
	case h.hard.Load():
		cs.setReason(l4.ReasonDrain, nil)
	case h.idledOut():
		cs.setReason(l4.ReasonIdleTimeout, nil)
	case protoErr != "":
		cs.setReason(ReasonBadRequest, errors.New("l7: h2 protocol error: "+protoErr))
	case !started && time.Since(h.start) >= h.rt.headerTimeout:
		cs.setReason(ReasonHeaderTimeout, nil)
	case !started:
		cs.setReason(ReasonBadRequest, errors.New("l7: h2: no valid client preface"))
	}
	if !h.hard.Load() {
		h.wmu.Lock() // after a write in progress
		defer h.wmu.Unlock()
		_ = h.raw.SetWriteDeadline(time.Now().Add(lingerTimeout))
		_ = h.tc.CloseWrite() // close_notify
		_ = h.raw.CloseWrite()
	}
	_ = h.raw.Close()
}

// goAway is Route.Retire's: GOAWAY, and the conn closes once its streams
// are done.
func (h *h2conn) goAway() { h.own.shutdown() }

// closeHard closes the socket at once (drain, route close): the server
// loop's read fails, it ends the conn and cancels its streams.
func (h *h2conn) closeHard() {
	h.hard.Store(true)
	h.cs.setReason(l4.ReasonDrain, nil)
	_ = h.raw.Close()
}
