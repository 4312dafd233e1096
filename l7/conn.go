package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"sluice/l4"
)

const (
	// errorWriteTimeout bounds the write of a response the reader itself
	// sends (400, 408, 431, ...) to a client that may not read.
	errorWriteTimeout = 5 * time.Second
	// lingerTimeout and lingerMax bound the lingering close: after our last
	// response we send a FIN and read what the client still sends, so that
	// closing with unread bytes does not RST the response away (RFC 9112,
	// Section 9.6; net/http's closeWriteAndWait waits 500ms too).
	lingerTimeout = 500 * time.Millisecond
	lingerMax     = 256 << 10
	// writeDeadlineSlack: see vconn.Write.
	writeDeadlineSlack = time.Second
	// bgProbe bounds net/http's background read's wait for readability
	// before it reads (recordWriter.waitFor): a read(2) right away finds
	// nothing on nearly every request (issue 10's http-small: a syscall
	// per request). A FIN or pipelined bytes that arrived between the
	// request's read and the wait leave no readiness to wait for: they are
	// seen when the probe runs out and fill reads anyway, or when the
	// response is done.
	bgProbe = 100 * time.Millisecond
	// initialBuf grows to maxBuf, which must exceed maxHeadBytes so that an
	// oversized head is seen as one.
	initialBuf = 4 << 10
	maxBuf     = maxHeadBytes + 1<<10
)

type phase uint8

const (
	phaseHead        phase = iota // reading a request head
	phaseBody                     // Content-Length body bytes
	phaseChunked                  // a chunked body, validated as it streams
	phasePassthrough              // after an upgrade head: raw bytes
	phaseFailed                   // refused: no more requests
)

// vconn sits between the terminated client conn and net/http. Its Read
// releases a request head only once validated (head.go), then the body by its
// framing, then the next head; after an upgrade head it passes bytes through.
// It owns every read deadline: net/http's SetReadDeadline calls only abort
// and resume a pending background read.
//
// net/http runs at most one Read at a time (its connReader enforces it); the
// fields under "reader" belong to that Read. dmu guards what other
// goroutines touch: the abort flag and the request/idle timeline.
type vconn struct {
	rt  *Route
	cs  *connState
	tc  net.Conn      // *tls.Conn, or raw for cleartext
	raw *net.TCPConn  // the socket under tc
	rw  *recordWriter // under a *tls.Conn; nil for cleartext

	wdlAt time.Time // when Write last set the write deadline (net/http's goroutine)
	held  bool      // Write collects until unhold (hold)

	// reader
	buf    []byte
	r, w   int    // unread bytes are buf[r:w]
	ready  []byte // validated bytes not yet returned
	ph     phase
	head   headScanner
	remain int64 // phaseBody
	chunk  chunkScanner
	fail   error      // sticky: every later Read returns it
	defer_ *violation // a refusal found by a background read, answered by the next Read

	dmu       sync.Mutex
	aborted   bool      // net/http aborted a background read (deadline in the past)
	reading   bool      // a read of tc is in progress under readDL
	readDL    time.Time //
	first     bool      // no request has completed yet
	inRequest bool      // a head was released and its response is not done
	reqStart  time.Time // when the current head was released
	firstDL   time.Time // end of handshake + HeaderTimeout: the first head's deadline
	idleDL    time.Time // last response + KeepAliveTimeout: the next head's first byte
	headDL    time.Time // first byte of a later head + HeaderTimeout

	closeOnce sync.Once
	hard      atomic.Bool // close at once: no lingering
	hijacked  atomic.Bool
	eof       atomic.Bool // the client's read side is done (EOF or error)
}

// tlsVconn is a vconn over a *tls.Conn: net/http sets Request.TLS from
// ConnectionState (it type-asserts *tls.Conn only to run the handshake and
// ALPN itself, which is done already).
type tlsVconn struct{ *vconn }

