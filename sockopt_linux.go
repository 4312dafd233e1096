package main

import (
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"sluice/balancer"
)

// listenConfig sets the socket options of accepted connections on the
// listening socket (controlListener), which Linux copies into every accepted
// socket, so the accept path makes no extra syscalls.
func listenConfig() net.ListenConfig {
	return net.ListenConfig{
		KeepAlive: -1, // set on the listening socket below, inherited by accepted ones
		Control:   controlListener,
	}
}

func controlListener(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, o := range [...]struct{ level, opt, val int }{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(balancer.KeepAlive.Idle / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(balancer.KeepAlive.Interval / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, balancer.KeepAlive.Count},
			{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(balancer.UserTimeout / time.Millisecond)},
			// Go's accept sets it on each conn; a raw accept (serveRaw)
			// relies on the inherited one.
			{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		} {
			if err := unix.SetsockoptInt(int(fd), o.level, o.opt, o.val); err != nil {
				serr = fmt.Errorf("setsockopt %d/%d: %w", o.level, o.opt, err)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}
