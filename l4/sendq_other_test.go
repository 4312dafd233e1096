//go:build !linux

package l4

import (
	"context"
	"net"
	"testing"
	"time"
)

// waitSendQueueEmpty cannot ask the kernel here; it waits a little.
func waitSendQueueEmpty(*net.TCPConn, time.Duration) { time.Sleep(200 * time.Millisecond) }

// startFDFromConn: StartSockets is Linux-only (no fd modes here).
func startFDFromConn(tb testing.TB, m mode) func(ctx context.Context, client, backend net.Conn, opts Options, done func(Stats)) {
	tb.Fatal("no StartSockets here")
	return nil
}
