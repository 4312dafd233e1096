package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// KeepAlive and UserTimeout are the keepalive and unacked-data limits of
// every TCP socket sluice relays, backend and client side (RELIABILITY T17):
// a peer that vanishes without FIN is declared dead after about 60 s idle,
// or 30 s with data unacknowledged (TCP_USER_TIMEOUT, Linux only).
var KeepAlive = net.KeepAliveConfig{
	Enable:   true,
	Idle:     30 * time.Second,
	Interval: 10 * time.Second,
	Count:    3,
}

// UserTimeout: see KeepAlive.
const UserTimeout = 30 * time.Second

// ErrBudgetExhausted is the DialError.Stop reason when ConnectBudget ran out
// before MaxAttempts attempts were made.
var ErrBudgetExhausted = errors.New("balancer: connect budget exhausted")

// newDialer returns the dialer of Pool.Connect (plain HTTP to a backend):
// keepalive and TCP_USER_TIMEOUT set with every connect. TCP_NODELAY is Go's
// default; TCP_USER_TIMEOUT is set in Control (Linux only, see sockopt_*.go).
// Dial and DialPrevious (relays: l4, WebSocket tunnels) use leanDialer and
// set them later, only on connections that live on (deferopts.go).
func newDialer() net.Dialer {
	return net.Dialer{
		KeepAliveConfig: KeepAlive,
		Control:         controlBackendSocket,
	}
}

// leanDialer connects a relay's backend socket with no option but Go's
// TCP_NODELAY: keepalive and TCP_USER_TIMEOUT (5 setsockopt calls, a seventh
// of the syscalls of an L4 connection) wait until the connection has lived
// about optionsDelay (deferopts.go, issue 11). leanDialerUT also sets
// TCP_USER_TIMEOUT before connect, for pools whose connect_timeout is longer
// than it: there it ends the SYN retries, as it always did.
var (
	leanDialer   = net.Dialer{KeepAlive: -1}
	leanDialerUT = net.Dialer{KeepAlive: -1, Control: controlBackendSocket}
)

// DialRequest is what the caller knows about the client connection being
// forwarded.
type DialRequest struct {
	// Client is the player's address: the source in the PROXY header.
	Client net.Addr
	// Local is the sluice listener address the client connected to: the
	// destination in the PROXY header.
	Local net.Addr
	// SNI is sent with PROXY v2 as a PP2_TYPE_AUTHORITY TLV when non-empty.
	SNI string
	// Prefix is written right after the PROXY header, in the same Write
	// (the peeked ClientHello). It is replayed unchanged on each retry and
	// not retained after Dial returns.
	Prefix []byte
	// HashKey is the value of the pool's hash key (Pool.HashKey) for this
	// connection, extracted by the caller; used only by Hash pools, and only
	// when HasHashKey is true. Without it, Hash picks as LeastConn.
	HashKey    string
	HasHashKey bool
	// Sticky is the value of the pool's sticky cookie sent by the client
	// (Backend.Cookie), "" if none. The backend it names is chosen while it
	// is UP (or the pool tries all), not in Maint and not full, and not
	// already tried; Drain does not stop it (HAProxy serves persistent
	// connections on a draining server). Otherwise, or for a forged or
	// unknown value, the pool's algorithm picks.
	Sticky string
	// AwaitAnswer makes each attempt wait, after the write, until the
	// backend sends its first byte (peeked, not consumed), for up to the
	// pool's connect timeout. A backend that closes or resets before
	// answering fails the attempt, which is retried on another backend with
	// the same bytes (RELIABILITY T12, "accepted and closed"). A backend
	// that is merely slow is kept: when the wait times out, Dial returns the
	// connection as it is.
	//
	// Set it only when Prefix is a whole opening the backend answers without
	// more bytes from the client (a TLS ClientHello, a WebSocket upgrade
	// request): what the client sends after it stays in the client's socket
	// until the backend has answered, so nothing unreplayable is lost.
	AwaitAnswer bool
	// Wait, if set (l4.FDWaiter: Linux), makes Dial connect to a backend
	// whose address is an IP literal with a socket of its own instead of
	// one of Go's (rawdial_linux.go): the Lease has FD, not Conn, for
	// l4.StartSockets. Wait parks the caller until the descriptor is writable
	// (write) or readable, hung up or failed, the deadline passes
	// (os.ErrDeadlineExceeded) or ctx ends. Other backends (a host name)
	// are dialled as without it.
	Wait Waiter
}

