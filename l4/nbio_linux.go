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
		k, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(n.fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
			unix.MSG_DONTWAIT, 0, 0)
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
		k, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(n.fd), uintptr(unsafe.Pointer(&p[sent])), uintptr(len(p)-sent),
			unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
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
