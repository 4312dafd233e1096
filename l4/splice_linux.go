//go:build linux

package l4

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// pipePoolCap bounds the idle pipes kept for reuse: at most 2×32 = 64
	// fds in total, inside the 256-fd reserve of RELIABILITY T18. Pipes in
	// flight are not bounded by it; past it, pipes are closed on release.
	pipePoolCap = 32
	// pipeSize, when non-zero, is asked for with F_SETPIPE_SZ. Zero keeps
	// the kernel default (64 KiB): BenchmarkRelayBulk showed no gain from
	// 256 KiB or 1 MiB pipes (≈1.5–1.8 GB/s on loopback for all three),
	// while bigger pipes pin more kernel memory per stalled direction and
	// count against fs.pipe-user-pages-soft for unprivileged users.
	pipeSize = 0
)

type pipe struct {
	r, w int
	size int
}

func (p *pipe) close() {
	_ = unix.Close(p.r)
	_ = unix.Close(p.w)
}

// pipePool is a small free list of empty pipes.
type pipePool struct {
	mu   sync.Mutex
	free []*pipe
}

var pipes pipePool

// newPipe is a variable so a test can make pipe creation fail.
var newPipe = func() (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	p := &pipe{r: fds[0], w: fds[1], size: 64 << 10}
	if pipeSize > 0 {
		_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	}
	// The real size: over fs.pipe-user-pages-soft the kernel gives 1 page.
	if n, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETPIPE_SZ, 0); err == nil && n > 0 {
		p.size = n
	}
	return p, nil
}

func (pp *pipePool) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free[n-1] = nil
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	return newPipe()
}

// put takes back an empty pipe. A pipe that may still hold data must be
// closed instead.
func (pp *pipePool) put(p *pipe) {
	pp.mu.Lock()
	if len(pp.free) < pipePoolCap {
		pp.free = append(pp.free, p)
		pp.mu.Unlock()
		return
	}
	pp.mu.Unlock()
	p.close()
}

// drain closes every pooled pipe (tests).
func (pp *pipePool) drain() {
	pp.mu.Lock()
	free := pp.free
	pp.free = nil
	pp.mu.Unlock()
	for _, p := range free {
		p.close()
	}
}

// recvBufSize is the pooled buffer of the recv/send path. A recv that fills
// it means more is queued: the direction switches to splice. A splice chunk
// below it switches back.
const recvBufSize = 16 << 10

var recvPool = sync.Pool{New: func() any {
	b := make([]byte, recvBufSize)
	return &b
}}

// recvBufsOut counts recv buffers taken and not given back (tests).
var recvBufsOut atomic.Int64

// platform is the per-direction state of the adaptive TCP↔TCP path.
type platform struct {
	rawSrc, rawDst syscall.RawConn
	rawInner       syscall.RawConn       // the socket under a wrapped or TLS src, for srcPending
	peekFn         func(fd uintptr) bool // method values, made once per direction
	fillFn         func(fd uintptr) bool
	pumpFn         func(fd uintptr) bool
	recvFn         func(fd uintptr) bool
	sendFn         func(fd uintptr) bool
	peekBuf        [1]byte
	peekErr        error

	bulk bool // splice the next chunk; else recv/send

	// recv/send path
	buf     *[]byte // held only while data is in flight
	rn, off int     // buf[off:rn] is still to be sent
	recvErr error
	sendErr error
	eof     bool

	// splice path
	p        *pipe // held only while data is in flight
	inPipe   int
	filled   int // size of the last chunk spliced into the pipe
	fillErr  error
	noPipe   bool // no pipe could be made: copy this chunk through a buffer
	pumpErr  error
	armed    bool // a write deadline is set
	advanced bool // the pump or send made progress since the deadline was armed
}

// setup notes the raw sockets: between two raw TCP sockets the direction
// uses the adaptive recv/send + splice path.
func (d *direction) setup() {
	d.path = PathBuffer
	if src, ok := d.src.(*net.TCPConn); ok {
		if rc, err := src.SyscallConn(); err == nil {
			d.rawSrc = rc
			d.peekFn = d.peek
		}
	}
	if in, ok := innermost(d.src).(*net.TCPConn); ok && d.rawSrc == nil {
		if rc, err := in.SyscallConn(); err == nil {
			d.rawInner = rc
		}
	}
	if dst, ok := d.dst.(*net.TCPConn); ok && d.rawSrc != nil {
		if rc, err := dst.SyscallConn(); err == nil {
			d.rawDst = rc
			d.fillFn = d.fill
			d.pumpFn = d.pump
			d.recvFn = d.recv
			d.sendFn = d.send
		}
	}
}

func (d *direction) adaptive() bool { return d.rawDst != nil }

func (d *direction) canWaitReadable() bool { return d.rawSrc != nil }

