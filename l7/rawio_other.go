//go:build !linux

package l7

import "net"

// newSockIO: raw socket calls are Linux's here (rawio_linux.go).
func newSockIO(*net.TCPConn) sockIO { return nil }
