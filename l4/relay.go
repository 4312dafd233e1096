package l4

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for the zero values of Options (shared/RELIABILITY.md T14, T16).
const (
	DefaultIdleTimeout       = 10 * time.Minute
	DefaultHalfCloseTimeout  = 30 * time.Second
	DefaultWriteStallTimeout = 30 * time.Second
)

// Options tune one Relay. Zero values mean the defaults.
type Options struct {
	// IdleTimeout closes both sides when neither direction has moved data
	// (and no write is pending) for this long. One-way traffic keeps the
	// relay alive. If zero, 10m is used.
	IdleTimeout time.Duration
	// HalfCloseTimeout bounds the direction that is still open after the
	// other one ended with a FIN: it may be quiet at most
	// min(IdleTimeout, HalfCloseTimeout), measured from the later of the FIN
	// and its own last progress. If zero, 30s is used.
	HalfCloseTimeout time.Duration
	// WriteStallTimeout closes both sides when a write (to either side)
	// makes no progress for this long: a peer that stops reading. If zero,
	// 30s is used.
	WriteStallTimeout time.Duration
	// Engine runs the relay. If zero, EngineGoroutine.
	Engine Engine
	// Owner, if set, is who may close the backend conn besides the relay
	// (balancer.Lease: a removed backend's connections are closed). With
	// it, the epoll engine sheds Go's state of an idle relay's backend
	// socket (shedIdle): from then on the caller must not close the
	// backend's *net.TCPConn; the owner calls Kill instead.
	Owner Owner
	// ShedClient, with Owner, sheds the client socket's Go state too, for
	// a raw TCP client the caller neither uses nor closes after Start (the
	// l4 path). A terminated client's socket is never shed.
	ShedClient bool
	// BackendOptions, for StartSockets, sets the backend socket's deferred
	// options (keepalive, TCP_USER_TIMEOUT: balancer.SetBackendOptions)
	// once the relay has lived about a second (1 to 2 s), from the relay's
	// shard, which owns the descriptor. Start and a backend conn ignore
	// it: balancer sets them on a conn.
	BackendOptions func(fd int) error
}

// Owner is Options.Owner.
type Owner interface {
	// Detach reports whether the relay may drop the backend's
	// *net.TCPConn for a descriptor of its own; if so, the owner forgets
	// the conn and calls k.Kill where it would have closed it. Detach is
	// called from the relay's shard with its lock held: it must not call
	// back into the relay.
	Detach(k Killer) bool
}

// Killer ends a relay from elsewhere, as closing its backend conn would.
// An alias, so that an owner outside l4 (balancer, which does not import
// it) can name the same type.
type Killer = interface{ Kill() }

// Engine is how a relay runs.
type Engine uint8

const (
	// EngineGoroutine: two goroutines per relay, one per direction, parked
	// in Go's netpoller while idle (2 stacks of at least 2 KiB each).
	EngineGoroutine Engine = iota
	// EngineEpoll: a relay between two *net.TCPConn on Linux parks both
	// sockets in an epoll set of its own and holds no goroutine while idle
	// (epoll_linux.go). Anything else (a *tls.Conn, a wrapper, another OS)
	// falls back to EngineGoroutine.
	EngineEpoll
)

func (e Engine) String() string {
	if e == EngineEpoll {
		return "epoll"
	}
	return "goroutine"
}

// ParseEngine maps a config name ("goroutine", "epoll") to an Engine.
func ParseEngine(s string) (Engine, bool) {
	switch s {
	case "goroutine":
		return EngineGoroutine, true
	case "epoll":
		return EngineEpoll, true
	}
	return EngineGoroutine, false
}

func (o Options) withDefaults() Options {
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.HalfCloseTimeout <= 0 {
		o.HalfCloseTimeout = DefaultHalfCloseTimeout
	}
	if o.WriteStallTimeout <= 0 {
		o.WriteStallTimeout = DefaultWriteStallTimeout
	}
	return o
}

// Path is the copy path a direction used.
type Path uint8

const (
	PathNone Path = iota // the direction never ran
	// PathSplice: a raw TCP↔TCP direction that went bulk (a recv filled
	// its buffer) and moved the following chunks with splice(2) through a
	// pipe taken only while data is in flight. Stats.SplicedIn/Out say how
	// many bytes actually went through a pipe (SpliceFallbacks counts
	// chunks that could not get one).
	PathSplice
	// PathBuffer: read/write through a buffer. On a raw TCP↔TCP direction
	// that never went bulk this is recv/send through a pooled 16 KiB
	// buffer; otherwise a 2 KiB buffer of the direction's own, or a pooled
	// 32 KiB one while data streams.
	PathBuffer
)

