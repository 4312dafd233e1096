package balancer

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// controlBackendSocket sets TCP_USER_TIMEOUT on a backend socket before
// connect (RELIABILITY T17): data unacknowledged for 30 s ends the connection
// instead of waiting out the retransmission limit (~15 min).
func controlBackendSocket(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(UserTimeout.Milliseconds()))
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt TCP_USER_TIMEOUT", serr)
	}
	return nil
}
