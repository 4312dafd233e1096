package balancer

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// AdminState is the say of the operator (admin API), of discovery (a
// removed backend drains) or of the backend's agent over a backend,
// independent of its health (HAProxy's ready/drain/maint).
type AdminState uint8

const (
	// Ready backends take new connections when healthy. The zero value.
	Ready AdminState = iota
	// Drain: no new connections; existing ones continue until they end.
	Drain
	// Maint: no new connections; existing ones are closed after
	// PoolConfig.MaintCloseAfter when that is set, or by CloseConnections.
	Maint
)

// ParseAdminState parses "ready", "drain" or "maint".
func ParseAdminState(s string) (AdminState, error) {
	switch s {
	case "ready":
		return Ready, nil
	case "drain":
		return Drain, nil
	case "maint":
		return Maint, nil
	}
	return Ready, fmt.Errorf("balancer: unknown admin state %q (want ready, drain or maint)", s)
}

// String returns the spelling ParseAdminState accepts.
func (s AdminState) String() string {
	switch s {
	case Ready:
		return "ready"
	case Drain:
		return "drain"
	case Maint:
		return "maint"
	}
	return fmt.Sprintf("AdminState(%d)", uint8(s))
}

// Backend is one server of a pool. Its counters and states are atomic: the
// pick path reads them without locks, and the metrics collector reads them
// at scrape time.
type Backend struct {
	id       string // BackendConfig.ID, or addr
	addr     string
	weight   int   // >= 1
	maxConns int64 // 0: unlimited
	backup   bool
	// hash is the rendezvous identity, from id (the address unless an id
	// is configured or discovered): every sluice instance running the same
	// config ranks a key's backends alike, and a server keeps its keys when
	// only its address changes (issue 12, part 6).
	hash   uint64
	cookie string // sticky cookie value: opaque, from the pool name and id

	// live is what a config reload carries over to the Backend with the
	// same address (Pool.Adopt): connections in flight and their leases, so
	// that MaxConnections and least_conn count the players connected before
	// the reload, and CloseConnections reaches them.
	live *liveState

	dials    atomic.Uint64 // connect attempts made by Dial
	failures atomic.Uint64 // attempts that failed (connect or first write)
	// local counts attempts that failed for want of a local resource, by
	// LocalReason; shared with the same backend after a reload (Adopt).
	local *[numLocalReasons]atomic.Uint64

	// healthy is the health state the picks read: UP (true) when the
	// checks (active and passive) say UP and the agent does not say down.
	healthy atomic.Bool
	// admin is the AdminState the picks read: the stricter of opAdmin and
	// the agent's (maint > drain > ready; see setOperatorLocked).
	admin   atomic.Uint32
	upSince atomic.Int64 // unix ns of the last DOWN→UP transition (slow start); 0 if none
	// consecFails is the passive streak: failed connects and resets before
	// the first byte since the last success (see Lease.Observe).
	consecFails atomic.Int32

	// Agent-set values the picks read without locks (issue 12, part 5);
	// written under the pool's mu by refreshAgentLocked.
	effWeight atomic.Int64 // weight × weightScale, scaled by the agent's percentage
	capConns  atomic.Int64 // the lower of maxConns and the agent's maxconn; 0: unlimited
	agentLoad atomic.Int64 // the agent's load:N; -1 when none was reported
	agentFull atomic.Bool  // the agent reports load >= maxconn > 0

	// Guarded by the pool's mu.
	opAdmin              AdminState    // set by SetState and discovery; admin folds in the agent's
	checkUp              bool          // the checks' verdict (healthy folds in the agent's down)
	agent                *agentState   // nil unless the pool has an agent
	stopAgent            func()        // ends its agent goroutine; nil if none
	okStreak, failStreak int           // active checks, HAProxy counter semantics
	downUntil            int64         // passive DOWN without active checks: unix ns of revival; 0 if none
	lastCheckErr         string        // "" after a passing check
	lastCheckDur         time.Duration // of the last finished check
	maintTimer           *time.Timer   // MaintCloseAfter, while in Maint
	stopCheck            func()        // ends its active-check goroutine; nil if none

	// discovered: the backend came from PoolConfig.Discover, not from
	// PoolConfig.Backends; the next answer may remove it.
	discovered bool
	// rrWeight is smooth round robin's current weight, under the pool's
	// rr.mu. It lives on the backend, not in the backend set, so a set
	// swap (discovery) carries every backend's place in the rotation over.
	rrWeight int64
}

