//go:build linux

package l4

import (
	"io"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// nbOutPool holds the queues of bytes a socket did not take.
var nbOutPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// Read reads what the socket has: ErrWouldBlock if nothing, io.EOF at its
// end.
func (n *NBIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		k, errno := recvNB(n.fd, p, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			return 0, ErrWouldBlock
		case errno != 0:
			return 0, os.NewSyscallError("recvfrom", errno)
		case k == 0:
			return 0, io.EOF
		}
		return int(k), nil
	}
}

// Write takes all of p: it sends what the socket takes now and queues the
// rest behind what is queued already. Only a failed socket is an error.
func (n *NBIO) Write(p []byte) (int, error) {
	if n.pending() > 0 {
		*n.out = append(*n.out, p...)
		return len(p), nil
	}
	k, err := n.send(p)
	if err != nil {
		return k, err
	}
	if k < len(p) {
		if n.out == nil {
			n.out = nbOutPool.Get().(*[]byte)
		}
		*n.out = append((*n.out)[:0], p[k:]...)
		n.off = 0
	}
	return len(p), nil
}

// flushOut sends what is queued; it stops without an error when the socket
// is full (pending() > 0 then).
func (n *NBIO) flushOut() error {
	for n.pending() > 0 {
		k, err := n.send((*n.out)[n.off:])
		n.off += k
		if err != nil {
			return err
		}
		if k == 0 {
			return nil // full
		}
	}
	n.releaseOut()
	return nil
}

// releaseOut drops the queue (sent, or the relay ended).
func (n *NBIO) releaseOut() {
	if n.out == nil {
		return
	}
	if cap(*n.out) <= 64<<10 {
		*n.out = (*n.out)[:0]
		nbOutPool.Put(n.out)
	}
	n.out, n.off = nil, 0
}

// send sends as much of p as the socket takes now; a full socket is not an
// error.
func (n *NBIO) send(p []byte) (int, error) {
	sent := 0
	for sent < len(p) {
		k, errno := sendNB(n.fd, p[sent:])
		switch errno {
		case 0:
			if k == 0 {
				return sent, os.NewSyscallError("sendto", syscall.EIO) // cannot happen on a stream socket
			}
			sent += int(k)
			n.sent += int64(k)
		case unix.EINTR:
		case unix.EAGAIN:
			return sent, nil
		default:
			return sent, os.NewSyscallError("sendto", errno)
		}
	}
	return sent, nil
}

// recvNB and sendNB are the epoll engine's and NBIO's recvfrom(2) and
// sendto(2): nonblocking (MSG_DONTWAIT), raw (no runtime syscall
// bookkeeping for a call that cannot block), EINTR left to the caller. b
// must not be empty.
func recvNB(fd int32, b []byte, flags uintptr) (int, unix.Errno) {
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_DONTWAIT|flags, 0, 0)
	return int(n), errno
}

func sendNB(fd int32, b []byte) (int, unix.Errno) { return sendNBFlags(fd, b, 0) }

// sendNBFlags is sendNB with more flags (MSG_MORE).
func sendNBFlags(fd int32, b []byte, flags uintptr) (int, unix.Errno) {
	n, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL|flags, 0, 0)
	return int(n), errno
}

// The relay's other calls on its descriptors, raw as recvNB and sendNB are:
// none of them blocks (no SO_LINGER but the zero one, which resets at
// once), so the scheduler need not hear of them: no P handoff, and no wake
// of a sleeping sysmon, whose 20 µs ticks that wake starts again (issue 11).

// closeFD closes a descriptor of the relay's own.
func closeFD(fd int) { unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

// shutdownWrite sends fd's FIN (shutdown SHUT_WR).
func shutdownWrite(fd int32) { unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0) }

// setLingerZero makes fd's close a reset (SO_LINGER on, zero seconds).
func setLingerZero(fd int32) {
	l := unix.Linger{Onoff: 1}
	unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
}
