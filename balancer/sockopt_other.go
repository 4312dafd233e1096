//go:build !linux

package balancer

import (
	"net"
	"syscall"
)

// controlBackendSocket is a no-op where TCP_USER_TIMEOUT does not exist;
// sluice targets Linux, this keeps the package building elsewhere.
func controlBackendSocket(network, address string, c syscall.RawConn) error { return nil }

// setBackendOptions sets keepalive on c, which leanDialer connected without
// it.
func setBackendOptions(c *net.TCPConn) error { return c.SetKeepAliveConfig(KeepAlive) }
