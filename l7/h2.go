// x/net/http2's server is deprecated for net/http's, which serves h2 only
// on a *tls.Conn its own listener accepted: h2conn is not one.
//lint:file-ignore SA1019 see above

package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"sluice/l4"
)

// HTTP/2 (issue 10 part 4). A TLS route with HTTP2 set offers ALPN "h2"
// before "http/1.1". A connection that negotiates h2 is served by
// x/net/http2's server, not by the route's http.Server: net/http switches to
// h2 only for a *tls.Conn it handshakes itself, and it sees a vconn. Every
// stream runs the route's handler (serveHTTP), so the Host (:authority)
// check and its 421, locations, body buffering and limits, and backends are
// those of HTTP/1.1; backends still speak HTTP/1.1.
//
// WebSocket stays on HTTP/1.1: the server does not send
// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441, Section 3; x/net/http2 sends
// it only under GODEBUG=http2xconnect=1, golang/go#71128), so a browser
// opens a separate connection for wss:// and offers only http/1.1 in its
// ALPN. Cleartext routes have no h2c.
//
// Timeouts, as for HTTP/1.1:
//   - first request: the connection's read deadline is the end of the
//     handshake + HeaderTimeout until the first stream's headers are in
//     (x/net's own preface timeout is 10s);
//   - between requests: x/net's IdleTimeout = KeepAliveTimeout, with no
//     stream open (GOAWAY, then close);
//   - body: BodyTimeout per read, per stream (h2Body): 408 for that stream;
//   - one request: Relay.IdleTimeout from its headers (the http.Server's
//     WriteTimeout for x/net: the stream is reset and its ctx cancelled);
//   - writes: WriteStallTimeout per write on the connection (h2conn.Write:
//     the conn closes) and per write of a stream's response (h2Writer: the
//     stream is reset).

// h2MaxStreams is SETTINGS_MAX_CONCURRENT_STREAMS. HAProxy's default is 100
// (Go's 250, nginx's 128).
const h2MaxStreams = 100

// h2BodySlots is how many streams of a connection may read a request body
// at once; the others wait (their first bytes in x/net's flow-control
// window, 1 MiB per connection) until one's handler returns. Each may
// buffer request_buffer_bytes (readBody): without the bound one connection
// could hold h2MaxStreams of them, where an HTTP/1.1 connection holds one.
const h2BodySlots = 8

// testHookBodySlot, if set, runs when a stream has taken a body slot. It is
// atomic: a stream's handler may still run when its test resets it.
var testHookBodySlot atomic.Pointer[func()]

// h2PrefaceTimeout is x/net/http2's (not configurable): a conn whose client
// preface has not arrived by then is closed.
const h2PrefaceTimeout = 10 * time.Second

// h2Base is the http.Server x/net/http2 takes its HTTP/1 settings from.
func (rt *Route) h2Base() *http.Server {
	return &http.Server{
		// Per stream, from its headers: the cap on one plain request.
		WriteTimeout:   rt.requestCap,
		MaxHeaderBytes: maxHeadBytes, // SETTINGS_MAX_HEADER_LIST_SIZE; 431 over it
		ErrorLog:       rt.srv.ErrorLog,
	}
}

// h2conn is an HTTP/2 connection: the net.Conn x/net/http2 serves (the
// *tls.Conn with the route's write deadlines and record coalescing) and its
// streams' handler.
type h2conn struct {
	rt  *Route
	cs  *connState
	tc  *tls.Conn
	raw *net.TCPConn
	rw  *recordWriter

	start time.Time // end of the handshake
	wdlAt time.Time // when Write last set the write deadline (one writer at a time)

	mu        sync.Mutex
	started   bool      // a stream reached the handler
	ended     bool      // ServeConn returned: no more handlers
	active    int       // handlers running
	idleSince time.Time // when active last dropped to 0 (or the handshake ended)
	protoErr  string    // the last protocol error x/net counted
	handlers  sync.WaitGroup
	bodies    chan struct{} // a slot per stream reading a body (h2BodySlots)

	closeOnce sync.Once
	hard      atomic.Bool // drain or route close: no graceful close

	// A response's HEADERS and DATA in one TLS record (h2conn.Write).
	wmu    sync.Mutex   // Write and flushHeld: what is held goes first
	held   *[]byte      // a HEADERS frame waiting for its DATA (recordBufs)
	frames frameScan    // where x/net's writes are in the stream of frames
	expect atomic.Int32 // streams whose HEADERS will be followed by DATA at once
	holdT  *time.Timer  // flushHeld, h2HoldMax after the last hold

	// own serves the conn (h2srv.go) unless h2XNet; sctx is its streams'
	// parent context.
	own  *h2server
	sctx context.Context

	// shut's Shutdown sends this conn's GOAWAY (Route.Retire): x/net
	// starts a graceful shutdown only for the conns of a Server that
	// ConfigureServer tied to an http.Server. nil if that failed.
	shut *http.Server
}