func (t tlsVconn) ConnectionState() tls.ConnectionState {
	return t.tc.(*tls.Conn).ConnectionState()
}

type vconner interface{ v() *vconn }

func (v *vconn) v() *vconn { return v }

var (
	_ net.Conn = (*vconn)(nil)
	_ net.Conn = tlsVconn{}
)

func newVconn(rt *Route, cs *connState, tc net.Conn, raw *net.TCPConn, prefix []byte, start time.Time) *vconn {
	v := &vconn{rt: rt, cs: cs, tc: tc, raw: raw, first: true}
	v.firstDL = start.Add(rt.headerTimeout)
	if len(prefix) <= initialBuf {
		v.buf = *vbufs.Get().(*[]byte)
	} else {
		v.buf = make([]byte, len(prefix))
	}
	v.w = copy(v.buf, prefix)
	return v
}

func (v *vconn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if len(v.ready) > 0 {
			n := copy(p, v.ready)
			v.ready = v.ready[n:]
			return n, nil
		}
		if v.fail != nil {
			return 0, v.fail
		}
		if v.defer_ != nil {
			if v.busy() {
				return 0, nil // still a background read: answer after the response
			}
			return 0, v.refuse(v.defer_)
		}
		var err error
		switch v.ph {
		case phaseHead:
			err = v.stepHead()
		case phaseBody:
			if v.r == v.w {
				err = v.fill()
				break
			}
			n := int(min(int64(v.w-v.r), v.remain))
			v.release(n)
			if v.remain -= int64(n); v.remain == 0 {
				v.ph = phaseHead
			}
		case phaseChunked:
			err = v.stepChunked()
		case phasePassthrough:
			if v.r < v.w {
				v.release(v.w - v.r)
				break
			}
			v.armDeadline(false)
			n, rerr := v.tc.Read(p)
			v.disarm()
			if rerr != nil && n == 0 {
				return 0, v.readFailed(rerr)
			}
			return n, nil
		case phaseFailed:
			return 0, io.EOF
		}
		if errors.Is(err, errDeferred) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// release marks the next n unread bytes as validated.
func (v *vconn) release(n int) {
	v.ready = v.buf[v.r : v.r+n]
	v.r += n
}

var errDeferred = errors.New("l7: refusal deferred until the response is done")

// stepHead examines the unread bytes as a request head; it releases a
// complete valid head, refuses an invalid one, or reads more.
func (v *vconn) stepHead() error {
	n, skip, vi := v.head.feed(v.buf[v.r:v.w])
	switch {
	case skip > 0:
		v.r += skip
		return nil
	case vi != nil:
		return v.violate(vi)
	case n == 0:
		return v.fill()
	}
	fr := v.head.framing()
	v.remain = v.head.cl
	v.head = headScanner{}
	v.release(n)
	switch fr {
	case frameNone:
		v.ph = phaseHead
	case frameLength:
		v.ph = phaseBody
	case frameChunked:
		v.ph, v.chunk = phaseChunked, chunkScanner{}
	case framePassthrough:
		v.ph = phasePassthrough
	}
	v.dmu.Lock()
	v.inRequest, v.reqStart, v.headDL = true, time.Now(), time.Time{}
	v.dmu.Unlock()
	return nil
}

// peekHead is stepHead for the fast path (h1fast.go): it reads until a
// whole valid head is buffered at buf[r:] and returns its length, without
// releasing it; the scanner keeps what it found (framing, HTTP/1.0) until
// takeHead or handHead. A refused head is answered (refuse) and its error
// returned, as are read errors: the connection is to be closed.
func (v *vconn) peekHead() (int, error) {
	for {
		if v.fail != nil {
			return 0, v.fail
		}
		n, skip, vi := v.head.feed(v.buf[v.r:v.w])
		switch {
		case skip > 0:
			v.r += skip
		case vi != nil:
			return 0, v.violate(vi)
		case n > 0:
			return n, nil
		default:
			if err := v.fill(); err != nil {
				return 0, err
			}
		}
	}
}

// takeHead consumes n bytes, the head peekHead found and a body that came
// with it, for a request the fast path answers: the request is in flight
// until responseDone, as after stepHead.
func (v *vconn) takeHead(n int) {
	v.head = headScanner{}
	v.r += n
	v.dmu.Lock()
	v.inRequest, v.reqStart, v.headDL = true, time.Now(), time.Time{}
	v.dmu.Unlock()
}

// handHead leaves the head peekHead found for net/http, whose first Read
// validates it again (stepHead).
func (v *vconn) handHead() { v.head = headScanner{} }

func (v *vconn) stepChunked() error {
	n, done, vi := v.chunk.step(v.buf[v.r:v.w])
	if vi != nil {
		return v.violate(vi)
	}
	if n == 0 && !done {
		return v.fill()
	}
	v.release(n)
	if done {
		v.ph = phaseHead
	}
	return nil
}

// violate refuses the request being read. A head refused by net/http's
// background read (while the previous response is in flight) is answered
// only when net/http reads again; a refusal in a body cannot be answered (the
// handler owns the response) and fails the read.
func (v *vconn) violate(vi *violation) error {
	inBody := v.ph == phaseBody || v.ph == phaseChunked
	v.ph = phaseFailed
	if inBody {
		v.cs.setReason(vi.reason, vi)
		v.fail = readError(v, vi)
		return v.fail
	}
	if v.busy() {
		v.defer_ = vi
		return errDeferred
	}
	return v.refuse(vi)
}

// refuse writes the response for vi itself, then fails the read with an
// error net/http takes as a silent read failure (a *net.OpError "read", see
// its isCommonNetReadError), so it writes nothing more and closes.
func (v *vconn) refuse(vi *violation) error {
	v.defer_ = nil
	v.cs.refused(vi)
	body := vi.msg + "\n"
	resp := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		vi.code, http.StatusText(vi.code), len(body), body)
	_ = v.tc.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	_, _ = io.WriteString(v.tc, resp)
	v.fail = readError(v, vi)
	return v.fail
}

