package balancer

import (
	"net"
	"os"
	"syscall"
	"time"

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

// backendOptions are what a fired optsBatch sets on a relay's backend socket
// (RELIABILITY T17): the keepalive timings before SO_KEEPALIVE, so that the
// keepalive timer is armed once, with the right idle time.
var backendOptions = [...]struct{ level, opt, val int }{
	{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(KeepAlive.Idle / time.Second)},
	{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(KeepAlive.Interval / time.Second)},
	{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, KeepAlive.Count},
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
	{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(UserTimeout / time.Millisecond)},
}

// setBackendOptions sets keepalive and TCP_USER_TIMEOUT on c, which leanDialer
// connected without them.
func setBackendOptions(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, o := range backendOptions {
			if err := unix.SetsockoptInt(int(fd), o.level, o.opt, o.val); err != nil {
				serr = os.NewSyscallError("setsockopt", err)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}