var (
	_ net.Conn     = (*h2conn)(nil)
	_ http.Handler = (*h2conn)(nil)
)

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
	if !h2XNet {
		h.own = newH2server(h)
		rt.track(nil, h)
		h.own.run()
	} else {
		h.serveXNet()
	}
	rt.untrack(nil, h)
	_ = h.Close() // x/net closes it, except when it rejects the conn early
	h.mu.Lock()
	h.ended = true
	h.mu.Unlock()
	// x/net cancelled the streams' contexts when the conn closed, but
	// does not wait for their handlers.
	h.handlers.Wait()
	stop()
	cs.finish()
}

// h2XNet serves HTTP/2 with x/net/http2's server instead of sluice's own
// (h2srv.go): kept for A/B measurements and tests of both.
var h2XNet = false

func (h *h2conn) serveXNet() {
	rt := h.rt
	srv := &http2.Server{
		MaxConcurrentStreams: h2MaxStreams,
		// The protocol's initial SETTINGS_MAX_FRAME_SIZE, not x/net's 1 MiB:
		// its frame read buffer grows to the largest frame a client sends.
		MaxReadFrameSize: 16 << 10,
		IdleTimeout:      rt.keepAliveTimeout,
		CountError:       h.countError,
	}
	if shut := (&http.Server{}); http2.ConfigureServer(shut, srv) == nil {
		h.shut = shut
	}
	rt.track(nil, h)
	srv.ServeConn(h, &http2.ServeConnOpts{
		Context:    h.sctx,
		BaseConfig: rt.h2base,
		Handler:    h,
	})
}

// ServeHTTP runs one stream: the route's handler, with a progress timeout
// on the body.
func (h *h2conn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	if h.ended {
		h.mu.Unlock()
		return // the conn is gone; x/net resets the stream
	}
	first := !h.started
	h.started = true
	h.active++
	h.handlers.Add(1)
	h.mu.Unlock()
	if first {
		// The first request is in: from now on x/net's idle timeout and
		// the per-stream ones apply (headerTimeout no longer does).
		_ = h.raw.SetReadDeadline(time.Time{})
	}
	defer h.streamDone()
	switch {
	case r.ContentLength == 0:
		// x/net's Body for a stream without one is its own empty reader;
		// http.NoBody, as net/http's HTTP/1.1 server gives, lets the proxy
		// take its fast path (fastPath), not ReverseProxy's: 118 allocations
		// per proxied GET in BenchmarkH2Proxied instead of 167.
		r.Body = http.NoBody
	case r.Body != nil:
		select {
		case h.bodies <- struct{}{}:
			defer func() { <-h.bodies }()
		case <-r.Context().Done():
			return // the stream or the conn is gone
		}
		if hook := testHookBodySlot.Load(); hook != nil {
			(*hook)()
		}
		if d, ok := w.(readDeadliner); ok {
			r.Body = &h2Body{ReadCloser: r.Body, w: d, timeout: h.rt.bodyTimeout}
		}
	}
	d, ok := w.(writeDeadliner)
	if !ok {
		h.rt.serveHTTP(w, r)
		return
	}
	hw := &h2Writer{ResponseWriter: w, wd: d, stall: h.rt.writeStall}
	h.rt.serveHTTP(hw, r)
	if !hw.flushed && hw.buffered > 0 && hw.buffered <= h2ChunkSize && r.Method != http.MethodHead {
		// x/net sends the whole response when this returns: HEADERS, then
		// DATA straight after (Write holds the one for the other).
		h.expect.Add(1)
	}
}

func (h *h2conn) streamDone() {
	h.mu.Lock()
	if h.active--; h.active == 0 {
		h.idleSince = time.Now()
	}
	h.mu.Unlock()
	h.handlers.Done()
}

// idledOut reports whether the conn has had no stream for KeepAliveTimeout:
// x/net's idle timer (reset when its last stream closes, after our handler
// returned) has fired.
func (h *h2conn) idledOut() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.started && h.active == 0 && time.Since(h.idleSince) >= h.rt.keepAliveTimeout
}

// countError records a connection error x/net found ("conn_PROTOCOL_...",
// or a malformed frame, "frame_..."): the likely reason when it closes the
// conn. A stream's error ("stream_...": a stream reset, the others go on)
// is not the connection's.
func (h *h2conn) countError(name string) {
	if !strings.HasPrefix(name, "conn_") && !strings.HasPrefix(name, "frame_") {
		return
	}
	h.mu.Lock()
	h.protoErr = name
	h.mu.Unlock()
}

// slack is how long a deadline of timeout may go unmoved:
// writeDeadlineSlack, or less for a short timeout (tests), which would
// otherwise expire before it is moved.
func slack(timeout time.Duration) time.Duration { return min(writeDeadlineSlack, timeout/4) }

