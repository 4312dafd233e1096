//go:build !linux

package l4

import (
	"context"
	"net"
)

// startEpoll: the epoll engine is Linux-only; elsewhere every relay runs on
// the goroutine engine.
func startEpoll(ctx context.Context, client, backend net.Conn, opts Options, done func(Stats)) bool {
	return false
}

// Sheds: only the epoll engine sheds.
func Sheds() int64 { return 0 }
