package balancer

import (
	"io"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sendPeek sends what of payload one non-blocking send takes, then, if that
// was all of it, parks until c is readable and reports what is there without
// consuming it: nil for data, io.EOF for a FIN, the socket error (such as
// ECONNRESET) for a reset, or the read deadline's error. sent short of
// len(payload) (EAGAIN, a partial send, a deadline already past) returns
// without waiting; werr is the send's error. Both calls run inside
// RawConn.Read, whose read readiness is reset before the send (awaitAnswer).
//
// The syscalls are raw, on a stack byte for the peek, as in
// l4/epoll_linux.go: unix.Recvfrom allocated the source address it returns
// (issue 11), and with MSG_DONTWAIT neither call blocks, so the scheduler
// need not hear of them.
func sendPeek(c *net.TCPConn, payload []byte) (sent int, werr, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, nil, err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		for sent < len(payload) {
			n, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&payload[sent])), uintptr(len(payload)-sent),
				unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
			switch {
			case errno == unix.EINTR:
				continue
			case errno == unix.EAGAIN:
				return true
			case errno != 0:
				werr = errno
				return true
			}
			if sent += int(n); sent < len(payload) {
				return true
			}
			return false // all sent: wait for the answer
		}
		for {
			n, errno := peekByte(fd)
			switch {
			case errno == unix.EINTR:
				continue
			case errno == unix.EAGAIN:
				return false
			case errno != 0:
				perr = os.NewSyscallError("recvfrom", errno)
			case n == 0:
				perr = io.EOF
			}
			return true
		}
	})
	if err != nil || werr != nil || sent < len(payload) {
		return sent, werr, err
	}
	return sent, nil, perr
}

// peekByte looks at the next byte of fd without consuming it or blocking:
// n is 1 for data, 0 for the peer's FIN; errno is EAGAIN when nothing is
// there. A stack byte and a raw syscall: no allocation, no P handoff.
func peekByte(fd uintptr) (int, unix.Errno) {
	var b [1]byte
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	return int(n), errno
}
