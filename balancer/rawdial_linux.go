//go:build linux

package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The raw dial (issue 11): a relay's backend socket connected with
// syscalls of sluice's own, never made one of Go's netFDs. Go's dial costs
// an L4 connection getsockname, getpeername, getsockopt(SO_ERROR), an
// epoll_ctl ADD and DEL of the runtime's poller, a pollDesc, a context
// timer and an AfterFunc per attempt, and it parks the goroutine once even
// when loopback completed the handshake inside connect(2). Here:
//
//   - socket, TCP_NODELAY (Go's default) and connect, nonblocking;
//   - the payload (PROXY header and hello) is sent at once: a send that
//     succeeds proves the connect done (loopback, a LAN), and one that fails
//     with EAGAIN means it is still in progress; only then does the attempt
//     wait for the socket to be writable (DialRequest.Wait) and read
//     SO_ERROR, as Go's dial does;
//   - with AwaitAnswer, the wait for the backend's first byte is the same
//     Wait on readability, then a peek (awaitAnswer's rules).
//
// The syscalls are raw (no P handoff): none of them blocks on a
// nonblocking socket. Every outcome is the one Go's dial and awaitAnswer
// give: the same errors (net.OpError around os.SyscallError, so
// ClassifyLocal and errors.Is see the errno), the same timeouts, the same
// slow backend kept.

// rawTarget reports whether req may be dialled raw to b, and where: only
// with a Wait and an IP-literal address without a zone (a host name goes
// through Go's resolver and dial).
func rawTarget(req *DialRequest, b *Backend) (netip.AddrPort, bool) {
	if req.Wait == nil {
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(b.addr)
	if err != nil || ap.Addr().Zone() != "" || ap.Port() == 0 {
		return netip.AddrPort{}, false
	}
	return ap, true
}

// rawAttempt is one raw connect attempt to b at ap: it returns the
// connected descriptor with payload written (and, with req.AwaitAnswer,
// the backend's answer waited for), or an error and no descriptor.
func (p *Pool) rawAttempt(ctx context.Context, b *Backend, ap netip.AddrPort, req *DialRequest, payload []byte, deadline time.Time) (int, error) {
	b.dials.Add(1)
	a := ap.Addr().Unmap()
	var sa4 unix.RawSockaddrInet4
	var sa6 unix.RawSockaddrInet6
	family, sa, salen := unix.AF_INET6, unsafe.Pointer(&sa6), uintptr(unix.SizeofSockaddrInet6)
	if a.Is4() {
		family, sa, salen = unix.AF_INET, unsafe.Pointer(&sa4), uintptr(unix.SizeofSockaddrInet4)
		sa4.Family, sa4.Addr = unix.AF_INET, a.As4()
		putPort(&sa4.Port, ap.Port())
	} else {
		sa6.Family, sa6.Addr = unix.AF_INET6, a.As16()
		putPort(&sa6.Port, ap.Port())
	}
	fail := func(op string, err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: wrapSyscall(op, err)}
	}

	r, _, errno := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if errno != 0 {
		return -1, fail("socket", errno)
	}
	fd := int(r)
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	if errno := setsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); errno != 0 {
		return -1, fail("setsockopt", errno)
	}
	if p.connectTimeout > UserTimeout {
		// As leanDialerUT: TCP_USER_TIMEOUT ends the SYN retries.
		if errno := setsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(UserTimeout.Milliseconds())); errno != 0 {
			return -1, fail("setsockopt", errno)
		}
	}
	for {
		_, _, errno = unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(sa), salen)
		if errno != unix.EINTR {
			break
		}
	}
	connected := errno == 0
	if errno != 0 && errno != unix.EINPROGRESS && errno != unix.EALREADY {
		return -1, fail("connect", errno)
	}

	// The payload, in one send when the socket takes it (rule 4: the
	// backend never sees a header alone); a send that fails with EAGAIN
	// before the connect is known done waits for it.
	sent := 0
	for sent < len(payload) || !connected {
		if sent < len(payload) {
			n, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&payload[sent])), uintptr(len(payload)-sent),
				unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
			switch {
			case errno == 0:
				sent += int(n)
				connected = true
				continue
			case errno == unix.EINTR:
				continue
			case errno != unix.EAGAIN:
				if !connected {
					// The connect failed (refused, unreachable): sendto
					// reports the socket's error.
					return -1, fail("connect", errno)
				}
				return -1, fmt.Errorf("write proxy header and prefix: %w", fail("write", errno))
			}
		}
		if _, err := req.Wait(ctx, fd, true, deadline); err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fail("connect", err)
		}
		if !connected {
			soerr, errno := getsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			if errno != 0 {
				return -1, fail("getsockopt", errno)
			}
			switch e := unix.Errno(soerr); e {
			case 0, unix.EISCONN:
				connected = true
			case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			default:
				return -1, fail("connect", e)
			}
		}
	}
	if req.AwaitAnswer {
		if err := awaitAnswerFD(ctx, fd, req.Wait, time.Now().Add(p.connectTimeout)); err != nil {
			return -1, err
		}
	}
	ok = true
	rawDials.Add(1)
	return fd, nil
}

// rawDials counts the connections the raw dial made: RawDials.
var rawDials atomic.Int64

// RawDials returns how many backend connections the raw dial has made
// since the process started.
func RawDials() int64 { return rawDials.Load() }

// awaitAnswerFD is awaitAnswer on a raw descriptor whose payload is sent:
// nil when the backend's first byte is there (peeked, not consumed) or
// the deadline passed first (a slow backend is kept); an error wrapping
// ErrNoAnswer when it closed or reset first; ctx's error when ctx ended.
func awaitAnswerFD(ctx context.Context, fd int, wait Waiter, deadline time.Time) error {
	for {
		events, err := wait(ctx, fd, false, deadline)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil
		case err != nil:
			return err
		case events == unix.EPOLLIN:
			// Bytes are there, with no FIN or error: the answer, without
			// the peek (a recvfrom per connection).
			return nil
		}
		n, errno := peekByte(uintptr(fd))
		switch {
		case errno == unix.EAGAIN || errno == unix.EINTR:
			continue // woken for nothing: wait on
		case errno != 0:
			return fmt.Errorf("%w: %w", ErrNoAnswer, os.NewSyscallError("recvfrom", errno))
		case n == 0:
			return fmt.Errorf("%w: EOF", ErrNoAnswer)
		}
		return nil
	}
}

// SetBackendOptions sets keepalive and TCP_USER_TIMEOUT on a raw dial's
// descriptor (l4.Options.BackendOptions: the relay owning it calls it once
// the connection has lived about a second).
func SetBackendOptions(fd int) error {
	for _, o := range backendOptions {
		if errno := setsockoptInt(fd, o.level, o.opt, o.val); errno != 0 {
			return os.NewSyscallError("setsockopt", errno)
		}
	}
	return nil
}

func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

func setsockoptInt(fd, level, opt, val int) unix.Errno {
	v := int32(val)
	_, _, errno := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), 4, 0)
	return errno
}

func getsockoptInt(fd, level, opt int) (int, unix.Errno) {
	var v int32
	l := uint32(4)
	_, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	return int(v), errno
}

// wrapSyscall names a failed syscall as Go's dial does: an errno in an
// os.SyscallError; a deadline's error as it is (a net.Error whose
// Timeout() is true inside the OpError).
func wrapSyscall(op string, err error) error {
	if errno, ok := err.(unix.Errno); ok {
		return os.NewSyscallError(op, errno)
	}
	return err
}