func (p Path) String() string {
	switch p {
	case PathSplice:
		return "splice"
	case PathBuffer:
		return "buffer"
	default:
		return "none"
	}
}

// Stats describe a finished relay.
type Stats struct {
	BytesIn  int64 // client→backend bytes written to the backend
	BytesOut int64 // backend→client bytes written to the client
	PathIn   Path  // copy path of client→backend
	PathOut  Path  // copy path of backend→client
	// SplicedIn and SplicedOut are the parts of BytesIn and BytesOut that
	// went through a pipe with splice(2).
	SplicedIn  int64
	SplicedOut int64
	// SpliceFallbacks counts chunks copied through a buffer on the splice
	// path because no pipe could be made (EMFILE/ENFILE).
	SpliceFallbacks int
	Reason          Reason
	Err             error // the error behind Reason for resets and errors, else nil
}

// Relay copies client→backend and backend→client until the relay ends, then
// closes both conns and returns once every goroutine it started has exited.
//
// Between two *net.TCPConn (Linux) it copies small transfers with recv/send
// through a pooled buffer and switches a direction to splice(2) while it
// moves bulk; it holds the buffer or pipe only while data is in flight, so an
// idle relay costs its two sockets and nothing else. Otherwise it copies
// through a buffer, a pooled 32 KiB one only while data streams. A FIN from one side becomes a
// CloseWrite on the other (for a *tls.Conn: close_notify and a FIN on the
// socket under it); a reset becomes a reset (SO_LINGER 0) unless a FIN was
// already relayed to that side. Cancelling ctx closes both at once with
// ReasonDrain. Deadlines the caller left on the conns are replaced.
//
// Relay runs client→backend on the caller's goroutine. Start is the same
// relay on two fresh goroutines, for callers that have nothing left to do
// on theirs. With opts.Engine = EngineEpoll, a relay between two
// *net.TCPConn on Linux runs on no goroutine of its own instead (Relay
// waits for it).
func Relay(ctx context.Context, client, backend net.Conn, opts Options) Stats {
	if opts.Engine == EngineEpoll {
		ch := make(chan Stats, 1)
		if startEpoll(ctx, client, backend, opts, func(st Stats) { ch <- st }) {
			return <-ch
		}
	}
	var st Stats
	over := make(chan struct{})
	r := newRelay(ctx, client, backend, opts, func(s Stats) { st = s; close(over) })
	go r.run(&r.toClient)
	r.run(&r.toBackend)
	<-over
	return st
}

// Start is Relay without the wait: it starts both directions, each on a
// goroutine of its own, and returns at once. The direction that finishes
// last closes both conns and calls done with the relay's Stats (on its
// goroutine; done may block it, never the relay).
//
// With opts.Engine = EngineEpoll (two *net.TCPConn, Linux) done runs on a
// goroutine of its own after both conns are closed.
//
// This is what keeps an idle connection cheap: the goroutine that accepted
// it grew its stack peeking the ClientHello and dialling the backend, and a
// goroutine parked deep in that stack keeps all of it; two fresh goroutines
// parked in a read keep the minimum (2 KiB each).
func Start(ctx context.Context, client, backend net.Conn, opts Options, done func(Stats)) {
	if opts.Engine == EngineEpoll && startEpoll(ctx, client, backend, opts, done) {
		return
	}
	r := newRelay(ctx, client, backend, opts, done)
	go r.run(&r.toClient)
	go r.run(&r.toBackend)
}

func newRelay(ctx context.Context, client, backend net.Conn, opts Options, done func(Stats)) *relay {
	r := &relay{client: client, backend: backend, opts: opts.withDefaults(), t0: time.Now(), done: done}
	r.running.Store(2)
	r.toBackend = direction{r: r, src: client, dst: backend, srcSide: sideClient, dstSide: sideBackend,
		srcFin: &r.finClient, dstFin: &r.finBackend}
	r.toClient = direction{r: r, src: backend, dst: client, srcSide: sideBackend, dstSide: sideClient,
		srcFin: &r.finBackend, dstFin: &r.finClient}
	r.toBackend.setup()
	r.toClient.setup()

	// One absolute deadline per read from the start (rule 1): whatever the
	// caller left is replaced.
	first := r.t0.Add(r.opts.IdleTimeout)
	for _, c := range [2]net.Conn{client, backend} {
		_ = c.SetWriteDeadline(time.Time{})
		_ = c.SetReadDeadline(first)
	}

	r.stopDrain = func() bool { return true }
	if ctx.Done() != nil {
		r.drained = make(chan struct{})
		r.stopDrain = context.AfterFunc(ctx, func() {
			r.finish(ReasonDrain, nil, nil)
			close(r.drained)
		})
	}
	return r
}

