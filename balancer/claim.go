package balancer

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"
)

// Per-request balancing (issue 10). A plain HTTP request chooses its
// backend by the pool's algorithm and hash key exactly as an upgrade does,
// while the connections to each backend are pooled and reused by the caller
// (an http.Transport): Choose picks and holds a slot, Connect dials one
// given backend for the caller's connection pool.
//
//	ch := pool.NewChooser(&req)
//	for {
//		claim, err := ch.Next(ctx)
//		if err != nil { return err } // wraps ErrNoBackend, or a *DialError
//		resp, err := roundTripTo(claim.Backend) // dials with pool.Connect when no idle conn
//		if connectFailed(err) { ch.Failed(claim, err); continue }
//		... claim.Release() when the response has been read
//	}
//
// A slot is a request in flight: it counts in Backend.Active and towards
// MaxConnections; an idle pooled connection does not (it is not a player).

// Claim is one request's slot on a backend, taken by Chooser.Next.
type Claim struct {
	// Backend is the chosen backend.
	Backend  *Backend
	released atomic.Bool
}

// Release frees the slot. It is idempotent and safe on a nil Claim.
func (c *Claim) Release() {
	if c == nil || !c.released.CompareAndSwap(false, true) {
		return
	}
	c.Backend.live.active.Add(-1)
}

// Chooser walks one request through a pool: each Next picks another
// backend (never one already tried or found full), up to the pool's
// MaxAttempts within its ConnectBudget, like Dial's retries.
type Chooser struct {
	p        *Pool
	set      *backendSet // loaded once: st's indices are into it
	req      *DialRequest
	st       pickState
	budget   time.Time
	attempts int
	failed   []AttemptError
}

// NewChooser starts a walk for req; req is read by each Next, not copied.
func (p *Pool) NewChooser(req *DialRequest) *Chooser {
	ch := new(Chooser)
	p.startWalk(ch, req)
	return ch
}

// startWalk sets ch up for a walk of p for req (Dial keeps ch on its stack).
func (p *Pool) startWalk(ch *Chooser, req *DialRequest) {
	*ch = Chooser{p: p, set: p.set.Load(), req: req, budget: time.Now().Add(p.connectBudget)}
	ch.st.reset()
}

// Next picks and reserves the next backend. When there is none, it returns
// an error wrapping ErrNoBackend (ErrFull or ErrUnhealthy) if nothing was
// tried yet, else a *DialError listing the failed attempts.
func (ch *Chooser) Next(ctx context.Context) (*Claim, error) {
	b, err := ch.next(ctx)
	if err != nil {
		return nil, err
	}
	return &Claim{Backend: b}, nil
}

// next is Next without the Claim: b's slot is taken.
func (ch *Chooser) next(ctx context.Context) (*Backend, error) {
	p := ch.p
	var stop error
	for ch.attempts < ch.set.maxAttempts {
		if err := ctx.Err(); err != nil {
			stop = err
			break
		}
		if ch.attempts > 0 && !time.Now().Before(ch.budget) {
			stop = ErrBudgetExhausted
			break
		}
		v, err := p.view()
		if err != nil {
			if ch.attempts == 0 {
				return nil, fmt.Errorf("balancer: pool %q: %w", p.name, err)
			}
			break
		}
		i := p.pick(ch.set, &v, &ch.st, ch.req)
		if i < 0 && p.set.Load() != ch.set {
			ch.set = ch.st.moveTo(ch.set, p.set.Load()) // see Dial
			continue
		}
		if i < 0 {
			if ch.attempts == 0 {
				return nil, fmt.Errorf("balancer: pool %q: %w", p.name, whyNone(ch.set, &v, ch.req))
			}
			break
		}
		ch.st.add(i)
		b := ch.set.list[i]
		if !b.reserve() {
			continue // filled up since the pick: the next candidate
		}
		ch.attempts++
		return b, nil
	}
	if len(ch.failed) == 0 && stop == nil {
		return nil, fmt.Errorf("balancer: pool %q: %w", p.name, ErrNoBackend)
	}
	return nil, &DialError{Pool: p.name, Attempts: ch.failed, Stop: stop}
}

// Failed records that connecting to the claim's backend failed with err and
// releases the claim; the next Next tries another backend. Health was
// already told by Connect.
func (ch *Chooser) Failed(c *Claim, err error) {
	c.Release()
	ch.record(c.Backend, err, ClassifyLocal(err))
}

// record adds a failed attempt on b to the walk's DialError.
func (ch *Chooser) record(b *Backend, err error, local LocalReason) {
	ch.failed = append(ch.failed, AttemptError{Backend: b.addr, Err: err, Local: local})
}

// Connect dials b, once, within the pool's connect timeout, and writes the
// PROXY header the pool sends (built from req) before returning. It does
// not take a slot: the connection is meant for a caller's pool of reusable
// connections, and the requests sent over it hold Claims. A failure counts
// towards b's passive health like a failed Dial attempt (local failures
// excepted: see LocalReason); a success ends b's failure streak.
func (p *Pool) Connect(ctx context.Context, b *Backend, req DialRequest) (*net.TCPConn, error) {
	payload, err := buildPayload(p.proxy, &req)
	if err != nil {
		return nil, fmt.Errorf("balancer: pool %q: %w", p.name, err)
	}
	conn, err := p.attempt(ctx, b, time.Now().Add(p.connectTimeout), payload)
	if err != nil {
		p.attemptFailed(ctx, b, err)
		return nil, &AttemptError{Backend: b.addr, Err: err, Local: ClassifyLocal(err)}
	}
	b.passiveOK()
	return conn, nil
}

// attemptFailed accounts one failed connect attempt to b: local failures by
// reason, others towards Failures and passive health (unless the caller
// gave up: ctx done).
func (p *Pool) attemptFailed(ctx context.Context, b *Backend, err error) LocalReason {
	local := ClassifyLocal(err)
	switch {
	case local != NotLocal:
		// Sluice's own trouble (no source port, no descriptor): the
		// backend is not to blame (issue 11).
		b.local[local].Add(1)
	case ctx.Err() == nil:
		b.failures.Add(1)
		p.passiveFail(b, "connect failures", err)
	}
	return local
}

// Lookup returns the pool's backend with address addr, or nil: one of the
// current set, else one that discovery removed and that still drains (a
// Claim taken just before the removal still connects to it).
func (p *Pool) Lookup(addr string) *Backend {
	for _, b := range p.backends() {
		if b.addr == addr {
			return b
		}
	}
	for _, b := range p.draining() {
		if b.addr == addr {
			return b
		}
	}
	return nil
}
