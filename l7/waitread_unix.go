//go:build unix

package l7

import "net"

// waitReadable returns when c is readable (or at its read deadline, or
// closed) without reading: the netpoller's wait alone. Readiness that came
// before the call is not seen (RawRead clears it first): the caller bounds
// the wait with a deadline.
func waitReadable(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	waited := false
	return rc.Read(func(uintptr) bool {
		if waited {
			return true
		}
		waited = true
		return false
	})
}
