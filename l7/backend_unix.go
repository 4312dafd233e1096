//go:build unix

package l7

import (
	"net"

	"golang.org/x/sys/unix"
)

// peekIdle reports whether an idle conn is still open and has nothing to
// read, without blocking: a FIN, a reset or stray bytes make it unusable.
func peekIdle(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			_, _, errno := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if errno == unix.EINTR {
				continue
			}
			ok = errno == unix.EAGAIN
			return true
		}
	})
	return err == nil && ok
}
