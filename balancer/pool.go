package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults from RELIABILITY.md T12: 3 s per attempt, 3 attempts, each to a
// different backend, inside 6 s in total. Passive health: 5 consecutive
// failures mark a backend DOWN; without active checks it is retried after
// 10 s (RELIABILITY-TESTS "passive down threshold").
const (
	DefaultConnectTimeout = 3 * time.Second
	DefaultMaxAttempts    = 3
	DefaultConnectBudget  = 6 * time.Second
	DefaultMaxFails       = 5
	DefaultFailTimeout    = 10 * time.Second
)

// BackendConfig describes one backend of a pool.
type BackendConfig struct {
	// Address is host:port, validated by the caller. A host name is
	// resolved at each dial.
	Address string
	// ID is the backend's stable identity in the admin API, metrics, logs
	// and sticky cookies. If empty, Address is used.
	ID string
	// Weight is the backend's share relative to the others. If zero, 1 is
	// used; negative is an error.
	Weight int
	// MaxConnections caps the backend's active connections (player slots):
	// a full backend is skipped. If zero, unlimited; negative is an error.
	MaxConnections int
	// Backup backends take connections only while no primary (non-backup)
	// backend is healthy and ready.
	Backup bool
}

// AllUnhealthy is what Dial does when no backend is healthy.
type AllUnhealthy uint8

const (
	// Reject: Dial fails at once with an error wrapping ErrNoBackend and
	// ErrUnhealthy, without dialling. The zero value.
	Reject AllUnhealthy = iota
	// TryAll is Envoy's panic mode: every ready backend is tried regardless
	// of health.
	TryAll
)

// ParseAllUnhealthy parses "reject" (also "") or "try_all".
func ParseAllUnhealthy(s string) (AllUnhealthy, error) {
	switch s {
	case "", "reject":
		return Reject, nil
	case "try_all":
		return TryAll, nil
	}
	return Reject, fmt.Errorf("balancer: unknown on_all_unhealthy %q (want reject or try_all)", s)
}

// String returns the config spelling.
func (a AllUnhealthy) String() string {
	switch a {
	case Reject:
		return "reject"
	case TryAll:
		return "try_all"
	}
	return fmt.Sprintf("AllUnhealthy(%d)", uint8(a))
}

// Event is one health transition of a backend (Kind EventHealth), or a
// change discovery made (see EventKind).
type Event struct {
	Pool string
	// Backend is the backend's address for health transitions, its id for
	// EventAdded and EventRemoved, the discovery source for
	// EventDiscoveryFailed and EventDiscoveryOK.
	Backend string
	Healthy bool // the state after the transition
	// Reason says why, e.g. "3 consecutive failed tcp checks: dial tcp
	// 127.0.0.1:9001: connect: connection refused", "5 consecutive connect
	// failures: ...", "2 consecutive successful tcp checks".
	Reason string
	Time   time.Time
	// Kind is what happened; the zero value is a health transition, so a
	// receiver that knows only those still logs a sensible line for the
	// others (an addition or recovery as up, a removal or failure as down).
	Kind EventKind
}

