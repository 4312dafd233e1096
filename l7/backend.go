package l7

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"sluice/balancer"
)

// backendConns is the proxy's own HTTP/1.1 client for the common request:
// keep-alive pool, body absent or buffered whole (readBody). It does what
// http.Transport does for such a request on the handler's goroutine: take
// an idle conn of the chosen backend (or connect), write the request with
// one syscall, read the response head, and hand back the conn when the body
// has been read to its end. http.Transport runs a read and a write
// goroutine per conn: each request crossed four goroutine switches, six
// channel operations and a read(2) that finds nothing (the read loop's
// peek for the next response), which issue 10's http-small profile showed
// as a large part of sluice's CPU per request.
//
// What it keeps from http.Transport: conns pooled per backend (up to
// maxIdlePerBackend, closed after idleConnTimeout), the response head size
// limit, 1xx responses forwarded to the client,
// cancellation by the request's context, and the retry of a replayable
// request on a new conn when a reused one turns out closed before it
// answered. A reused conn is first checked for a FIN or stray bytes
// without blocking (a recv(2) with MSG_PEEK that finds nothing, where
// http.Transport's read loop made a read(2) that found nothing): bytes a
// backend sent unasked (a body on a HEAD response, a 408 before its idle
// timeout) must not be read as the next client's response.
type backendConns struct {
	pool *balancer.Pool

	mu     sync.Mutex
	idle   map[*balancer.Backend][]*backendConn // most recently used last
	nidle  int
	sweep  *time.Timer // closes conns idle for idleConnTimeout; nil when none idle
	closed bool
}

const (
	maxIdlePerBackend = 256 // see the Transport's MaxIdleConnsPerHost in newProxy
	idleConnTimeout   = 90 * time.Second
	// maxProxyResponseHead bounds a response head (1xx heads included), like
	// http.Transport's MaxResponseHeaderBytes default.
	maxProxyResponseHead = 10 << 20
	connBufSize          = 4 << 10 // http.Transport's default read and write buffers
)

// backendConn is one pooled connection to a backend.
type backendConn struct {
	c      *net.TCPConn
	b      *balancer.Backend
	br     *bufio.Reader
	bw     *bufio.Writer
	limit  int64 // bytes br may still read: maxProxyResponseHead while reading a head
	idleAt time.Time

	// The last bytes of a request (bw's final Flush) wait in held for the
	// first Read of the response, which writes them and then waits for the
	// answer before it reads (writeThenRead): a read(2) right after the
	// write finds nothing on loopback (the backend has not run yet) and
	// costs a syscall and a park per request.
	holdNext bool // the next Write is held (set just before the Flush)
	deadline bool // the fast path (h1fast.go) left a deadline set
	// slow, if set, is called once when a Read hits the deadline: if it
	// reports true (it moved the deadline on), the Read goes on
	// (h1fast.slow).
	slow func() bool
	held []byte // aliases bw's buffer: valid until bw is written again
	werr error  // the held write failed: the backend may still have answered
}

// Write is bw's: it writes through, except the Write holdNext marks.
func (bc *backendConn) Write(p []byte) (int, error) {
	if bc.holdNext {
		bc.holdNext = false
		bc.held = p
		return len(p), nil
	}
	return bc.c.Write(p)
}

