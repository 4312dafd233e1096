package balancer

import (
	"io"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peekByte parks until c is readable and reports what is there without
// consuming it: nil for data, io.EOF for a FIN, the socket error (such as
// ECONNRESET) for a reset, or the read deadline's error.
//
// The recvfrom is a raw syscall on a stack byte, as in l4/epoll_linux.go:
// unix.Recvfrom allocated the source address it returns (1.7 allocations per
// connection in BenchmarkL4Connection, issue 11), and with MSG_DONTWAIT the
// call never blocks, so the scheduler need not hear of it.
func peekByte(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
				unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
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
	if err != nil {
		return err
	}
	return perr
}
