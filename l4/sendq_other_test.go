//go:build !linux

package l4

import (
	"net"
	"time"
)

// waitSendQueueEmpty cannot ask the kernel here; it waits a little.
func waitSendQueueEmpty(*net.TCPConn, time.Duration) { time.Sleep(200 * time.Millisecond) }
