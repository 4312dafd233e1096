//go:build !linux

package balancer

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// rawTarget: the raw dial is Linux-only.
func rawTarget(req *DialRequest, b *Backend) (netip.AddrPort, bool) { return netip.AddrPort{}, false }

func (p *Pool) rawAttempt(ctx context.Context, b *Backend, ap netip.AddrPort, req *DialRequest, payload []byte, deadline time.Time) (int, error) {
	return -1, errors.New("balancer: no raw dial on this system")
}

// SetBackendOptions: no raw dial here, so no raw descriptor.
func SetBackendOptions(fd int) error { return errors.New("balancer: no raw dial on this system") }

// RawDials: no raw dial here.
func RawDials() int64 { return 0 }