// PoolConfig describes a pool. NewPool copies what it needs; the caller may
// reuse the struct.
type PoolConfig struct {
	// Name identifies the pool in errors, events and metrics.
	Name string
	// Backends in config order; round robin starts at the first. It may be
	// empty when Discover is set.
	Backends []BackendConfig
	// Discover, if set, adds the backends it finds to Backends, looked up
	// at Start and again every ResolveInterval (sooner when the answer's
	// TTL is shorter, never sooner than 1s) until Close. Changes apply to
	// the running pool; see Rediscover.
	Discover Discoverer
	// ResolveInterval is the longest time between two lookups of Discover.
	// If zero or negative, 5s is used.
	ResolveInterval time.Duration
	// DrainTimeout: the connections of a backend that discovery removed are
	// closed this long after the removal. If zero, they stay until they end.
	// It is also the removed backend's key window: until then it stays in
	// the set, draining, so that the keys that map to it keep reaching it
	// (its checks go on; DOWN moves them); if zero, RemovedKeyWindow.
	DrainTimeout time.Duration
	// ProxyProtocol is the header written before the prefix (and, as
	// "PROXY UNKNOWN" / a v2 LOCAL header, before health checks). If zero,
	// none.
	ProxyProtocol ProxyProtocol
	// ConnectTimeout bounds one attempt: connect and the write of PROXY
	// header and prefix; with DialRequest.AwaitAnswer, also the wait for the
	// backend's first byte after it. If zero or negative, 3s is used.
	ConnectTimeout time.Duration
	// MaxAttempts is the number of backends tried per Dial, each a different
	// one. If zero or negative, 3 is used. It is capped at len(Backends).
	MaxAttempts int
	// ConnectBudget bounds all attempts of one Dial together. If zero or
	// negative, 6s is used.
	ConnectBudget time.Duration

	// Balance is the algorithm. If zero, smooth weighted round robin.
	Balance Algorithm
	// HashKey is what callers extract into DialRequest.HashKey for Hash.
	// If zero with Hash, client_ip is used.
	HashKey HashKey
	// HashBalanceFactor bounds loads under Hash: a backend holding
	// ceil(factor × average load) connections passes new keys to their next
	// choice. If zero, unbounded (every key stays home: room affinity holds
	// even for a hot room); otherwise it must be at least 1 (1.25 is
	// typical). Note that a bound splits a hot room across servers, use
	// MaxConnections instead where a room must stay on one server. With
	// Agent, the loads are the ones the agents report (load:N) rather than
	// this instance's connections, so that every instance places keys
	// alike (see rendezvous.bound).
	HashBalanceFactor float64

	// StickyCookie names the cookie that pins a player to a backend (l7):
	// see DialRequest.Sticky and Backend.Cookie. If empty, none.
	StickyCookie string

	// SecondChanceStatus is the status with which a backend that joined
	// recently answers a request for a key it does not know ("unknown
	// room"): the caller then tries the key's previous owner (see
	// DialPrevious). If zero, off; otherwise 400 to 599, Hash only.
	SecondChanceStatus int
	// SecondChanceWindow is how long after a backend joined its keys get
	// a second chance. If zero, DefaultSecondChanceWindow.
	SecondChanceWindow time.Duration

	// Health configures active checks, run between Start and Close.
	Health HealthConfig
	// Agent configures agent checks (HAProxy's agent-check; see agent.go),
	// run between Start and Close. If Port is zero, none.
	Agent AgentConfig
	// MaxFails consecutive failed connects (or resets before the first
	// byte, see Lease.Observe) mark a backend DOWN (passive health). If
	// zero, 5 is used; negative disables passive health.
	MaxFails int
	// FailTimeout is how long a backend marked DOWN by passive health stays
	// DOWN when no active check runs; with active checks, Rise passing
	// checks bring it back instead. If zero or negative, 10s is used.
	FailTimeout time.Duration
	// SlowStart ramps a backend that comes UP (not at startup) from 1/10 of
	// its weight to full, linearly over this duration; for Hash it scales
	// the load bound only (keys do not move during the ramp). If zero, off.
	SlowStart time.Duration
	// OnAllUnhealthy decides Dial's behaviour with no healthy backend. If
	// zero, Reject.
	OnAllUnhealthy AllUnhealthy
	// MaintCloseAfter: when a backend is set to Maint, its live
	// connections are closed after this long. If zero, they are left alone
	// (Pool.CloseConnections closes them on demand).
	MaintCloseAfter time.Duration
	// CloseOnDown closes a backend's live connections when it goes DOWN
	// (HAProxy on-marked-down shutdown-sessions). If false, they continue.
	CloseOnDown bool
	// OnChange, if set, is called once per health transition, after the
	// state changed and with no pool lock held, from the health-check
	// goroutine or from the Dial/Release/Observe call that saw the failure.
	// Calls may run concurrently; it must not block for long.
	OnChange func(Event)
}