func readError(v *vconn, err error) error {
	return &net.OpError{Op: "read", Net: "tcp", Source: v.cs.local, Addr: v.cs.client, Err: err}
}

// busy reports whether a request is in flight (released head, response not
// done): reads now are net/http's background reads or body reads.
func (v *vconn) busy() bool {
	v.dmu.Lock()
	defer v.dmu.Unlock()
	return v.inRequest
}

// fill reads more bytes from tc under the deadline of the current phase.
func (v *vconn) fill() error {
	if v.r == v.w {
		v.r, v.w = 0, 0
	} else if v.w == len(v.buf) && v.r > 0 {
		v.w = copy(v.buf, v.buf[v.r:v.w])
		v.r = 0
	}
	if v.w == len(v.buf) {
		if len(v.buf) >= maxBuf {
			// Unreachable: the head limits fire first.
			return v.violate(&violation{code: http.StatusRequestHeaderFieldsTooLarge, reason: ReasonHeaderTooLarge, msg: "request header too large"})
		}
		nb := make([]byte, min(2*len(v.buf), maxBuf))
		v.w = copy(nb, v.buf[:v.w])
		v.buf = nb
	}
	started := v.ph == phaseHead && v.w > v.r
	// net/http's background read (a head while a request is in flight)
	// waits for the socket to be readable before it reads (bgProbe).
	probe := v.ph == phaseHead && !started && v.rw != nil && v.busy()
	if probe {
		v.rw.waitFor = v.raw
	}
	v.armDeadline(probe)
	n, err := v.tc.Read(v.buf[v.w:])
	v.disarm()
	if probe {
		v.rw.waitFor = nil
		if n == 0 && isTimeout(err) && !v.wasAborted() {
			// The probe ran out: a read as any other.
			v.armDeadline(false)
			n, err = v.tc.Read(v.buf[v.w:])
			v.disarm()
		}
	}
	v.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		return nil
	}
	if (v.ph == phaseBody || v.ph == phaseChunked) && !v.wasAborted() {
		// A body that stalls or ends early is the client's doing.
		switch {
		case isTimeout(err):
			v.cs.setReason(ReasonBodyTimeout, nil)
		case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
			v.cs.setReason(l4.ReasonClientClosed, nil)
		}
	}
	if v.ph == phaseHead && isTimeout(err) && !v.wasAborted() {
		switch {
		case v.busy():
			// A background read hit the request's overall cap.
		case started:
			return v.violate(&violation{code: http.StatusRequestTimeout, reason: ReasonHeaderTimeout, msg: "request header timeout"})
		default:
			// Nothing of a head arrived: close without a word.
			v.dmu.Lock()
			first := v.first
			v.dmu.Unlock()
			switch {
			case first:
				v.cs.setReason(ReasonHeaderTimeout, nil)
			case v.rt.retired.Load():
				v.cs.setReason(ReasonKeepAliveEnded, nil)
			default:
				v.cs.setReason(l4.ReasonIdleTimeout, nil)
			}
		}
	}
	return v.readFailed(err)
}