// waitReadable parks until src is readable, holding nothing. It reports
// whether the direction is over (timeouts are handled here).
func (d *direction) waitReadable() (stop bool) {
	for {
		err := d.rawSrc.Read(d.peekFn)
		if err == nil {
			if err = d.peekErr; err == nil {
				return false
			}
		}
		if stop := d.readErr(err); stop {
			return true
		}
	}
}

// srcPending reports whether src's socket has bytes waiting (for a wrapped
// or TLS src, the socket under it: bytes on the way are not quiet).
// RawConn.Control ignores deadlines, unlike RawConn.Read.
func (d *direction) srcPending() bool {
	rc := d.rawSrc
	if rc == nil {
		rc = d.rawInner
	}
	if rc == nil {
		return false
	}
	pending := false
	_ = rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		pending = errno == 0 && n > 0
	})
	return pending
}

// peek is a RawConn.Read callback: it reports readiness (data, EOF or an
// error) with a 1-byte MSG_PEEK, and returns false only on EAGAIN. After
// prepareRead the netpoller has forgotten any earlier readiness, so a blind
// false could park forever with data already queued.
//
// A pending socket error (ECONNRESET) is reported by the peek and consumed
// by it: the next read would see only EOF. So peek keeps it in peekErr.
func (d *direction) peek(fd uintptr) bool {
	for {
		_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&d.peekBuf[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			d.peekErr = nil
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		d.peekErr = os.NewSyscallError("recvfrom", errno)
		return true
	}
}

func (d *direction) putBuf() {
	if d.buf != nil {
		recvPool.Put(d.buf)
		d.buf = nil
		recvBufsOut.Add(-1)
	}
}

// recv is a RawConn.Read callback: it reads what src has into a buffer
// taken only now, and gives the buffer back if there was nothing (EAGAIN).
// Data, EOF or an error return true with the state in d.
//
// It must not park after a successful read without reading again: with the
// edge-triggered netpoller, data and a FIN that arrived together raise one
// edge; a read takes the data, and parking then would wait for an edge that
// never comes while the FIN sits unread (measured: the bench's hello + echo
// + close hung until its timeout). The next RawConn.Read tries again first.
func (d *direction) recv(fd uintptr) bool {
	for {
		if d.buf == nil {
			d.buf = recvPool.Get().(*[]byte)
			recvBufsOut.Add(1)
		}
		b := *d.buf
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			d.putBuf()
			return false
		case errno != 0:
			d.recvErr = os.NewSyscallError("recvfrom", errno)
			return true
		case n == 0:
			d.eof = true
			return true
		}
		d.rn, d.off = int(n), 0
		d.progress()
		return true
	}
}

// send is a RawConn.Write callback: it sends buf[off:rn] to dst. On EAGAIN
// it arms the write-stall deadline (refreshed when the send advanced) and
// parks.
func (d *direction) send(fd uintptr) bool {
	b := *d.buf
	for d.off < d.rn {
		n, _, errno := unix.Syscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[d.off])), uintptr(d.rn-d.off),
			unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
		if errno == 0 && n > 0 {
			d.off += int(n)
			d.bytes += int64(n)
			d.advanced = true
			continue
		}
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			d.armStall()
			return false
		case 0:
			d.sendErr = io.ErrNoProgress // cannot happen on a stream socket
		default:
			d.sendErr = os.NewSyscallError("sendto", errno)
		}
		return true
	}
	return true
}

// armStall sets the write-stall deadline when a write parks: at first, and
// again only after progress since it was set.
func (d *direction) armStall() {
	if !d.armed || d.advanced {
		_ = d.dst.SetWriteDeadline(time.Now().Add(d.r.opts.WriteStallTimeout))
		d.armed, d.advanced = true, false
	}
}

// disarmStall clears the write-stall deadline after a write: a fired timer
// would fail the next RawConn.Write at once.
func (d *direction) disarmStall() {
	if d.armed {
		_ = d.dst.SetWriteDeadline(time.Time{})
		d.armed = false
	}
}

// fill is a RawConn.Read callback: it splices what src has into a pipe
// taken only now, and gives the pipe back if there was nothing (EAGAIN).
func (d *direction) fill(fd uintptr) bool {
	if d.p == nil {
		p, err := pipes.get()
		if err != nil {
			// EMFILE/ENFILE: no pipe. Wait for readability without one,
			// then copy the chunk through a buffer.
			d.noPipe = true
			return d.peek(fd)
		}
		d.p = p
	}
	d.noPipe = false
	for {
		n, err := unix.Splice(int(fd), nil, d.p.w, nil, d.p.size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			// The pipe is empty (we only fill an empty pipe), so EAGAIN
			// means src has nothing: park without the pipe.
			pipes.put(d.p)
			d.p = nil
			return false
		}
		if err != nil {
			n = 0 // the pipe is still empty
		}
		d.inPipe, d.fillErr = int(n), err
		return true
	}
}

