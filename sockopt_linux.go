package main

import (
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpUserTimeout ends an accepted connection whose sent data stays
// unacknowledged this long, instead of waiting out the retransmission limit
// (~15 min) (RELIABILITY T17).
const tcpUserTimeout = 30 * time.Second

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
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(keepAliveIdle / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(keepAliveInterval / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
			{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(tcpUserTimeout / time.Millisecond)},
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
