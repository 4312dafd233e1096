//go:build !linux

package l4

import (
	"context"
	"net"
	"time"
)

// startEpoll: the epoll engine is Linux-only; elsewhere every relay runs on
// the goroutine engine.
func startEpoll(ctx context.Context, client, backend net.Conn, opts Options, done func(Stats)) bool {
	return false
}

// Sheds: only the epoll engine sheds.
func Sheds() int64 { return 0 }

// FDWaiter: no WaitFD here, so no raw dial.
func FDWaiter() func(ctx context.Context, fd int, write bool, deadline time.Time) (uint32, error) {
	return nil
}

// Socket is StartSockets' side: see the Linux build.
type Socket struct {
	Conn net.Conn
	FD   int
}

// StartSockets: the epoll engine is Linux-only; the caller keeps both.
func StartSockets(ctx context.Context, client, backend Socket, opts Options, done func(Stats)) bool {
	return false
}

// RawStarts: only the epoll engine starts relays on descriptors.
func RawStarts() int64 { return 0 }