// pump is a RawConn.Write callback: it splices the pipe into dst until the
// pipe is empty. On EAGAIN it arms the write-stall deadline (refreshed when
// the pump advanced) and parks.
func (d *direction) pump(fd uintptr) bool {
	for d.inPipe > 0 {
		n, err := unix.Splice(d.p.r, nil, int(fd), nil, d.inPipe, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if n > 0 {
			d.inPipe -= int(n)
			d.bytes += int64(n)
			d.spliced += int64(n)
			d.advanced = true
			continue
		}
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			d.armStall()
			return false
		case nil:
			err = io.ErrNoProgress // cannot happen: we own the pipe's read end
		}
		d.pumpErr = err
		return true
	}
	return true
}

// releasePipe gives back or closes the pipe.
func (d *direction) releasePipe() {
	if d.p == nil {
		return
	}
	if d.inPipe > 0 {
		d.p.close() // still holds data: never pooled
	} else {
		pipes.put(d.p)
	}
	d.p, d.inPipe = nil, 0
}

// release gives back the pipe and the buffer when the direction ends.
func (d *direction) release() {
	d.releasePipe()
	d.putBuf()
}

// adaptiveLoop moves src→dst between two raw TCP sockets, HAProxy
// splice-auto style: recv/send through a pooled buffer while chunks are
// small, splice(2) through a pipe while they are bulk. Idle, it is parked in
// the netpoller holding no pipe and no buffer.
func (d *direction) adaptiveLoop() {
	defer d.release()
	for {
		var stop bool
		if d.bulk {
			stop = d.spliceChunk()
		} else {
			stop = d.recvChunk()
		}
		if stop {
			return
		}
	}
}

// recvChunk moves one chunk with recv/send; a recv that fills the buffer
// switches the direction to splice.
func (d *direction) recvChunk() (stop bool) {
	r := d.r
	d.rn, d.off, d.recvErr, d.sendErr, d.eof = 0, 0, nil, nil, false
	if err := d.rawSrc.Read(d.recvFn); err != nil {
		d.putBuf() // recv parks only without the buffer
		return d.readErr(err)
	}
	switch {
	case d.recvErr != nil:
		d.putBuf()
		d.readErr(d.recvErr)
		return true
	case d.sendErr != nil:
		d.putBuf()
		d.writeErr(d.sendErr)
		return true
	case d.eof:
		d.putBuf()
		d.gotEOF()
		return true
	}
	if d.off < d.rn {
		r.writing.Add(1)
		d.advanced = false
		err := d.rawDst.Write(d.sendFn)
		r.writing.Add(-1)
		d.disarmStall()
		if err == nil {
			err = d.sendErr
		}
		if err != nil {
			d.putBuf()
			d.writeErr(err)
			return true
		}
		d.progress()
	}
	if d.rn == recvBufSize {
		// More is queued: splice the following chunks.
		d.bulk, d.path = true, PathSplice
		d.putBuf()
	}
	// Keep the buffer: recv tries src again before parking, and parks
	// without the buffer if src has nothing.
	return false
}

// spliceChunk moves one chunk with splice(2); a chunk below recvBufSize
// switches the direction back to recv/send.
func (d *direction) spliceChunk() (stop bool) {
	r := d.r
	d.fillErr, d.noPipe = nil, false
	if err := d.rawSrc.Read(d.fillFn); err != nil {
		d.releasePipe() // empty: fill returned false only without data
		return d.readErr(err)
	}
	if d.noPipe {
		if d.peekErr != nil {
			d.readErr(d.peekErr)
			return true
		}
		d.fallbacks++
		return d.fallbackChunk()
	}
	if d.fillErr != nil {
		d.releasePipe()
		d.readErr(d.fillErr)
		return true
	}
	if d.inPipe == 0 {
		d.releasePipe()
		d.gotEOF()
		return true
	}
	d.filled = d.inPipe
	d.progress()

	r.writing.Add(1)
	d.pumpErr, d.advanced = nil, false
	err := d.rawDst.Write(d.pumpFn)
	r.writing.Add(-1)
	d.disarmStall()
	if err == nil {
		err = d.pumpErr
	}
	if err != nil {
		d.releasePipe() // closes the pipe if it still holds data
		d.writeErr(err)
		return true
	}
	d.progress()
	if d.filled < recvBufSize {
		// Small again: back to recv/send. The pipe is empty.
		d.bulk = false
		d.releasePipe()
	}
	// Else keep the pipe: fill tries src again before parking, and parks
	// without the pipe if src has nothing.
	return false
}

// fallbackChunk copies one chunk through a pooled buffer when no pipe could
// be made. src is readable.
func (d *direction) fallbackChunk() (stop bool) {
	bp := bufPool.Get().(*[]byte)
	_, stop = d.copyChunk(*bp)
	bufPool.Put(bp)
	if !stop {
		// write left a deadline that would fail the next RawConn.Write.
		_ = d.dst.SetWriteDeadline(time.Time{})
	}
	return stop
}