// Pool is a set of backends and the policy to pick among them. Dial is safe
// for concurrent use.
type Pool struct {
	name string
	// set is the current backends: an immutable snapshot, replaced whole
	// under mu (discovery), read without a lock by every pick.
	set     atomic.Pointer[backendSet]
	disc    *discovery  // nil without PoolConfig.Discover
	rr      *smoothRR   // RoundRobin
	hash    *rendezvous // Hash
	proxy   ProxyProtocol
	dialer  net.Dialer
	hashKey HashKey
	algo    Algorithm
	sticky  string // StickyCookie

	scStatus int           // SecondChanceStatus; 0: off
	scWindow time.Duration // SecondChanceWindow, default applied
	// joined is when each backend (by id) joined the running pool, kept
	// for scWindow while second chance is on; under mu.
	joined map[string]time.Time

	connectTimeout time.Duration
	maxAttempts    int // as configured; each set caps it at its size
	connectBudget  time.Duration
	maxFails       int32 // <= 0: passive health off
	failTimeout    time.Duration
	slowStart      time.Duration
	tryAll         bool
	maintClose     time.Duration
	drainTimeout   time.Duration // PoolConfig.DrainTimeout
	closeOnDown    bool
	onChange       func(Event)
	health         HealthConfig // defaults applied
	agent          *AgentConfig // defaults applied; nil: no agent checks
	checkHeader    []byte       // PROXY header sent before each check

	// Read by every pick; written under mu.
	upPrimary  atomic.Int32 // healthy ready primaries
	upBackup   atomic.Int32 // healthy ready backups
	keyPrimary atomic.Int32 // healthy ready or draining primaries (keyed Hash picks)
	keyBackup  atomic.Int32 // healthy ready or draining backups (keyed Hash picks)
	nextRevive atomic.Int64 // earliest Backend.downUntil; 0 if none
	slowUntil  atomic.Int64 // end of the latest slow start; 0 if none

	mu       sync.Mutex     // health streaks, transitions, admin changes, set swaps, lifecycle
	gone     []*goneBackend // removed by discovery, draining (a reload hands them on: Adopt)
	hadGone  atomic.Bool    // gone was ever non-empty
	started  bool
	checking bool // active-check goroutines run
	agenting bool // agent-check goroutines run
	closed   bool
	ctx      context.Context // between Start and Close: the checks' and discovery's
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// ErrNoBackend is returned by Dial when there is no backend to try at all (no
// connect was attempted). When attempts were made and all failed, Dial
// returns a *DialError instead: l7 answers the first with 503, the second
// with 502. ErrFull and ErrUnhealthy wrap it to say why.
var ErrNoBackend = errors.New("balancer: no backend available")

// ErrFull: every usable backend is at MaxConnections.
var ErrFull error = &sentinel{"balancer: all backends at max connections", ErrNoBackend}

// ErrUnhealthy: no backend is healthy (and OnAllUnhealthy is Reject), or none
// is ready (drain/maint).
var ErrUnhealthy error = &sentinel{"balancer: no healthy backend", ErrNoBackend}

// ErrUnknownBackend is returned by SetState and CloseConnections for an
// address that is not in the pool.
var ErrUnknownBackend = errors.New("balancer: unknown backend")

type sentinel struct {
	msg    string
	parent error
}

func (e *sentinel) Error() string { return e.msg }
func (e *sentinel) Unwrap() error { return e.parent }

// NewPool builds a pool from cfg. It fails on an empty pool (no backends
// and no Discover), an empty backend address, and out-of-range settings;
// other validation (host:port syntax, duplicate names) is the config
// loader's. Health checks and discovery start with Start.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if len(cfg.Backends) == 0 && cfg.Discover == nil {
		return nil, fmt.Errorf("balancer: pool %q: no backends", cfg.Name)
	}
	switch cfg.ProxyProtocol {
	case ProxyNone, ProxyV1, ProxyV2:
	default:
		return nil, fmt.Errorf("balancer: pool %q: %w: %d", cfg.Name, ErrProxyProtocol, uint8(cfg.ProxyProtocol))
	}
	if cfg.SecondChanceStatus != 0 && (cfg.Balance != Hash || cfg.SecondChanceStatus < 400 || cfg.SecondChanceStatus > 599) {
		return nil, fmt.Errorf("balancer: pool %q: second chance status %d: want 0 (off), or 400 to 599 with Hash", cfg.Name, cfg.SecondChanceStatus)
	}
	if cfg.HashBalanceFactor != 0 && !(cfg.HashBalanceFactor >= 1) {
		return nil, fmt.Errorf("balancer: pool %q: hash balance factor %v: want 0 (off) or >= 1", cfg.Name, cfg.HashBalanceFactor)
	}
	health, err := cfg.Health.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("balancer: pool %q: %w", cfg.Name, err)
	}
	p := &Pool{
		name:           cfg.Name,
		proxy:          cfg.ProxyProtocol,
		dialer:         newDialer(),
		hashKey:        cfg.HashKey,
		algo:           cfg.Balance,
		sticky:         cfg.StickyCookie,
		scStatus:       cfg.SecondChanceStatus,
		scWindow:       orDefault(cfg.SecondChanceWindow, DefaultSecondChanceWindow),
		connectTimeout: orDefault(cfg.ConnectTimeout, DefaultConnectTimeout),
		maxAttempts:    orDefault(cfg.MaxAttempts, DefaultMaxAttempts),
		connectBudget:  orDefault(cfg.ConnectBudget, DefaultConnectBudget),
		maxFails:       int32(orDefault(cfg.MaxFails, DefaultMaxFails)),
		failTimeout:    orDefault(cfg.FailTimeout, DefaultFailTimeout),
		slowStart:      max(cfg.SlowStart, 0),
		tryAll:         cfg.OnAllUnhealthy == TryAll,
		maintClose:     max(cfg.MaintCloseAfter, 0),
		drainTimeout:   max(cfg.DrainTimeout, 0),
		closeOnDown:    cfg.CloseOnDown,
		onChange:       cfg.OnChange,
		health:         health,
	}
	if cfg.MaxFails < 0 {
		p.maxFails = 0
	}
	if cfg.Agent.Port != 0 {
		a, err := cfg.Agent.withDefaults()
		if err != nil {
			return nil, fmt.Errorf("balancer: pool %q: %w", cfg.Name, err)
		}
		p.agent = &a
	}
	if p.proxy != ProxyNone {
		p.checkHeader, err = AppendProxyHeader(nil, p.proxy, nil, nil, "")
		if err != nil {
			return nil, fmt.Errorf("balancer: pool %q: %w", cfg.Name, err)
		}
	}
	list := make([]*Backend, 0, len(cfg.Backends))
	for i, bc := range cfg.Backends {
		if bc.Address == "" {
			return nil, fmt.Errorf("balancer: pool %q: backend %d: empty address", cfg.Name, i)
		}
		if bc.Weight < 0 || bc.MaxConnections < 0 {
			return nil, fmt.Errorf("balancer: pool %q: backend %s: negative weight or max connections", cfg.Name, bc.Address)
		}
		b := newBackend(bc)
		b.cookie = stickyValue(cfg.Name, b.id)
		list = append(list, b)
	}
	switch cfg.Balance {
	case RoundRobin:
		p.rr = new(smoothRR)
	case LeastConn, RandomTwo:
	case Hash:
		if p.hashKey.Kind == "" {
			p.hashKey = HashKey{Kind: HashClientIP}
		}
		p.hash = &rendezvous{factor: cfg.HashBalanceFactor}
	default:
		return nil, fmt.Errorf("balancer: pool %q: unknown balance %d", cfg.Name, uint8(cfg.Balance))
	}
	if cfg.Discover != nil {
		p.disc = &discovery{
			src:      cfg.Discover,
			interval: orDefault(cfg.ResolveInterval, DefaultResolveInterval),
			minDelay: MinResolveDelay,
			stats:    new(discoveryStats),
			lastTTL:  -1,
		}
	}
	p.set.Store(newBackendSet(list, nil, p.maxAttempts))
	p.recountLocked()
	return p, nil
}