// readFailed records a read error from tc and makes it sticky, unless it is
// net/http aborting its background read.
func (v *vconn) readFailed(err error) error {
	if isTimeout(err) && v.wasAborted() {
		return err
	}
	switch {
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		v.cs.setReason(l4.ReasonEOF, nil)
	case isTimeout(err):
		v.cs.setReason(l4.ReasonIdleTimeout, nil)
	case errors.Is(err, net.ErrClosed):
		if v.hard.Load() {
			v.cs.setReason(l4.ReasonDrain, nil)
		} else {
			v.cs.setReason(l4.ReasonError, err)
		}
	case errors.Is(err, syscall.ECONNRESET):
		v.cs.setReason(l4.ReasonClientReset, err)
	default:
		v.cs.setReason(ReasonBadRequest, err) // a TLS alert or record error from the client
	}
	v.eof.Store(true)
	v.fail = err
	return err
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

func (v *vconn) wasAborted() bool {
	v.dmu.Lock()
	defer v.dmu.Unlock()
	return v.aborted
}

// armDeadline sets the read deadline of the phase (RELIABILITY rule 1: each
// absolute, none cleared before the next is set):
//   - first head: end of handshake + HeaderTimeout, from 0 bytes on;
//   - later heads: last response + KeepAliveTimeout until the first byte,
//     then that byte + HeaderTimeout;
//   - body: BodyTimeout per read;
//   - while a request is in flight (net/http's background read, or the
//     passthrough before a hijack): its start + the relay's idle timeout, a
//     cap on one plain request; with probe, the socket gets at most
//     bgProbe from now (fill reads again when it runs out).
func (v *vconn) armDeadline(probe bool) {
	v.dmu.Lock()
	defer v.dmu.Unlock()
	now := time.Now()
	var dl time.Time
	switch {
	case v.ph == phaseBody || v.ph == phaseChunked:
		dl = now.Add(v.rt.bodyTimeout)
	case v.inRequest:
		dl = v.reqStart.Add(v.rt.requestCap)
	case v.first:
		dl = v.firstDL
	case v.w > v.r:
		if v.headDL.IsZero() {
			v.headDL = now.Add(v.rt.headerTimeout)
		}
		dl = v.headDL
	default:
		dl = v.idleDL
	}
	v.readDL, v.reading = dl, true
	if !v.aborted {
		if p := now.Add(bgProbe); probe && v.inRequest && p.Before(dl) {
			dl = p
		}
		_ = v.tc.SetReadDeadline(dl)
	}
}

func (v *vconn) disarm() {
	v.dmu.Lock()
	v.reading = false
	v.dmu.Unlock()
}

// responseDone is net/http's StateIdle: the response is out, the conn waits
// for the next request.
func (v *vconn) responseDone() {
	v.dmu.Lock()
	defer v.dmu.Unlock()
	v.inRequest, v.first = false, false
	v.idleDL = time.Now().Add(v.rt.keepAliveTimeout)
	if v.rt.retired.Load() {
		v.idleDL = time.Now() // Retire: no wait for another request
	}
	v.headDL = time.Time{}
}

// endKeepAlive is Route.Retire's for an HTTP/1.1 connection. Between
// requests, with nothing of a head in yet, the read waiting for one ends
// now and net/http closes the connection (lingering, as for any close). A
// request in flight is answered with Connection: close (serveHTTP) or, if
// its response was out already, responseDone ends the wait after it. A
// connection still waiting for its first request is served it; a tunnel is
// not touched.
func (v *vconn) endKeepAlive() {
	if v.hijacked.Load() {
		return
	}
	v.dmu.Lock()
	defer v.dmu.Unlock()
	if v.first || v.inRequest {
		return
	}
	v.idleDL = time.Now()
	if v.reading && v.headDL.IsZero() && !v.aborted {
		_ = v.tc.SetReadDeadline(aLongTimeAgo)
	}
}

// SetReadDeadline is called by net/http only to abort its background read
// (a time in the past) and to resume afterwards (zero): the deadlines
// themselves are armDeadline's.
func (v *vconn) SetReadDeadline(t time.Time) error {
	v.dmu.Lock()
	defer v.dmu.Unlock()
	if !t.IsZero() && !t.After(time.Now()) {
		v.aborted = true
		return v.tc.SetReadDeadline(t)
	}
	v.aborted = false
	if v.reading {
		return v.tc.SetReadDeadline(v.readDL)
	}
	return nil
}

// SetWriteDeadline is a no-op: Write sets its own.
func (v *vconn) SetWriteDeadline(time.Time) error { return nil }

func (v *vconn) SetDeadline(t time.Time) error { return v.SetReadDeadline(t) }

// Write gives every write WriteStallTimeout to make progress, less up to
// writeDeadlineSlack: the deadline is moved at most once per slack (a
// deadline change is a runtime timer update; keep-alive responses come
// milliseconds apart). The TLS records of one Write leave in one syscall
// (recordWriter).
func (v *vconn) Write(p []byte) (int, error) {
	// slack: a write_stall_timeout under writeDeadlineSlack expired
	// before it was moved, failing a keep-alive response sent then.
	if now := time.Now(); now.Sub(v.wdlAt) >= slack(v.rt.writeStall) {
		_ = v.tc.SetWriteDeadline(now.Add(v.rt.writeStall))
		v.wdlAt = now
	}
	if v.held {
		v.rw.start()
		n, err := v.tc.Write(p)
		if err == nil && v.rw.collected() >= maxHeld {
			err = v.rw.flush()
		}
		return n, err
	}
	if v.rw == nil || !v.rw.collect(len(p)) {
		return v.tc.Write(p)
	}
	n, err := v.tc.Write(p)
	if ferr := v.rw.flush(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}

// hold makes the Writes until unhold leave in as few syscalls as
// maxHeld allows (a whole static response: 1 instead of 2, net/http's
// 4 KiB buffer and then the rest). It reports whether it holds (TLS only).
func (v *vconn) hold() bool {
	if v == nil || v.rw == nil { // nil: HTTP/2
		return false
	}
	v.held = true
	return true
}

// unhold writes what hold collected.
func (v *vconn) unhold() error {
	v.held = false
	return v.rw.flush()
}

func (v *vconn) LocalAddr() net.Addr  { return v.cs.local }
func (v *vconn) RemoteAddr() net.Addr { return v.cs.client }

// NetConn returns the conn under the validation: the *tls.Conn (or the raw
// socket for cleartext), whose NetConn chain ends at the *net.TCPConn.
func (v *vconn) NetConn() net.Conn { return v.tc }

// Close is net/http's: it closes the conn, lingering unless the client is
// gone or the route is shutting down, and ends ServeConn. A hijacked conn is
// closed by its handler instead.
func (v *vconn) Close() error {
	v.closeOnce.Do(v.closeConn)
	v.cs.finish()
	return nil
}

func (v *vconn) closeConn() {
	if v.rw != nil {
		_ = v.rw.flush() // a held response cut by a panic: what there is
	}
	if !v.hard.Load() && !v.eof.Load() {
		dl := time.Now().Add(lingerTimeout)
		_ = v.tc.SetWriteDeadline(dl)
		if t, ok := v.tc.(*tls.Conn); ok {
			_ = t.CloseWrite() // close_notify
		}
		_ = v.raw.CloseWrite() // FIN
		_ = v.raw.SetReadDeadline(dl)
		_, _ = io.CopyN(io.Discard, v.raw, lingerMax)
	}
	_ = v.raw.Close()
	_ = v.tc.Close()
}

// closeHard closes the sockets at once (drain, route close). net/http's
// goroutine then fails and calls Close; a tunnel ends through its ctx.
func (v *vconn) closeHard() {
	if v.hijacked.Load() {
		return
	}
	v.hard.Store(true)
	v.cs.setReason(l4.ReasonDrain, nil)
	_ = v.raw.Close()
}

// takeBuffered returns the bytes read from the client but not yet handed to
// net/http, after a hijack.
func (v *vconn) takeBuffered() []byte {
	b := append([]byte(nil), v.ready...)
	b = append(b, v.buf[v.r:v.w]...)
	v.ready, v.r, v.w = nil, 0, 0
	// Nothing reads through v after a hijack: the buffer is not kept for
	// the tunnel's life, but is the next conn's.
	if cap(v.buf) == initialBuf {
		buf := v.buf[:initialBuf]
		vbufs.Put(&buf)
	}
	v.buf = nil
	return b
}

// vbufs are the vconns' first buffers, back from hijacked conns (a wss://
// handshake allocated 4 KiB less).
var vbufs = sync.Pool{New: func() any { b := make([]byte, initialBuf); return &b }}

// connState is one connection's shared state: what handlers need to know
// and the Result being built.
type connState struct {
	ctx           context.Context // ServeConn's ctx, also cancelled by Route.Close
	client, local net.Addr
	ip            string // client's IP, as forwarding headers carry it
	sni           string
	tls           bool
	h2            bool   // HTTP/2 (h2.go): streams run at once, v is nil
	v             *vconn // HTTP/1.1

	end      func() // cleans up and calls Serve's done with the Result
	doneOnce sync.Once
	pending  atomic.Int32 // a tunnel's two ends: its handler's return and its relay's end

	mu  sync.Mutex
	res Result

	sw statusWriter // the current request's (serveHTTP)
}

// finish ends the connection (once): net/http closed it, or its tunnel ended.
func (cs *connState) finish() { cs.doneOnce.Do(cs.end) }

// tunnelDone is called by a tunnel's handler when it returns and by its
// relay when it ends; the second call ends the connection.
func (cs *connState) tunnelDone() {
	if cs.pending.Add(-1) == 0 {
		cs.finish()
	}
}

// setReason records why the conn ended; the first reason wins.
func (cs *connState) setReason(r l4.Reason, err error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.res.Reason == "" {
		cs.res.Reason, cs.res.Err = r, err
	}
}

// refused records a response the reader wrote itself.
func (cs *connState) refused(vi *violation) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.res.Requests++
	cs.res.Status = vi.code
	cs.res.Reason, cs.res.Err = vi.reason, vi
}

func (cs *connState) result() Result {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	r := cs.res
	if r.Reason == "" {
		r.Reason = l4.ReasonEOF
	}
	r.HTTP2 = cs.h2
	return r
}