// opError wraps a syscall error as net's Read and Write do.
func (bc *backendConn) opError(op string, errno error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: bc.c.LocalAddr(), Addr: bc.c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

// Read feeds br, within the head limit; the first Read after a held write
// sends it.
func (bc *backendConn) Read(p []byte) (int, error) {
	if bc.limit <= 0 {
		return 0, errResponseHeadTooLarge
	}
	if int64(len(p)) > bc.limit {
		p = p[:bc.limit]
	}
	var n int
	var err error
	if bc.held != nil {
		held := bc.held
		bc.held = nil
		n, err = writeThenRead(bc, held, p)
	} else {
		n, err = bc.c.Read(p)
	}
	for n == 0 && bc.slow != nil && isTimeout(err) {
		slow := bc.slow
		bc.slow = nil
		if !slow() {
			break
		}
		n, err = bc.c.Read(p)
	}
	bc.limit -= int64(n)
	return n, err
}

var (
	errResponseHeadTooLarge = errors.New("l7: backend response head too large")
	errUnaskedSwitch        = errors.New("l7: backend switched protocols on a plain request")
	aLongTimeAgo            = time.Unix(1, 0)
)

// fastPath reports whether in can go through backendConns: a body that is
// absent or in memory (readBody), so that nothing streams from the client
// while the backend answers. CONNECT (authority-form target) keeps
// Request.Write's special case on the ReverseProxy path.
func fastPath(in *http.Request) bool {
	return (in.Body == nil || in.Body == http.NoBody || in.GetBody != nil) && in.Method != http.MethodConnect
}

// roundTrip sends in to b (writeRequest) and returns the response; 1xx responses are forwarded to w on the way. The response
// body's Close puts the conn back in the pool (or closes it).
func (bcs *backendConns) roundTrip(in *http.Request, cs *connState, b *balancer.Backend, dr *balancer.DialRequest, w http.ResponseWriter) (*http.Response, error) {
	ctx := in.Context()
	replayable := isReplayable(in)
	for retried := false; ; retried = true {
		bc, reused, err := bcs.get(ctx, b, dr)
		if err != nil {
			return nil, err
		}
		resp, err := bcs.exchange(ctx, bc, in, cs, w)
		if err == nil {
			return resp, nil
		}
		if reused && !retried && replayable && ctx.Err() == nil && errors.Is(err, errStaleConn) {
			// The backend had closed it (or restarted): its other idle
			// conns are likely gone too.
			bcs.dropIdle(b)
			continue
		}
		return nil, err
	}
}

// headError is err, the failed read of a response head, marked as
// errStaleConn when it is the first head and nothing of it came: the write
// failed, or the conn was closed or reset (a reused conn the backend had
// closed; the request may go again on a new one).
func (bc *backendConn) headError(err error, first bool) error {
	if !first || bc.limit != maxProxyResponseHead || bc.br.Buffered() != 0 {
		return err
	}
	switch {
	case bc.werr != nil:
		return fmt.Errorf("%w: %w", errStaleConn, bc.werr)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("%w: %w", errStaleConn, err)
	}
	return err
}

// errStaleConn marks a failure on a conn before any byte of a response.
var errStaleConn = errors.New("l7: backend closed the connection before answering")

// exchange writes the request on bc and reads the response head.
func (bcs *backendConns) exchange(ctx context.Context, bc *backendConn, in *http.Request, cs *connState, w http.ResponseWriter) (*http.Response, error) {
	bc.slow = nil
	if bc.deadline {
		bc.deadline = false
		_ = bc.c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = bc.c.SetDeadline(aLongTimeAgo) })
	fail := func(err error) (*http.Response, error) {
		stop()
		_ = bc.c.Close()
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		return nil, err
	}
	bc.werr = nil
	werr := writeRequest(bc.bw, in, cs)
	if werr == nil {
		bc.holdNext = true // sent by the response's first Read
		werr = bc.bw.Flush()
		bc.holdNext = false
	}
	if werr != nil {
		bc.held = nil
		bc.bw.Reset(bc)
		// The backend may have answered (and closed) before reading it all.
		if _, perr := bc.br.Peek(1); perr != nil {
			return fail(fmt.Errorf("%w: %w", errStaleConn, werr))
		}
	}
	var resp *http.Response
	for first := true; ; first = false {
		bc.limit = maxProxyResponseHead
		var err error
		resp, err = http.ReadResponse(bc.br, in)
		if werr == nil {
			werr = bc.werr // the held write's
		}
		if err != nil {
			return fail(bc.headError(err, first))
		}
		code := resp.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			break
		}
		// An interim response goes to the client as it is (ReverseProxy's
		// Got1xxResponse).
		h := w.Header()
		for k, vv := range resp.Header {
			h[k] = append(h[k], vv...)
		}
		w.WriteHeader(code)
		clear(h)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return fail(errUnaskedSwitch)
	}
	bc.limit = 1<<63 - 1
	reuse := !resp.Close && werr == nil
	resp.Body = &backendBody{rc: resp.Body, bc: bc, bcs: bcs, stop: stop, reuse: reuse}
	return resp, nil
}

// backendBody is a response body read from a pooled conn: at its end the
// conn goes back to the pool; closed before its end, the conn is closed
// (http.Transport's bodyEOFSignal does the same: no draining).
type backendBody struct {
	rc    io.ReadCloser
	bc    *backendConn
	bcs   *backendConns
	stop  func() bool
	reuse bool
	eof   bool
	done  bool
}