// orDefault returns v, or def when v is zero or negative.
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.name }

// Backends returns the pool's current backends: the configured ones in
// config order, then the discovered ones by id; not the ones discovery
// removed, even in their key window (see RemovedStatus). The slice is a copy; the
// *Backend values are shared and stay valid while connections use them.
func (p *Pool) Backends() []*Backend { return slices.Clone(p.backends()) }

// ProxyProtocol returns the header the pool sends to its backends.
func (p *Pool) ProxyProtocol() ProxyProtocol { return p.proxy }

// StickyCookie returns the name of the pool's sticky cookie, "" if none.
func (p *Pool) StickyCookie() string { return p.sticky }

// Balance returns the pool's algorithm.
func (p *Pool) Balance() Algorithm { return p.algo }

// HashKey returns what callers should put in DialRequest.HashKey; the zero
// HashKey unless Balance is Hash.
func (p *Pool) HashKey() HashKey {
	if p.algo != Hash {
		return HashKey{}
	}
	return p.hashKey
}

// Start starts the active health checks, one goroutine per backend, each
// with at most one check in flight (none with CheckNone), and discovery,
// one goroutine that looks the backends up at once. It is idempotent and
// does nothing after Close.
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	if !p.health.active() && p.disc == nil && p.agent == nil {
		return
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.checking = p.health.active()
	p.agenting = p.agent != nil
	for _, b := range p.inSet() { // removed ones in their key window too (Adopt)
		p.startCheckLocked(b, -1) // and its agent's
	}
	if p.disc != nil {
		p.wg.Add(1)
		go p.discoverLoop(p.ctx)
	}
}

