package balancer

import (
	"sync"
	"time"
)

// Deferred socket options (issue 11). A relay's backend socket is connected
// by leanDialer without keepalive and TCP_USER_TIMEOUT; they are set only
// on connections still live after about optionsDelay, so a short connection
// never pays the five setsockopt calls. The leases dialled within one
// optionsDelay/4 share a batch and one timer: a few bytes per pending lease,
// no goroutine while waiting, one short one when the batch fires.

// optionsDelay is how long a relay's backend connection lives (0.75 to 1
// times it) before its keepalive and TCP_USER_TIMEOUT are set. Neither can
// act sooner: keepalive probes a connection idle for KeepAlive.Idle, and
// TCP_USER_TIMEOUT gives up on data unacknowledged for UserTimeout, both
// measured by the kernel from the last exchange, not from the setsockopt.
// The delay only moves the first keepalive probe of a connection idle since
// its first second by at most the delay.
var optionsDelay = time.Second

// optsBatch is the leases dialled in one window, armed by one timer.
type optsBatch struct {
	start  time.Time
	leases []*Lease // nil where released; nil slice once fired
	set    bool     // fire has set the options of its leases
}

var opts struct {
	mu  sync.Mutex
	cur *optsBatch // the batch new leases join, until optionsDelay/4 after its start
}

// deferOptions queues l for its batch's fire.
func (l *Lease) deferOptions() {
	now := time.Now()
	opts.mu.Lock()
	b := opts.cur
	if b == nil || now.Sub(b.start) >= optionsDelay/4 {
		b = &optsBatch{start: now}
		opts.cur = b
		time.AfterFunc(optionsDelay, b.fire)
	}
	l.batch, l.slot = b, int32(len(b.leases))
	b.leases = append(b.leases, l)
	opts.mu.Unlock()
}

// dequeue takes l out of its batch (Release): its options are never set.
func (l *Lease) dequeue() {
	if b := l.batch; b != nil {
		opts.mu.Lock()
		if b.leases != nil {
			b.leases[l.slot] = nil
		}
		opts.mu.Unlock()
	}
}

// fire sets the options of the batch's live leases. A conn closed meanwhile
// is left alone (RawConn.Control fails without touching the descriptor).
func (b *optsBatch) fire() {
	opts.mu.Lock()
	leases := b.leases
	b.leases = nil
	if opts.cur == b {
		opts.cur = nil
	}
	opts.mu.Unlock()
	for _, l := range leases {
		if l != nil && !l.released.Load() {
			_ = setBackendOptions(l.Conn)
		}
	}
	// Detach clears a lease's Conn, but not before this: the options are
	// set on the socket the relay keeps.
	opts.mu.Lock()
	b.set = true
	opts.mu.Unlock()
}