// Waiter is DialRequest.Wait (l4.WaitFD): it returns the epoll events that
// ended the wait, or 0 if it does not know them.
type Waiter func(ctx context.Context, fd int, write bool, deadline time.Time) (uint32, error)

// Lease is a connected backend connection with the header and prefix already
// written. The caller owns Conn or FD (and closes it) and calls Release once
// the connection has ended.
type Lease struct {
	// Conn is the raw socket, so that the relay can splice; nil when the
	// raw dial (DialRequest.Wait) connected FD.
	Conn *net.TCPConn
	// FD is the raw dial's connected nonblocking socket, or -1. Its owner
	// (l4.StartSockets) is ended through Detach's Killer, never by closing it
	// from here: CloseConnections before Detach marks the lease killed and
	// Detach then refuses.
	FD int
	// Backend is the backend Conn is connected to.
	Backend *Backend
	// Attempts is the number of connect attempts this Dial made, the
	// successful one included.
	Attempts int

	pool       *Pool
	released   atomic.Bool
	observed   atomic.Bool
	batch      *optsBatch // sets Conn's keepalive and TCP_USER_TIMEOUT later (deferopts.go)
	slot       int32
	killer     interface{ Kill() } // after Detach: ends the relay (closeLeases)
	killed     bool                // closeLeases found an FD lease not detached yet
	prev, next *Lease              // the backend's live leases, under Backend.lmu
}

// Release records that the connection ended: it decrements the backend's
// active count. Unless Observe was called, the connection counts as a
// success for passive health (it ends the failure streak). It is
// idempotent, safe on a nil Lease, and does not close Conn.
func (l *Lease) Release() {
	if l == nil || !l.released.CompareAndSwap(false, true) {
		return
	}
	l.dequeue()
	if l.pool != nil {
		if !l.observed.Load() {
			l.Backend.passiveOK()
		}
		l.Backend.untrack(l)
	}
	l.Backend.live.active.Add(-1)
}

// errResetBeforeFirstByte is the passive-health cause reported by Observe.
var errResetBeforeFirstByte = errors.New("reset before the first byte")

// Observe reports, before Release, how the backend behaved: a reset before
// it sent anything (bytesFromBackend == 0, reset true) counts as a passive
// failure, like a failed connect; bytes received end the failure streak;
// anything else (a clean close with no bytes) counts as neither. Only the
// first call counts.
func (l *Lease) Observe(bytesFromBackend int64, reset bool) {
	if l == nil || l.pool == nil || !l.observed.CompareAndSwap(false, true) {
		return
	}
	switch {
	case bytesFromBackend > 0:
		l.Backend.passiveOK()
	case reset:
		l.pool.passiveFail(l.Backend, "failed connections", errResetBeforeFirstByte)
	}
}

// AttemptError is one failed connect attempt.
type AttemptError struct {
	Backend string // the backend's configured address
	Err     error
	// Local is set when the attempt failed for want of a local resource
	// (see LocalReason); such a failure is not counted against the backend.
	Local LocalReason
}

func (e *AttemptError) Error() string {
	if e.Local != NotLocal {
		return e.Backend + ": local " + e.Local.String() + ": " + e.Err.Error()
	}
	return e.Backend + ": " + e.Err.Error()
}
func (e *AttemptError) Unwrap() error { return e.Err }

