//go:build !unix

package l7

import "net"

// waitReadable does not wait here: the read that follows does.
func waitReadable(*net.TCPConn) error { return nil }