// run runs one direction; the last one to finish ends the relay.
func (r *relay) run(d *direction) {
	d.run()
	if r.running.Add(-1) != 0 {
		return
	}
	if !r.stopDrain() {
		<-r.drained // the drain func started: wait for it to finish closing
	}
	closeNow(r.client)
	closeNow(r.backend)

	r.mu.Lock()
	st := Stats{
		BytesIn:         r.toBackend.bytes,
		BytesOut:        r.toClient.bytes,
		PathIn:          r.toBackend.path,
		PathOut:         r.toClient.path,
		SplicedIn:       r.toBackend.spliced,
		SplicedOut:      r.toClient.spliced,
		SpliceFallbacks: r.toBackend.fallbacks + r.toClient.fallbacks,
		Reason:          r.reason,
		Err:             r.err,
	}
	r.mu.Unlock()
	r.done(st)
}

type side uint8

const (
	sideClient side = iota
	sideBackend
)

// relay is the state the two directions share.
type relay struct {
	client, backend net.Conn
	opts            Options
	t0              time.Time // monotonic base: times below are nanoseconds since t0

	lastActivity atomic.Int64 // last chunk moved in either direction
	writing      atomic.Int32 // directions inside a write: not idle
	finAt        atomic.Int64 // when the first direction ended with a FIN; 0 if none
	eofs         atomic.Int32 // directions that ended with a FIN
	finClient    atomic.Bool  // we sent a FIN (CloseWrite) to the client
	finBackend   atomic.Bool  // we sent a FIN (CloseWrite) to the backend

	ended  atomic.Bool // first cause wins
	mu     sync.Mutex
	reason Reason
	err    error

	toBackend, toClient direction

	running   atomic.Int32 // directions still running
	stopDrain func() bool  // unregisters the drain func; false if it already started
	drained   chan struct{}
	done      func(Stats) // called once, by the last direction
}

func (r *relay) now() int64 { return int64(time.Since(r.t0)) }

func (r *relay) at(ns int64) time.Time { return r.t0.Add(time.Duration(ns)) }

// finish ends the relay with the first cause only: it records reason and
// closes both conns, resetting rst (SO_LINGER 0) first if it is not nil.
// Later calls, e.g. from the direction that hits net.ErrClosed because of
// this close, do nothing.
func (r *relay) finish(reason Reason, err error, rst net.Conn) {
	if !r.ended.CompareAndSwap(false, true) {
		return
	}
	r.mu.Lock()
	r.reason, r.err = reason, err
	r.mu.Unlock()
	if rst != nil {
		setLinger0(rst)
	}
	closeNow(r.client)
	closeNow(r.backend)
}

// direction is one half of a relay: src → dst.
type direction struct {
	r                *relay
	src, dst         net.Conn
	srcSide, dstSide side
	srcFin, dstFin   *atomic.Bool // FIN sent to src / dst by the relay

	path         Path
	bytes        int64
	spliced      int64 // bytes moved with splice(2)
	fallbacks    int
	lastProgress int64 // owned by this direction's goroutine

	platform // splice state (splice_linux.go) or nothing
}

func (d *direction) run() {
	if d.adaptive() {
		d.adaptiveLoop()
		return
	}
	d.bufferLoop()
}

// progress records that a chunk moved.
func (d *direction) progress() {
	now := d.r.now()
	d.lastProgress = now
	d.r.lastActivity.Store(now)
}

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, 32<<10)
	return &b
}}

const (
	// smallBufSize is the buffer a direction whose src cannot be waited on
	// without a buffer (a *tls.Conn reads ahead from its socket) keeps for
	// life, instead of a pooled 32 KiB one.
	smallBufSize = 2 << 10
	// streamMin: a read chain shorter than this (one full TLS record of
	// plaintext) gives the pooled big buffer back.
	streamMin = 16 << 10
)

