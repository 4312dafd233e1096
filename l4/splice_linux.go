//go:build linux

package l4

import (
	"io"
	"net"
	"os"
	"sync"
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

// platform is the per-direction splice state.
type platform struct {
	rawSrc, rawDst syscall.RawConn
	peekFn         func(fd uintptr) bool // method values, made once per direction
	fillFn         func(fd uintptr) bool
	pumpFn         func(fd uintptr) bool
	peekBuf        [1]byte
	peekErr        error

	p        *pipe // held only while data is in flight
	inPipe   int
	fillErr  error
	noPipe   bool // no pipe could be made: copy this chunk through a buffer
	pumpErr  error
	armed    bool // a write deadline is set
	advanced bool // the pump made progress since the deadline was armed
}

// setup picks the copy path: splice when both ends are raw TCP sockets.
func (d *direction) setup() {
	d.path = PathBuffer
	if src, ok := d.src.(*net.TCPConn); ok {
		if rc, err := src.SyscallConn(); err == nil {
			d.rawSrc = rc
			d.peekFn = d.peek
		}
	}
	if dst, ok := d.dst.(*net.TCPConn); ok && d.rawSrc != nil {
		if rc, err := dst.SyscallConn(); err == nil {
			d.rawDst = rc
			d.fillFn = d.fill
			d.pumpFn = d.pump
			d.path = PathSplice
		}
	}
}

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

// srcPending reports whether a raw socket src has bytes waiting. RawConn.Control ignores deadlines, unlike RawConn.Read.
func (d *direction) srcPending() bool {
	if d.rawSrc == nil {
		return false
	}
	pending := false
	_ = d.rawSrc.Control(func(fd uintptr) {
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
			d.advanced = true
			continue
		}
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if !d.armed || d.advanced {
				_ = d.dst.SetWriteDeadline(time.Now().Add(d.r.opts.WriteStallTimeout))
				d.armed, d.advanced = true, false
			}
			return false
		case nil:
			err = io.ErrNoProgress // cannot happen: we own the pipe's read end
		}
		d.pumpErr = err
		return true
	}
	return true
}

// release gives back or closes the pipe when the direction ends.
func (d *direction) release() {
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

// spliceLoop moves src→dst with splice(2). Idle, it is parked in the
// netpoller holding no pipe and no buffer.
func (d *direction) spliceLoop() {
	defer d.release()
	r := d.r
	for {
		d.fillErr, d.noPipe = nil, false
		if err := d.rawSrc.Read(d.fillFn); err != nil {
			d.release() // empty: fill returned false only without data
			if d.readErr(err) {
				return
			}
			continue
		}
		if d.noPipe {
			if d.peekErr != nil {
				d.readErr(d.peekErr)
				return
			}
			d.fallbacks++
			if d.fallbackChunk() {
				return
			}
			continue
		}
		if d.fillErr != nil {
			d.release()
			d.readErr(d.fillErr)
			return
		}
		if d.inPipe == 0 {
			d.release()
			d.gotEOF()
			return
		}
		d.progress()

		r.writing.Add(1)
		d.pumpErr, d.advanced = nil, false
		err := d.rawDst.Write(d.pumpFn)
		r.writing.Add(-1)
		if d.armed {
			// A fired timer would fail the next RawConn.Write at once.
			_ = d.dst.SetWriteDeadline(time.Time{})
			d.armed = false
		}
		if err == nil {
			err = d.pumpErr
		}
		if err != nil {
			d.release() // closes the pipe if it still holds data
			d.writeErr(err)
			return
		}
		d.progress()
		// Loop: fill tries src again before parking, and parks without
		// the pipe if src has nothing.
	}
}

// fallbackChunk copies one chunk through a pooled buffer when no pipe could
// be made. src is readable.
func (d *direction) fallbackChunk() (stop bool) {
	bp := bufPool.Get().(*[]byte)
	stop = d.copyChunk(*bp)
	bufPool.Put(bp)
	if !stop {
		// write left a deadline that would fail the next RawConn.Write.
		_ = d.dst.SetWriteDeadline(time.Time{})
	}
	return stop
}
