package balancer

import (
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// peekByte parks until c is readable and reports what is there without
// consuming it: nil for data, io.EOF for a FIN, the socket error (such as
// ECONNRESET) for a reset, or the read deadline's error.
func peekByte(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			n, _, errno := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case errno == unix.EINTR:
				continue
			case errno == unix.EAGAIN:
				return false
			case errno != nil:
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