func (b *backendBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *backendBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	// stop is false once the request's context was done: the conn's
	// deadline is then in the past.
	if b.stop() && b.eof && b.reuse {
		_ = b.rc.Close() // at EOF: nothing left to read
		b.bcs.put(b.bc)
		return nil
	}
	_ = b.bc.c.Close()
	return nil
}

// get returns an idle conn to b (reused) or a new one.
func (bcs *backendConns) get(ctx context.Context, b *balancer.Backend, dr *balancer.DialRequest) (bc *backendConn, reused bool, err error) {
	now := time.Now()
	for {
		bcs.mu.Lock()
		s := bcs.idle[b]
		if len(s) == 0 {
			bcs.mu.Unlock()
			break
		}
		bc = s[len(s)-1]
		s[len(s)-1] = nil
		bcs.idle[b] = s[:len(s)-1]
		bcs.nidle--
		bcs.mu.Unlock()
		if now.Sub(bc.idleAt) >= idleConnTimeout || bc.br.Buffered() > 0 || !peekIdle(bc.c) {
			_ = bc.c.Close()
			continue
		}
		return bc, true, nil
	}
	c, err := bcs.pool.Connect(ctx, b, *dr)
	if err != nil {
		return nil, false, err
	}
	bc = &backendConn{c: c, b: b}
	bc.br = bufio.NewReaderSize(bc, connBufSize)
	bc.bw = bufio.NewWriterSize(bc, connBufSize)
	return bc, false, nil
}

// put returns a conn whose response was read to its end to the pool.
func (bcs *backendConns) put(bc *backendConn) {
	bc.idleAt = time.Now()
	bcs.mu.Lock()
	if bcs.closed || len(bcs.idle[bc.b]) >= maxIdlePerBackend {
		bcs.mu.Unlock()
		_ = bc.c.Close()
		return
	}
	if bcs.idle == nil {
		bcs.idle = map[*balancer.Backend][]*backendConn{}
	}
	bcs.idle[bc.b] = append(bcs.idle[bc.b], bc)
	bcs.nidle++
	if bcs.sweep == nil {
		bcs.sweep = time.AfterFunc(idleConnTimeout, bcs.sweepIdle)
	}
	bcs.mu.Unlock()
}

// sweepIdle closes the conns idle for idleConnTimeout and runs again while
// any conn is idle.
func (bcs *backendConns) sweepIdle() {
	var old []*backendConn
	now := time.Now()
	bcs.mu.Lock()
	for b, s := range bcs.idle {
		i := 0
		for i < len(s) && now.Sub(s[i].idleAt) >= idleConnTimeout {
			i++
		}
		old = append(old, s[:i]...)
		bcs.idle[b] = append(s[:0], s[i:]...)
		bcs.nidle -= i
		if len(bcs.idle[b]) == 0 {
			delete(bcs.idle, b)
		}
	}
	bcs.sweep = nil
	if bcs.nidle > 0 && !bcs.closed {
		bcs.sweep = time.AfterFunc(idleConnTimeout/2, bcs.sweepIdle)
	}
	bcs.mu.Unlock()
	for _, bc := range old {
		_ = bc.c.Close()
	}
}

// dropIdle closes b's idle conns.
func (bcs *backendConns) dropIdle(b *balancer.Backend) {
	bcs.mu.Lock()
	s := bcs.idle[b]
	delete(bcs.idle, b)
	bcs.nidle -= len(s)
	bcs.mu.Unlock()
	for _, bc := range s {
		_ = bc.c.Close()
	}
}

// close closes every idle conn; conns in use are closed when their
// response ends.
func (bcs *backendConns) close() {
	bcs.mu.Lock()
	bcs.closed = true
	if bcs.sweep != nil {
		bcs.sweep.Stop()
		bcs.sweep = nil
	}
	idle := bcs.idle
	bcs.idle, bcs.nidle = nil, 0
	bcs.mu.Unlock()
	for _, s := range idle {
		for _, bc := range s {
			_ = bc.c.Close()
		}
	}
}

// isReplayable reports whether r may be sent again after a conn failed
// (net/http's Request.isReplayable): an idempotent method, or an
// Idempotency-Key, and a body that can be had again.
func isReplayable(r *http.Request) bool {
	if r.Body != nil && r.Body != http.NoBody && r.GetBody == nil {
		return false
	}
	switch r.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	_, a := r.Header["Idempotency-Key"]
	_, b := r.Header["X-Idempotency-Key"]
	return a || b
}