// DialError is returned by Dial when no attempt succeeded. errors.Is and
// errors.As see each attempt's cause and the stop reason (for example
// syscall.ECONNREFUSED, ErrBudgetExhausted, context.Canceled). A connect
// timeout is a net.Error with Timeout() true: context.DeadlineExceeded or
// os.ErrDeadlineExceeded, depending on whether the context's timer or the
// socket's deadline fired first.
type DialError struct {
	Pool     string
	Attempts []AttemptError
	// Stop is why fewer than MaxAttempts attempts were made: ErrBudgetExhausted
	// or the caller's ctx.Err(). Nil when every allowed attempt ran.
	Stop error
}

func (e *DialError) Error() string {
	var sb strings.Builder
	sb.WriteString("balancer: pool ")
	sb.WriteString(strconv.Quote(e.Pool))
	sb.WriteString(": ")
	sb.WriteString(strconv.Itoa(len(e.Attempts)))
	sb.WriteString(" connect attempts failed")
	if e.Stop != nil {
		sb.WriteString(" (stopped: ")
		sb.WriteString(e.Stop.Error())
		sb.WriteString(")")
	}
	for i := range e.Attempts {
		if i == 0 {
			sb.WriteString(": ")
		} else {
			sb.WriteString("; ")
		}
		sb.WriteString(e.Attempts[i].Error())
	}
	return sb.String()
}

// Local reports whether every attempt failed for want of a local resource
// (source ports, descriptors, buffers): sluice's trouble, not the backends'.
// It is false when no attempt was made.
func (e *DialError) Local() bool {
	for i := range e.Attempts {
		if e.Attempts[i].Local == NotLocal {
			return false
		}
	}
	return len(e.Attempts) > 0
}

func (e *DialError) Unwrap() []error {
	errs := make([]error, 0, len(e.Attempts)+1)
	for i := range e.Attempts {
		errs = append(errs, &e.Attempts[i])
	}
	if e.Stop != nil {
		errs = append(errs, e.Stop)
	}
	return errs
}

// Dial connects to a backend of p and writes the PROXY header (if the pool
// sends one) and req.Prefix in one Write. The backend is chosen by the pool's
// algorithm among healthy, ready backends below MaxConnections (backups only
// while no primary is healthy; every ready backend in TryAll panic mode). On
// a failed attempt (connect refused or timed out, or that write failing) it
// retries another such backend, a different one each time, up to
// MaxAttempts attempts, within ConnectBudget and ctx. Each attempt has
// min(ConnectTimeout, remaining budget) for connect and write together, and
// replays exactly the same bytes (RELIABILITY rule 4, T12). Each failed
// attempt counts towards the backend's passive MaxFails.
//
// A backend that accepts and then closes or resets is caught by the write
// failing, or, with req.AwaitAnswer, by waiting for its first byte;
// otherwise the write usually succeeds into the kernel's send buffer first
// and the relay sees the reset (T13) and reports it with Lease.Observe.
//
// On success the backend's active count is incremented; the caller must call
// Lease.Release when the connection ends. Errors: one wrapping ErrNoBackend
// (ErrUnhealthy or ErrFull) when there was nothing to try and nothing was
// dialled, *DialError when every attempt failed, or an error building the
// PROXY header.
func (p *Pool) Dial(ctx context.Context, req DialRequest) (*Lease, error) {
	payload, err := buildPayload(p.proxy, &req)
	if err != nil {
		return nil, fmt.Errorf("balancer: pool %q: %w", p.name, err)
	}
	// The same walk as a plain HTTP request's (Chooser): one backend set
	// for every attempt, each attempt another backend, max_attempts within
	// the connect budget.
	var ch Chooser
	p.startWalk(&ch, &req)
	return p.dialWalk(ctx, &ch, &req, payload)
}