// liveState is a backend's connections in flight.
type liveState struct {
	active atomic.Int64 // connections leased or being connected

	// Live leases, for CloseConnections / MaintCloseAfter / CloseOnDown:
	// an intrusive list so Dial and Release do not allocate for it.
	lmu    sync.Mutex
	leases *Lease
}

func newBackend(cfg BackendConfig) *Backend {
	b := &Backend{
		id:       cmp.Or(cfg.ID, cfg.Address),
		addr:     cfg.Address,
		weight:   max(cfg.Weight, 1),
		maxConns: int64(max(cfg.MaxConnections, 0)),
		backup:   cfg.Backup,
		hash:     mix64(hashString(cmp.Or(cfg.ID, cfg.Address))),
		live:     new(liveState),
		local:    new([numLocalReasons]atomic.Uint64),
		checkUp:  true,
	}
	b.healthy.Store(true)
	b.effWeight.Store(int64(b.weight) * weightScale)
	b.capConns.Store(b.maxConns)
	b.agentLoad.Store(-1)
	return b
}

// Addr returns the configured host:port. A host name is resolved at each
// dial, not once at startup.
func (b *Backend) Addr() string { return b.addr }

// ID returns the backend's stable identity: its configured id, or its
// address.
func (b *Backend) ID() string { return b.id }

// is reports whether key names b: its id or its address.
func (b *Backend) is(key string) bool { return b.id == key || b.addr == key }

// Cookie returns the value of the pool's sticky cookie that pins a player
// to b: 16 hex digits derived from the pool's name and b's ID, so it
// names no address, and is the same across reloads and across sluice
// instances running the same config.
func (b *Backend) Cookie() string { return b.cookie }

// Weight returns the configured weight (at least 1).
func (b *Backend) Weight() int { return b.weight }

// MaxConnections returns the configured connection cap; 0 means unlimited.
// The cap in force may be lower: see EffectiveMaxConnections.
func (b *Backend) MaxConnections() int { return int(b.maxConns) }

// EffectiveMaxConnections returns the connection cap in force: the lower of
// the configured one and the agent's maxconn (0 counting as no cap on
// either side); 0 means unlimited.
func (b *Backend) EffectiveMaxConnections() int { return int(b.capConns.Load()) }

// Backup reports whether b is used only when no primary backend is healthy.
func (b *Backend) Backup() bool { return b.backup }

// Healthy reports b's health state (UP): true from the start, changed by
// active checks, passive failures and the agent's down/up. Admin state is
// separate.
func (b *Backend) Healthy() bool { return b.healthy.Load() }

// AdminState returns the admin state the pool acts on: the stricter of the
// operator's (Pool.SetState; Drain also while discovery removed b) and its
// agent's (maint > drain > ready; an agent weight of 0% counts as drain).
func (b *Backend) AdminState() AdminState { return AdminState(b.admin.Load()) }

// Active returns the number of connections in flight: dialed by Pool.Dial
// and not yet released with Lease.Release (a connect in progress counts, so
// that MaxConnections holds under concurrent Dials).
func (b *Backend) Active() int64 { return b.live.active.Load() }

// Dials returns the number of connect attempts Pool.Dial made to b.
func (b *Backend) Dials() uint64 { return b.dials.Load() }