type (
	readDeadliner  interface{ SetReadDeadline(time.Time) error }
	writeDeadliner interface{ SetWriteDeadline(time.Time) error }
)

// h2Writer gives each write of a stream's response WriteStallTimeout, as
// vconn.Write does for an HTTP/1.1 conn: a client that grants a stream no
// flow-control credit would block its handler, and with it a backend conn
// and its slot, until the stream's overall cap (Relay.IdleTimeout). The
// stream is reset (x/net's write timeout); the conn goes on. Only a write
// in progress counts: a stream waiting for its backend is not stalled.
//
// A write that fits in what x/net buffers of a response (h2ChunkSize: it
// sends nothing before the buffer is full, a Flush or the handler's return)
// cannot block and needs no timer: most responses of a proxied game API.
type h2Writer struct {
	http.ResponseWriter
	wd       writeDeadliner
	stall    time.Duration
	buffered int  // bytes written since the last Flush (x/net holds them); over h2ChunkSize: unknown, some sent
	flushed  bool // Flush was called: x/net sent the HEADERS then
}

// h2ChunkSize is x/net's handlerChunkWriteSize, the size of the buffer a
// stream's response is written into.
const h2ChunkSize = 4 << 10

func (w *h2Writer) Write(p []byte) (int, error) {
	if w.buffered+len(p) <= h2ChunkSize {
		n, err := w.ResponseWriter.Write(p)
		w.buffered += n
		return n, err
	}
	t := time.AfterFunc(w.stall, w.expire)
	n, err := w.ResponseWriter.Write(p)
	t.Stop()
	w.buffered = h2ChunkSize + 1 // x/net has sent some: no longer known
	return n, err
}

func (w *h2Writer) Flush() {
	t := time.AfterFunc(w.stall, w.expire)
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	t.Stop()
	w.buffered, w.flushed = 0, true
}

// expire resets the stream: its blocked write returns an error.
func (w *h2Writer) expire() { _ = w.wd.SetWriteDeadline(aLongTimeAgo) }

