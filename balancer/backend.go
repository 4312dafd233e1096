package balancer

import (
	"context"
	"net"
	"sync/atomic"
	"time"
)

// Backend is one server of a pool. Its counters are atomic and read by the
// metrics collector at scrape time; a later issue adds weight, capacity,
// health and draining state here.
type Backend struct {
	addr string

	active   atomic.Int64  // connections leased and not yet released
	dials    atomic.Uint64 // connect attempts made by Dial
	failures atomic.Uint64 // attempts that failed (connect or first write)
}

func newBackend(cfg BackendConfig) *Backend {
	return &Backend{addr: cfg.Address}
}

// Addr returns the configured host:port. A host name is resolved at each
// dial, not once at startup.
func (b *Backend) Addr() string { return b.addr }

// Active returns the number of connections in flight: dialed by Pool.Dial
// and not yet released with Lease.Release.
func (b *Backend) Active() int64 { return b.active.Load() }

// Dials returns the number of connect attempts Pool.Dial made to b.
func (b *Backend) Dials() uint64 { return b.dials.Load() }

// Failures returns the number of attempts to b that failed: connect refused
// or timed out, or the write of PROXY header and prefix failed. Attempts cut
// short because the caller's context ended are not counted: the client left,
// the backend did nothing wrong.
func (b *Backend) Failures() uint64 { return b.failures.Load() }

// Probe opens a plain TCP connection to b and closes it. It reports whether b
// accepts connections; it sends nothing, not even a PROXY header (a later
// health-check issue sends a LOCAL PROXY header to backends of pools that
// send PROXY, since such backends may log or reject a bare connect). It does
// not touch b's counters. A timeout <= 0 leaves only ctx to bound the probe.
func (b *Backend) Probe(ctx context.Context, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return &AttemptError{Backend: b.addr, Err: err}
	}
	return c.Close()
}
