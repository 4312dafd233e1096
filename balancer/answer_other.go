//go:build !linux

package balancer

import "net"

// peekByte does not wait where MSG_PEEK through the netpoller is not wired
// up; sluice targets Linux, this keeps the package building elsewhere.
func peekByte(c *net.TCPConn) error { return nil }
