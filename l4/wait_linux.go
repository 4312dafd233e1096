//go:build linux

package l4

import (
	"context"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// optionsDelay is how long a StartSockets relay lives before its backend's
// deferred options are set (balancer's optionsDelay for a conn's).
var optionsDelay = time.Second

// fdWait is one WaitFD: the shard signals ch when the descriptor is ready,
// with the epoll events in events (under the shard's mu).
type fdWait struct {
	ch     chan struct{}
	events uint32
}

var waitPool = sync.Pool{New: func() any { return &fdWait{ch: make(chan struct{}, 1)} }}

// waitRegs are the descriptors a WaitFD woken by its event left in a
// shard's epoll set, disarmed (EPOLLONESHOT fired), by descriptor: the next
// WaitFD on it or the relay that takes it re-arms that registration with
// EPOLL_CTL_MOD, where a DEL and an ADD would make two epoll_ctl (issue 11:
// one syscall less per l4 connection, whose backend's answer is waited
// for). An entry whose descriptor was closed since (the registration went
// with it) is stale: MOD fails with ENOENT and the caller adds.
var (
	waitRegsMu sync.Mutex
	waitRegs   = map[int]*shard{}
)

// waitReg returns the shard fd is registered in by a WaitFD (nil if none);
// with take, it forgets it.
func waitReg(fd int, take bool) *shard {
	waitRegsMu.Lock()
	defer waitRegsMu.Unlock()
	s := waitRegs[fd]
	if take && s != nil {
		delete(waitRegs, fd)
	}
	return s
}

// ctlArm registers fd in s's epoll set with ev: MOD if a WaitFD left it
// there (mod), else ADD; each falls back to the other when the kernel says
// the registration is, or is not, there after all.
func ctlArm(s *shard, fd int, mod bool, ev *unix.EpollEvent) unix.Errno {
	op := unix.EPOLL_CTL_ADD
	if mod {
		op = unix.EPOLL_CTL_MOD
	}
	errno := epollCtl(s.epfd, op, fd, ev)
	switch {
	case errno == unix.ENOENT && mod:
		errno = epollCtl(s.epfd, unix.EPOLL_CTL_ADD, fd, ev)
	case errno == unix.EEXIST && !mod:
		errno = epollCtl(s.epfd, unix.EPOLL_CTL_MOD, fd, ev)
	}
	return errno
}

// epollCtl is epoll_ctl without the scheduler's syscall bookkeeping: it
// never blocks.
func epollCtl(epfd, op, fd int, ev *unix.EpollEvent) unix.Errno {
	_, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return errno
}

// WaitFD waits until fd, a nonblocking socket of the caller's (balancer's
// raw dial), is writable (write) or readable, hung up or in error (!write);
// or until deadline (os.ErrDeadlineExceeded; zero: none) or ctx's end
// (ctx.Err()). It returns the epoll events that ended the wait (0 if none
// did): EPOLLIN alone says bytes are there, no FIN or error with them. It parks the calling goroutine, not a thread: fd sits in a
// shard's epoll set, one-shot, for the wait only, and the shard goroutine
// wakes the caller. The caller keeps fd and must not close it during the
// wait. Readiness is what epoll reports when the wait starts or after: a
// socket ready already returns at once.
func WaitFD(ctx context.Context, fd int, write bool, deadline time.Time) (uint32, error) {
	ss, err := getShards()
	if err != nil {
		return 0, err
	}
	s := waitReg(fd, true)
	mod := s != nil
	if !mod {
		s = ss[nextShard.Add(1)%uint32(len(ss))]
	}
	w := waitPool.Get().(*fdWait)
	want := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT)
	if write {
		want = unix.EPOLLOUT | unix.EPOLLONESHOT
	}

	s.mu.Lock()
	var slot int32
	if n := len(s.waitsFree); n > 0 {
		slot = s.waitsFree[n-1]
		s.waitsFree = s.waitsFree[:n-1]
		s.waits[slot] = w
	} else {
		slot = int32(len(s.waits))
		s.waits = append(s.waits, w)
		s.waitGens = append(s.waitGens, 0)
	}
	ev := unix.EpollEvent{Events: want, Fd: slot, Pad: ^s.waitGens[slot]}
	if errno := ctlArm(s, fd, mod, &ev); errno != 0 {
		s.freeWait(slot)
		s.mu.Unlock()
		waitPool.Put(w)
		return 0, os.NewSyscallError("epoll_ctl", errno)
	}
	s.live++
	s.now = monoNow()
	s.run()
	s.mu.Unlock()

	var events uint32
	var timer <-chan time.Time
	var t *time.Timer
	if !deadline.IsZero() {
		t = time.NewTimer(time.Until(deadline))
		timer = t.C
	}
	select {
	case <-w.ch:
	case <-timer:
		err = os.ErrDeadlineExceeded
	case <-ctx.Done():
		err = ctx.Err()
	}
	if t != nil {
		t.Stop()
	}

	s.mu.Lock()
	events = w.events
	w.events = 0
	if events != 0 {
		// Its event disarmed it: it stays, for the next WaitFD or the
		// relay to re-arm (waitRegs).
		waitRegsMu.Lock()
		waitRegs[fd] = s
		waitRegsMu.Unlock()
	} else {
		_ = epollCtl(s.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	}
	s.freeWait(slot) // no event reaches w from here on
	s.live--
	if s.live == 0 {
		s.kick()
	}
	s.mu.Unlock()
	select {
	case <-w.ch: // ready after all (it raced the timer or ctx)
		if err == os.ErrDeadlineExceeded {
			err = nil
		}
	default:
	}
	waitPool.Put(w)
	if err != nil {
		events = 0
	}
	return events, err
}

// freeWait frees a waiter's slot (mu held): its generation changes, so an
// event of it still queued finds nothing.
func (s *shard) freeWait(slot int32) {
	s.waits[slot] = nil
	s.waitGens[slot] = (s.waitGens[slot] + 1) & (1<<30 - 1)
	s.waitsFree = append(s.waitsFree, slot)
}

// wake signals the waiter of an event whose Pad is negative (mu held).
func (s *shard) wake(ev *unix.EpollEvent) {
	i := int(ev.Fd)
	if i < 0 || i >= len(s.waits) || s.waits[i] == nil || s.waitGens[i] != ^ev.Pad {
		return
	}
	s.waits[i].events |= ev.Events
	select {
	case s.waits[i].ch <- struct{}{}:
	default:
	}
}

// FDWaiter returns WaitFD where it works (Linux), for balancer's raw dial
// (DialRequest.Wait); nil elsewhere.
func FDWaiter() func(ctx context.Context, fd int, write bool, deadline time.Time) (uint32, error) {
	return WaitFD
}