// Close stops the health checks, discovery, and the pending
// MaintCloseAfter and DrainTimeout timers, and waits for their goroutines.
// It does not close live connections; Dial keeps working (with the health
// state and the backend set frozen). It is idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.checking = false
	p.agenting = false
	if p.cancel != nil {
		p.cancel()
	}
	for _, b := range p.inSet() {
		b.stopCheck, b.stopAgent = nil, nil // ended by p.cancel
		p.stopMaintLocked(b)
	}
	for _, g := range p.gone {
		p.stopGoneLocked(g)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// recountLocked refreshes the counts of usable backends per tier; the
// removed backends in their key window count as draining.
func (p *Pool) recountLocked() {
	var prim, back, kprim, kback int32
	for _, b := range p.inSet() {
		if !b.healthy.Load() {
			continue
		}
		switch b.AdminState() {
		case Ready:
			if b.backup {
				back++
			} else {
				prim++
			}
			fallthrough
		case Drain:
			if b.backup {
				kback++
			} else {
				kprim++
			}
		}
	}
	p.upPrimary.Store(prim)
	p.upBackup.Store(back)
	p.keyPrimary.Store(kprim)
	p.keyBackup.Store(kback)
}

// view decides the tier of the next pick (primaries, backups when no
// primary is healthy and ready, everything in panic mode), reviving
// passively-downed backends whose FailTimeout has passed.
func (p *Pool) view() (view, error) {
	var v view
	if nr := p.nextRevive.Load(); nr != 0 && time.Now().UnixNano() >= nr {
		p.revive()
	}
	if su := p.slowUntil.Load(); su != 0 {
		now := time.Now().UnixNano()
		if now < su {
			v.now = now
		} else {
			p.slowUntil.CompareAndSwap(su, 0)
		}
	}
	v.tier = p.tier(p.upPrimary.Load(), p.upBackup.Load())
	v.keyTier = tierNone
	if p.algo == Hash {
		// A draining backend keeps its keys (keyUsable): keyed picks
		// count it as up.
		v.keyTier = p.tier(p.keyPrimary.Load(), p.keyBackup.Load())
	}
	if v.tier == tierNone && v.keyTier == tierNone {
		return v, ErrUnhealthy
	}
	return v, nil
}

// tier is the tier a pick uses with prim healthy primaries and back healthy
// backups.
func (p *Pool) tier(prim, back int32) int {
	switch {
	case prim > 0:
		return tierPrimary
	case back > 0:
		return tierBackup
	case p.tryAll:
		return tierAll
	}
	return tierNone
}

// transitionLocked flips b's health and returns the event to emit after
// unlocking, or ok false when b is already in that state.
//
// It flips the checks' verdict (active and passive); the health state in
// force also needs the agent's consent (refreshHealthLocked): while the
// agent says down, passing checks change nothing visible, and the event is
// the agent's "up" (HAProxy: "up" brings a server back only if the checks
// also report it accessible).
func (p *Pool) transitionLocked(b *Backend, up bool, reason string, passive bool) (ev Event, ok bool) {
	if b.checkUp == up {
		return Event{}, false
	}
	b.checkUp = up
	b.okStreak, b.failStreak = 0, 0
	b.downUntil = 0
	if up {
		b.consecFails.Store(0)
	} else if passive && !p.checking {
		b.downUntil = time.Now().Add(p.failTimeout).UnixNano()
	}
	ev, ok = p.refreshHealthLocked(b, reason)
	p.refreshReviveLocked()
	return ev, ok
}

// refreshHealthLocked sets the health state the picks read: UP when the
// checks say UP and the agent does not say down. It returns the event to
// emit after unlocking, or ok false when the state did not change.
func (p *Pool) refreshHealthLocked(b *Backend, reason string) (ev Event, ok bool) {
	up := b.checkUp && !b.agentDown()
	if b.healthy.Load() == up {
		return Event{}, false
	}
	now := time.Now()
	b.healthy.Store(up)
	if up && p.slowStart > 0 {
		b.upSince.Store(now.UnixNano())
		p.slowUntil.Store(max(p.slowUntil.Load(), now.Add(p.slowStart).UnixNano()))
	}
	p.recountLocked()
	return Event{Pool: p.name, Backend: b.addr, Healthy: up, Reason: reason, Time: now}, true
}

// refreshReviveLocked recomputes nextRevive from the backends' downUntil.
func (p *Pool) refreshReviveLocked() {
	var next int64
	for _, b := range p.inSet() {
		if b.downUntil != 0 && (next == 0 || b.downUntil < next) {
			next = b.downUntil
		}
	}
	p.nextRevive.Store(next)
}

// emit delivers a transition: closes connections if CloseOnDown, then calls
// OnChange. No lock is held.
func (p *Pool) emit(b *Backend, ev Event) {
	if !ev.Healthy && p.closeOnDown {
		b.closeLeases()
	}
	if p.onChange != nil {
		p.onChange(ev)
	}
}

// setHealth flips b's health and reports the transition.
func (p *Pool) setHealth(b *Backend, up bool, reason string, passive bool) {
	p.mu.Lock()
	ev, ok := p.transitionLocked(b, up, reason, passive)
	p.mu.Unlock()
	if ok {
		p.emit(b, ev)
	}
}

// revive brings back the backends whose passive FailTimeout has passed.
func (p *Pool) revive() {
	now := time.Now().UnixNano()
	var evs []Event
	var bs []*Backend
	p.mu.Lock()
	for _, b := range p.inSet() {
		if b.downUntil != 0 && now >= b.downUntil {
			reason := fmt.Sprintf("fail timeout %v passed after passive failures", p.failTimeout)
			if ev, ok := p.transitionLocked(b, true, reason, true); ok {
				evs, bs = append(evs, ev), append(bs, b)
			}
		}
	}
	p.mu.Unlock()
	for i := range evs {
		p.emit(bs[i], evs[i])
	}
}

// passiveFail counts a failed connect (or a reset before the first byte)
// and marks b DOWN at exactly MaxFails in a row.
func (p *Pool) passiveFail(b *Backend, what string, err error) {
	if p.maxFails <= 0 {
		return
	}
	if n := b.consecFails.Add(1); n == p.maxFails {
		p.setHealth(b, false, fmt.Sprintf("%d consecutive %s: %v", n, what, err), true)
	}
}

// SetState sets the admin state of the backend(s) with id or address addr. Drain
// and Maint stop new connections at once; live ones continue (Maint closes
// them after MaintCloseAfter when set). Ready cancels a pending close.
func (p *Pool) SetState(addr string, s AdminState) error {
	if s > Maint {
		return fmt.Errorf("balancer: pool %q: %w", p.name, fmt.Errorf("unknown admin state %d", uint8(s)))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	found := false
	for _, b := range p.backends() {
		if !b.is(addr) {
			continue
		}
		found = true
		p.setOperatorLocked(b, s) // the agent's drain or maint stay in force
		if s != Maint {
			p.stopMaintLocked(b)
		}
		if s == Maint && p.maintClose > 0 && b.maintTimer == nil && !p.closed {
			p.wg.Add(1)
			b.maintTimer = time.AfterFunc(p.maintClose, func() { p.maintExpired(b) })
		}
	}
	if !found {
		return fmt.Errorf("balancer: pool %q: %w %q", p.name, ErrUnknownBackend, addr)
	}
	p.recountLocked()
	return nil
}

// maintExpired is the MaintCloseAfter timer body.
func (p *Pool) maintExpired(b *Backend) {
	defer p.wg.Done()
	p.mu.Lock()
	b.maintTimer = nil
	still := b.AdminState() == Maint
	p.mu.Unlock()
	if still {
		b.closeLeases()
	}
}

// CloseConnections closes the connections of every live lease on the
// backend(s) with id or address addr, current or removed by discovery and
// draining, and returns how many. Their owners see the closed socket and
// end (the relay), then Release.
func (p *Pool) CloseConnections(addr string) (int, error) {
	n, found := 0, false
	for _, b := range p.backends() {
		if b.is(addr) {
			found = true
			n += b.closeLeases()
		}
	}
	for _, b := range p.draining() {
		if b.is(addr) {
			found = true
			n += b.closeLeases()
		}
	}
	if !found {
		return 0, fmt.Errorf("balancer: pool %q: %w %q", p.name, ErrUnknownBackend, addr)
	}
	return n, nil
}

// BackendStatus is a snapshot of one backend, for the admin API and for an
// orchestrator waiting until a drained server has no players left.
type BackendStatus struct {
	ID             string // BackendConfig.ID, or the address
	Address        string
	Weight         int
	Backup         bool
	AdminState     AdminState // in force: the stricter of OperatorState and Agent.State
	Healthy        bool
	Active         int64
	MaxConnections int
	Dials          uint64
	Failures       uint64
	// LocalFailures counts attempts that failed for want of a local
	// resource, indexed by LocalReason (index 0, NotLocal, stays 0).
	LocalFailures [numLocalReasons]uint64
	// LastCheckError is the last active check's error; "" if it passed or
	// none ran.
	LastCheckError    string
	LastCheckDuration time.Duration
	// OperatorState is the state set with SetState (Drain while discovery
	// removed the backend), without the agent's.
	OperatorState AdminState
	// EffectiveMaxConnections is the cap in force: the lower of
	// MaxConnections and the agent's maxconn; 0: unlimited.
	EffectiveMaxConnections int
	// Agent is what the backend's agent set; nil when the pool has none.
	Agent *AgentStatus
	// KeysUntil is, for a backend discovery removed (RemovedStatus), the
	// end of its key window: until then keyed picks still reach it (see
	// PoolConfig.DrainTimeout). Zero once the window ended, and for the
	// pool's backends.
	KeysUntil time.Time
}

// Status returns a snapshot of every backend of the current set, in the
// order of Backends; the backends discovery removed are in RemovedStatus.
func (p *Pool) Status() []BackendStatus {
	if nr := p.nextRevive.Load(); nr != 0 && time.Now().UnixNano() >= nr {
		p.revive()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.backends()
	out := make([]BackendStatus, len(list))
	for i, b := range list {
		out[i] = statusLocked(b)
	}
	return out
}

// RemovedStatus returns a snapshot of the backends discovery removed that
// are still in their key window or whose connections still drain (state
// Drain; see PoolConfig.DrainTimeout), in the order they were removed. Their ids may repeat ids of Status (an id
// that now names another address), so metrics leave them out; the admin
// API lists them, and Find finds them, so that an orchestrator can wait
// until a removed server has no player left.
func (p *Pool) RemovedStatus() []BackendStatus {
	if p.disc == nil && !p.hadGone.Load() {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []BackendStatus
	for _, g := range p.gone {
		st := statusLocked(g.b)
		st.KeysUntil = g.keyUntil
		out = append(out, st)
	}
	return out
}

// statusLocked snapshots b; its pool's mu is held.
func statusLocked(b *Backend) BackendStatus {
	var local [numLocalReasons]uint64
	for _, r := range LocalReasons {
		local[r] = b.local[r].Load()
	}
	return BackendStatus{
		ID:                b.id,
		LocalFailures:     local,
		Address:           b.addr,
		Weight:            b.weight,
		Backup:            b.backup,
		AdminState:        b.AdminState(),
		Healthy:           b.healthy.Load(),
		Active:            b.live.active.Load(),
		MaxConnections:    int(b.maxConns),
		Dials:             b.dials.Load(),
		Failures:          b.failures.Load(),
		LastCheckError:    b.lastCheckErr,
		LastCheckDuration: b.lastCheckDur,

		OperatorState:           b.opAdmin,
		EffectiveMaxConnections: int(b.capConns.Load()),
		Agent:                   agentStatusLocked(b),
	}
}

// Find returns the backend whose id (or, failing that, address) is key:
// one of the current set (removed false), else one that discovery removed
// and that is in its key window or whose connections still drain (removed
// true); nil if none.
func (p *Pool) Find(key string) (b *Backend, removed bool) {
	list := p.backends()
	for _, b := range list {
		if b.id == key {
			return b, false
		}
	}
	for _, b := range list {
		if b.addr == key {
			return b, false
		}
	}
	gone := p.draining()
	for _, b := range gone {
		if b.id == key {
			return b, true
		}
	}
	for _, b := range gone {
		if b.addr == key {
			return b, true
		}
	}
	return nil, false
}

// Adopt copies, for each backend of p whose address is also in old, the
// health state, health and passive streaks, admin state, slow-start start,
// round robin's place and the Dials/Failures counters, so that a config
// reload neither resets health nor makes metrics counters restart. The
// connections in flight are shared, not copied: leases from old release
// into the same count, so MaxConnections and least_conn see the players
// connected before the reload, and CloseConnections on p reaches them. When
// both pools discover from the same source, p first takes over old's
// discovered backends (then carried over by address like the others) and
// its discovery counters; p looks the backends up again at Start. The
// backends discovery removed from old and that still drain are handed on
// to p with what is left of their key window and DrainTimeout, whatever
// p's source (one in its key window as a Backend of p's own, with the same
// connections, checked by p after Start). Call it on a new pool before Start and before
// it serves. A pending MaintCloseAfter timer is not carried over; a backend
// adopted in Maint gets a fresh one.
func (p *Pool) Adopt(old *Pool) {
	if old == nil || old == p {
		return
	}
	p.mu.Lock()
	p.adoptDiscoveredLocked(old)
	p.mu.Unlock()

	snaps := make(map[string]backendState, len(old.backends()))
	old.mu.Lock()
	for _, b := range old.backends() {
		snaps[b.addr] = old.captureLocked(b)
	}
	old.mu.Unlock()

	var maint []string
	p.mu.Lock()
	for _, b := range p.backends() {
		s, ok := snaps[b.addr]
		if !ok {
			continue
		}
		p.restoreLocked(b, s)
		if s.admin == Maint {
			maint = append(maint, b.addr)
		}
	}
	p.recountLocked()
	p.refreshReviveLocked()
	p.mu.Unlock()
	for _, addr := range maint {
		_ = p.SetState(addr, Maint) // arms MaintCloseAfter
	}
	p.adoptJoins(old)
}

// draining returns the backends discovery removed that are in their key
// window or whose connections may still drain.
func (p *Pool) draining() []*Backend {
	if p.disc == nil && !p.hadGone.Load() {
		return nil // the common case: no lock
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Backend, len(p.gone))
	for i, g := range p.gone {
		out[i] = g.b
	}
	return out
}
