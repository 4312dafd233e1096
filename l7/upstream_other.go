//go:build !linux

package l7

import (
	"context"
	"net"
	"time"
)

// fdUpstream: no raw dial here (l4.FDWaiter is nil), so never made.
type fdUpstream struct{ fd int }

func newFDUpstream(context.Context, int, net.Addr) *fdUpstream {
	panic("l7: no raw dial on this platform")
}

func (*fdUpstream) Read([]byte) (int, error)         { return 0, nil }
func (*fdUpstream) Write([]byte) (int, error)        { return 0, nil }
func (*fdUpstream) Close() error                     { return nil }
func (*fdUpstream) SetReadDeadline(time.Time) error  { return nil }
func (*fdUpstream) SetWriteDeadline(time.Time) error { return nil }
func (*fdUpstream) take()                            {}