// dialWalk makes Dial's attempts along ch (Dial, DialPrevious).
func (p *Pool) dialWalk(ctx context.Context, ch *Chooser, req *DialRequest, payload []byte) (*Lease, error) {
	for {
		b, err := ch.next(ctx)
		if err != nil {
			return nil, err
		}
		deadline := time.Now().Add(p.connectTimeout)
		if ch.budget.Before(deadline) {
			deadline = ch.budget
		}
		d := &leanDialer
		if p.connectTimeout > UserTimeout {
			d = &leanDialerUT
		}
		if ap, ok := rawTarget(req, b); ok {
			fd, err := p.rawAttempt(ctx, b, ap, req, payload, deadline)
			if err == nil {
				l := &Lease{FD: fd, Backend: b, Attempts: ch.attempts, pool: p}
				b.track(l)
				return l, nil
			}
			b.live.active.Add(-1)
			ch.record(b, err, p.attemptFailed(ctx, b, err))
			continue
		}
		var conn *net.TCPConn
		if req.AwaitAnswer {
			// The payload goes out inside the answer's wait (awaitAnswer).
			conn, err = p.attemptWith(ctx, d, b, deadline, nil)
			if err == nil {
				if err = awaitAnswer(ctx, conn, payload, deadline, time.Now().Add(p.connectTimeout)); err != nil {
					conn.Close()
				}
			}
		} else {
			conn, err = p.attemptWith(ctx, d, b, deadline, payload)
		}
		if err == nil {
			l := &Lease{Conn: conn, FD: -1, Backend: b, Attempts: ch.attempts, pool: p}
			l.deferOptions()
			b.track(l)
			return l, nil
		}
		b.live.active.Add(-1)
		ch.record(b, err, p.attemptFailed(ctx, b, err))
	}
}

// whyNone explains a first pick for req that found nothing in tier v:
// ErrFull when some backend it could have had is only full (for a keyed
// Hash request, a draining one included), else ErrUnhealthy (the tier
// counts were stale, or every backend is draining).
func whyNone(s *backendSet, v *view, req *DialRequest) error {
	for _, b := range s.list {
		if b.full() && (admitted(b, v) || req.HasHashKey && b.AdminState() == Drain && inTier(b, v.keyTier)) {
			return ErrFull
		}
	}
	return ErrUnhealthy
}

// pickOnce is one first-attempt pick without dialling (tests, benchmarks).
func (p *Pool) pickOnce(req *DialRequest) int {
	v, err := p.view()
	if err != nil {
		return -1
	}
	var st pickState
	st.reset()
	return p.pick(p.set.Load(), &v, &st, req)
}

// attempt connects to b with every socket option set (Pool.Connect) and
// writes payload, all before deadline.
func (p *Pool) attempt(ctx context.Context, b *Backend, deadline time.Time, payload []byte) (*net.TCPConn, error) {
	return p.attemptWith(ctx, &p.dialer, b, deadline, payload)
}

// attemptWith is attempt with dialer d.
func (p *Pool) attemptWith(ctx context.Context, d *net.Dialer, b *Backend, deadline time.Time, payload []byte) (*net.TCPConn, error) {
	b.dials.Add(1)
	actx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	// Never bind before connect: Dialer.DialTCP binds its socket to the
	// local address it is given, and a zero netip.AddrPort still binds
	// (to 0.0.0.0:0), which picks a source port without knowing the
	// destination: ports in TIME_WAIT or used towards other destinations
	// cannot be shared, and a connection storm fails with EADDRINUSE
	// (issue 11). connect(2) on an unbound socket picks a port per
	// destination. DialContext with no LocalAddr does that.
	c, err := d.DialContext(actx, "tcp", b.addr)
	if err != nil {
		return nil, err
	}
	conn := c.(*net.TCPConn)
	if err := writePayload(conn, payload, deadline); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// writePayload writes payload (if any) to conn before deadline. One Write:
// header and prefix leave in one send(2) when the socket buffer has room, so
// the backend never sees a header alone (rule 4).
func writePayload(conn *net.TCPConn, payload []byte, deadline time.Time) error {
	if len(payload) == 0 {
		return nil
	}
	if err := conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	if _, err := conn.Write(payload); err != nil {
		return fmt.Errorf("write proxy header and prefix: %w", err)
	}
	return conn.SetWriteDeadline(time.Time{})
}