// Failures returns the number of attempts to b that failed: connect refused
// or timed out, or the write of PROXY header and prefix failed. Attempts cut
// short because the caller's context ended are not counted: the client left,
// the backend did nothing wrong.
func (b *Backend) Failures() uint64 { return b.failures.Load() }

// LocalFailures returns the number of attempts to b that failed for want of
// a local resource r (source ports, descriptors, buffers). They are not in
// Failures and never count towards passive health.
func (b *Backend) LocalFailures(r LocalReason) uint64 {
	if r == NotLocal || r >= numLocalReasons {
		return 0
	}
	return b.local[r].Load()
}

// Probe opens a plain TCP connection to b and closes it. It reports whether b
// accepts connections; it sends nothing, not even a PROXY header (the pool's
// active health checks do send one). It does not touch b's counters or
// health. A timeout <= 0 leaves only ctx to bound the probe.
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

// full reports whether b is at its connection cap (EffectiveMaxConnections),
// or its agent reports as many players as its maxconn allows.
func (b *Backend) full() bool {
	c := b.capConns.Load()
	return (c > 0 && b.live.active.Load() >= c) || b.agentFull.Load()
}

// reserve takes one connection slot, failing when b is full. Dial reserves
// before connecting so concurrent Dials cannot overshoot.
func (b *Backend) reserve() bool {
	if b.agentFull.Load() {
		return false
	}
	c := b.capConns.Load()
	if c <= 0 {
		b.live.active.Add(1)
		return true
	}
	for {
		a := b.live.active.Load()
		if a >= c {
			return false
		}
		if b.live.active.CompareAndSwap(a, a+1) {
			return true
		}
	}
}

// passiveOK ends the passive failure streak. It writes only when there is a
// streak, so the common path leaves the cache line shared.
func (b *Backend) passiveOK() {
	if b.consecFails.Load() != 0 {
		b.consecFails.Store(0)
	}
}

func (b *Backend) track(l *Lease) {
	b.live.lmu.Lock()
	l.next = b.live.leases
	if b.live.leases != nil {
		b.live.leases.prev = l
	}
	b.live.leases = l
	b.live.lmu.Unlock()
}

func (b *Backend) untrack(l *Lease) {
	b.live.lmu.Lock()
	if l.prev != nil {
		l.prev.next = l.next
	} else if b.live.leases == l {
		b.live.leases = l.next
	}
	if l.next != nil {
		l.next.prev = l.prev
	}
	l.prev, l.next = nil, nil
	b.live.lmu.Unlock()
}

// closeLeases closes the Conn of every live lease of b and returns how many.
// The leases stay live until their owners call Release (the relay sees the
// closed socket and ends).
func (b *Backend) closeLeases() int {
	b.live.lmu.Lock()
	defer b.live.lmu.Unlock()
	n := 0
	for l := b.live.leases; l != nil; l = l.next {
		switch {
		case l.Conn != nil:
			l.Conn.Close()
		case l.killer != nil:
			l.killer.Kill()
		default:
			l.killed = true // an FD lease whose relay has not started: Detach refuses
		}
		n++
	}
	return n
}

// Detach is l4.Owner's: the relay drops Conn for a descriptor of its own
// (an idle relay sheds Go's socket state) and is ended through k where
// closeLeases would close Conn. It refuses while Conn's deferred options
// are not set yet (deferOptions): the relay asks again later. For an FD
// lease (the raw dial) it records k, and refuses only when
// CloseConnections came before it (the relay then ends at once).
func (l *Lease) Detach(k interface{ Kill() }) bool {
	b := l.Backend
	b.live.lmu.Lock()
	defer b.live.lmu.Unlock()
	if l.FD >= 0 && l.Conn == nil {
		if l.killed {
			return false
		}
		l.killer = k
		return true
	}
	opts.mu.Lock()
	defer opts.mu.Unlock()
	if l.Conn == nil || (l.batch != nil && !l.batch.set) {
		return false
	}
	l.Conn, l.killer = nil, k
	return true
}