// bufferLoop copies through a buffer. When src is a raw socket it waits for
// readability first and takes a pooled buffer only then, so an idle
// direction holds none. Other sources (a *tls.Conn, whose readiness the
// socket under it does not tell) read into a small buffer of their own and
// take a pooled 32 KiB buffer only after a read filled the small one, giving
// it back as soon as reads come back short: an idle direction holds 2 KiB.
func (d *direction) bufferLoop() {
	var bp *[]byte
	defer func() {
		if bp != nil {
			bufPool.Put(bp)
		}
	}()
	if d.canWaitReadable() {
		for {
			if stop := d.waitReadable(); stop {
				return
			}
			bp = bufPool.Get().(*[]byte)
			if _, stop := d.copyChunk(*bp); stop {
				return
			}
			bufPool.Put(bp)
			bp = nil
		}
	}
	small := make([]byte, smallBufSize)
	carry := 0 // bytes of the small read that made us take the big buffer
	for {
		buf := small
		if bp != nil {
			buf = *bp
		}
		n, stop := d.copyChunk(buf)
		if stop {
			return
		}
		switch {
		case bp == nil:
			if n == len(small) {
				bp = bufPool.Get().(*[]byte)
				carry = n
			}
		case carry+n < streamMin:
			// Short: src is likely drained; do not block holding 32 KiB.
			// (A *tls.Conn returns at most one record, 16 KiB, per Read,
			// and the first big read finishes the record the small one
			// started: hence carry.)
			bufPool.Put(bp)
			bp, carry = nil, 0
		default:
			carry = 0
		}
	}
}

// copyChunk reads once from src into buf and writes what it got to dst. It
// returns how much it read and reports whether the direction is over.
func (d *direction) copyChunk(buf []byte) (n int, stop bool) {
	n, err := d.src.Read(buf)
	if n > 0 {
		d.progress()
		if d.write(buf[:n]) {
			return n, true
		}
	}
	if err != nil {
		return n, d.readErr(err)
	}
	return n, false
}

// write writes b to dst under a write deadline of now+WriteStallTimeout,
// refreshed whenever a write made progress.
func (d *direction) write(b []byte) (stop bool) {
	r := d.r
	r.writing.Add(1)
	defer r.writing.Add(-1)
	for len(b) > 0 {
		_ = d.dst.SetWriteDeadline(time.Now().Add(r.opts.WriteStallTimeout))
		n, err := d.dst.Write(b)
		b = b[n:]
		d.bytes += int64(n)
		if n > 0 {
			d.progress()
		}
		if err != nil {
			if n > 0 && len(b) > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				continue // progress: a fresh deadline for the rest
			}
			return d.writeErr(err)
		}
	}
	return false
}

// readErr handles an error from reading src and reports whether the
// direction is over.
func (d *direction) readErr(err error) (stop bool) {
	r := d.r
	switch {
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		// io.ErrUnexpectedEOF: a *tls.Conn whose peer sent a FIN without
		// close_notify mid-record. It is a FIN all the same.
		d.gotEOF()
		return true
	case errors.Is(err, os.ErrDeadlineExceeded):
		return d.readTimedOut()
	case errors.Is(err, net.ErrClosed):
		r.finish(ReasonError, err, nil) // no-op unless the caller handed us a closed conn
		return true
	}
	reason := resetReason(d.srcSide, err)
	var rst net.Conn
	if reason != ReasonError && !d.dstFin.Load() {
		rst = d.dst
	}
	r.finish(reason, err, rst)
	return true
}

// writeErr handles an error from writing dst; the direction is over.
func (d *direction) writeErr(err error) (stop bool) {
	r := d.r
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		r.finish(ReasonWriteStall, nil, nil)
		return true
	case errors.Is(err, net.ErrClosed):
		r.finish(ReasonError, err, nil)
		return true
	}
	// dst is gone (EPIPE, ECONNRESET): a reset from dst's side, propagated
	// to src unless src already got our FIN (Envoy #45190: a reset must not
	// discard data queued behind a FIN).
	reason := resetReason(d.dstSide, err)
	var rst net.Conn
	if reason != ReasonError && !d.srcFin.Load() {
		rst = d.src
	}
	r.finish(reason, err, rst)
	return true
}