func (w *h2Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// h2Body gives each read of a stream's body BodyTimeout to make progress
// (less up to writeDeadlineSlack, as vconn.Write does for writes: moving
// the deadline is a message to x/net's serve loop and a timer). x/net then
// fails the read with os.ErrDeadlineExceeded: bodyFailed answers 408.
type h2Body struct {
	io.ReadCloser
	w       readDeadliner
	timeout time.Duration
	at      time.Time
}

func (b *h2Body) Read(p []byte) (int, error) {
	if now := time.Now(); now.Sub(b.at) >= slack(b.timeout) {
		_ = b.w.SetReadDeadline(now.Add(b.timeout))
		b.at = now
	}
	return b.ReadCloser.Read(p)
}

func (h *h2conn) Read(p []byte) (int, error) {
	n, err := h.tc.Read(p)
	if err != nil && n == 0 {
		h.readFailed(err)
	}
	return n, err
}

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
		// x/net closed it: Close says why.
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

// h2HoldMax bounds how long Write holds a HEADERS frame for the DATA that
// was expected to follow it (a stream reset in between, or a miscount):
// then flushHeld sends it alone. It is not a delay in the normal case,
// where the DATA comes a few goroutine switches later; it is longer than
// those can take on a loaded machine, where the handler's goroutine waits
// behind every other runnable one.
const h2HoldMax = 10 * time.Millisecond

// Write is x/net's, one at a time: each flush of its frame buffer.
//
// x/net writes a response's HEADERS and its DATA in separate flushes (the
// handler waits until the HEADERS frame is written, the flush starts before
// it queues the DATA): two TLS records and two syscalls per response, where
// nginx and HAProxy send one. So a flush that ends with a HEADERS frame
// without END_STREAM, while a stream's DATA is expected to follow at once
// (expect, counted by ServeHTTP when the handler returns with its whole
// response buffered), is held and goes out with the next flush, or after
// h2HoldMax. Frames keep their order: HPACK needs it.
func (h *h2conn) Write(p []byte) (int, error) {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	lastHeaders, heads := h.scanFrames(p)
	if heads > 0 && h.takeExpected(heads) && lastHeaders && h.holdable(p) {
		if h.held == nil {
			h.held = recordBufs.Get().(*[]byte)
		}
		*h.held = append(*h.held, p...)
		if h.holdT == nil {
			h.holdT = time.AfterFunc(h2HoldMax, h.flushHeld)
		} else {
			h.holdT.Reset(h2HoldMax)
		}
		return len(p), nil
	}
	if h.held == nil {
		return h.write(p)
	}
	b := h.held
	h.held = nil
	*b = append(*b, p...)
	_, err := h.write(*b)
	putRecordBuf(b)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// holdable reports whether p may join what is held: one response's worth.
func (h *h2conn) holdable(p []byte) bool {
	n := len(p)
	if h.held != nil {
		n += len(*h.held)
	}
	return n <= minCollect
}

// takeExpected counts n HEADERS frames against expect; it reports whether
// any was expected.
func (h *h2conn) takeExpected(n int32) bool {
	for {
		e := h.expect.Load()
		if e <= 0 {
			return false
		}
		if h.expect.CompareAndSwap(e, e-min(e, n)) {
			return true
		}
	}
}

// scanFrames follows the frames x/net writes across its flushes (its
// buffer may cut a frame, even its header, anywhere). It returns whether p
// ends where a HEADERS frame without END_STREAM ends, and how many such
// frames' headers it completes.
func (h *h2conn) scanFrames(p []byte) (lastHeaders bool, heads int32) {
	fs := &h.frames
	for i := 0; i < len(p); {
		if fs.rem > 0 {
			k := min(fs.rem, len(p)-i)
			fs.rem -= k
			i += k
			continue
		}
		k := copy(fs.hdr[fs.hn:], p[i:])
		fs.hn += k
		i += k
		if fs.hn < len(fs.hdr) {
			break
		}
		fs.hn = 0
		fs.rem = int(fs.hdr[0])<<16 | int(fs.hdr[1])<<8 | int(fs.hdr[2])
		typ, flags := http2.FrameType(fs.hdr[3]), http2.Flags(fs.hdr[4])
		fs.head = typ == http2.FrameHeaders && flags.Has(http2.FlagHeadersEndHeaders) &&
			!flags.Has(http2.FlagHeadersEndStream)
		if fs.head {
			heads++
		}
	}
	return fs.head && fs.rem == 0 && fs.hn == 0, heads
}

// frameScan is where scanFrames is in the stream of frames.
type frameScan struct {
	hdr  [9]byte // the frame header being read
	hn   int     // bytes of hdr read
	rem  int     // bytes of the current frame's payload still to come
	head bool    // the current frame is a HEADERS frame without END_STREAM
}

// flushHeld sends what Write holds: after h2HoldMax, and before the conn
// closes.
func (h *h2conn) flushHeld() {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if h.held == nil {
		return
	}
	h.expect.Store(0) // the DATA expected did not come: count anew
	b := h.held
	h.held = nil
	_, _ = h.write(*b)
	putRecordBuf(b)
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

// writeFailed records why writing the conn failed: x/net then closes it,
// and the read that fails next sees only that (net.ErrClosed).
func (h *h2conn) writeFailed(err error) {
	h.mu.Lock()
	active := h.active
	h.mu.Unlock()
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

// Close is x/net's: after its GOAWAY (idle, protocol error) or when reading
// failed. It records why, if reading did not, and closes with close_notify
// and a FIN unless the conn is closed hard.
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
	case !started && time.Since(h.start) >= min(h.rt.headerTimeout, h2PrefaceTimeout):
		cs.setReason(ReasonHeaderTimeout, nil)
	case !started:
		cs.setReason(ReasonBadRequest, errors.New("l7: h2: no valid client preface"))
	}
	if !h.hard.Load() {
		h.flushHeld()
		_ = h.raw.SetWriteDeadline(time.Now().Add(lingerTimeout))
		_ = h.tc.CloseWrite() // close_notify
		_ = h.raw.CloseWrite()
	}
	_ = h.raw.Close()
}

// goAway is Route.Retire's: x/net sends GOAWAY and closes the connection
// once its streams are done. A conn x/net has not registered yet gets it
// with its first response instead (serveHTTP's Connection: close).
func (h *h2conn) goAway() {
	if h.own != nil {
		h.own.shutdown()
		return
	}
	if h.shut != nil {
		_ = h.shut.Shutdown(context.Background()) // returns at once: it serves no conn itself
	}
}

// closeHard closes the socket at once (drain, route close): x/net's read
// fails and it ends the conn and cancels its streams.
func (h *h2conn) closeHard() {
	h.hard.Store(true)
	h.cs.setReason(l4.ReasonDrain, nil)
	_ = h.raw.Close()
}

func (h *h2conn) ConnectionState() tls.ConnectionState { return h.tc.ConnectionState() }
func (h *h2conn) LocalAddr() net.Addr                  { return h.cs.local }
func (h *h2conn) RemoteAddr() net.Addr                 { return h.cs.client }

// The deadlines are h2conn's own: x/net clears them (with ReadTimeout or
// WriteTimeout set) and would set none otherwise.
func (h *h2conn) SetDeadline(time.Time) error      { return nil }
func (h *h2conn) SetReadDeadline(time.Time) error  { return nil }
func (h *h2conn) SetWriteDeadline(time.Time) error { return nil }
