//go:build !linux

package balancer

import "syscall"

// controlBackendSocket is a no-op where TCP_USER_TIMEOUT does not exist;
// sluice targets Linux, this keeps the package building elsewhere.
func controlBackendSocket(network, address string, c syscall.RawConn) error { return nil }