// gotEOF relays a FIN from src as a CloseWrite on dst. The other direction
// goes on under the half-close limit; when both have ended, the relay ends.
func (d *direction) gotEOF() {
	r := d.r
	d.dstFin.Store(true)
	if r.eofs.Add(1) == 2 {
		// Both sides ended with a FIN: finish's close sends dst's (for a
		// *tls.Conn, closeNow closes the socket under it: no close_notify,
		// so this engine keeps the CloseWrite when dst is not raw TCP).
		if _, raw := d.dst.(*net.TCPConn); !raw {
			closeWrite(d.dst)
		}
		r.finish(ReasonEOF, nil, nil)
		return
	}
	closeWrite(d.dst)
	now := max(r.now(), 1)
	r.finAt.CompareAndSwap(0, now)
	// The remaining direction reads d.dst. Its limit is at most this; when
	// it fires, readTimedOut re-arms from that direction's own progress.
	limit := min(r.opts.IdleTimeout, r.opts.HalfCloseTimeout)
	_ = d.dst.SetReadDeadline(r.at(now + int64(limit)))
}

// readTimedOut runs when the read deadline on src fired. While the relay
// should go on it re-arms the deadline and reports false; otherwise it ends
// the relay with the idle or half-close reason and reports true.
func (d *direction) readTimedOut() (stop bool) {
	r := d.r
	for {
		fin := r.finAt.Load()
		now := r.now()
		var deadline int64
		var reason Reason
		if fin != 0 {
			// The other direction ended with a FIN.
			limit := min(r.opts.IdleTimeout, r.opts.HalfCloseTimeout)
			deadline = max(fin, d.lastProgress) + int64(limit)
			reason = ReasonHalfCloseTimeout
		} else {
			deadline = r.lastActivity.Load() + int64(r.opts.IdleTimeout)
			reason = ReasonIdleTimeout
			if r.writing.Load() > 0 {
				// The other direction is inside a write: not idle. A
				// stuck write is WriteStallTimeout's business.
				deadline = max(deadline, now+int64(r.opts.IdleTimeout))
			}
		}
		if now >= deadline && d.srcPending() {
			// The deadline and data raced (a loaded box): not quiet.
			deadline = now + int64(min(r.opts.IdleTimeout, r.opts.HalfCloseTimeout))
		}
		if now >= deadline {
			r.finish(reason, nil, nil)
			return true
		}
		_ = d.src.SetReadDeadline(r.at(deadline))
		// gotEOF stores finAt before it shortens our deadline: if it ran
		// between our load and our SetReadDeadline, recompute, so that our
		// longer deadline does not overwrite its shorter one.
		if r.finAt.Load() == fin {
			return false
		}
	}
}

// resetReason names the side an error came from; local faults are errors.
func resetReason(s side, err error) Reason {
	for _, local := range [...]syscall.Errno{syscall.EINVAL, syscall.EBADF, syscall.EFAULT, syscall.ENOMEM, syscall.ENOSYS} {
		if errors.Is(err, local) {
			return ReasonError
		}
	}
	if s == sideClient {
		return ReasonClientReset
	}
	return ReasonBackendReset
}

// innermost unwraps conns that expose NetConn (such as *tls.Conn).
func innermost(c net.Conn) net.Conn {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return c
		}
		next := u.NetConn()
		if next == nil || next == c {
			return c
		}
		c = next
	}
}

type closeWriter interface{ CloseWrite() error }

// closeWrite sends a FIN to c's peer. For a *tls.Conn, CloseWrite sends only
// close_notify, so the innermost conn that can is also shut for writing
// (RELIABILITY T16).
func closeWrite(c net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		_ = cw.CloseWrite()
	}
	var deepest closeWriter
	for cur := c; ; {
		if cw, ok := cur.(closeWriter); ok && cur != c {
			deepest = cw
		}
		u, ok := cur.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		next := u.NetConn()
		if next == nil || next == cur {
			break
		}
		cur = next
	}
	if deepest != nil {
		_ = deepest.CloseWrite()
	}
}

// setLinger0 makes the close of c send a RST (rule 7).
func setLinger0(c net.Conn) {
	if l, ok := innermost(c).(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
}

// closeNow closes c without waiting on its peer: the innermost conn first, so
// a *tls.Conn does not block up to 5s writing close_notify to a peer that
// does not read.
func closeNow(c net.Conn) {
	if in := innermost(c); in != c {
		_ = in.Close()
	}
	_ = c.Close()
}
