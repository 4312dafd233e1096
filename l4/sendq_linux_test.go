package l4

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// waitSendQueueEmpty waits (bounded) until c's kernel has no unsent or
// unacknowledged bytes (SIOCOUTQ).
func waitSendQueueEmpty(c *net.TCPConn, limit time.Duration) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		q := -1
		raw.Control(func(fd uintptr) { q, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
		if q == 0 {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}
