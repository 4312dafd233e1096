package balancer

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// Discoverer finds backends for a pool while it runs (issue 12, part 3):
// package balancer/discover implements it over DNS SRV and A/AAAA records.
type Discoverer interface {
	// Discover returns the backends found now, and the time to live of the
	// answer (the shortest of the records used; negative when unknown).
	// An error, or no backend, leaves the pool's backends as they are: a
	// pool is never emptied because discovery failed.
	Discover(ctx context.Context) ([]BackendConfig, time.Duration, error)
	// String names the source in events and errors, e.g.
	// "srv:_game._tcp.rooms.default.svc.cluster.local". Pool.Adopt takes
	// the discovered backends over only from a pool with the same source.
	String() string
}

// Discovery defaults: resolve every 5 s, never sooner than 1 s after the
// last lookup however short the records' TTL, and give one lookup (all its
// queries) at most 10 s.
const (
	DefaultResolveInterval = 5 * time.Second
	MinResolveDelay        = time.Second
	discoverTimeout        = 10 * time.Second
)

// RemovedKeyWindow is how long a backend discovery removed keeps its keys
// when the pool has no DrainTimeout (its connections are then kept until
// they end): sluice's default drain_timeout.
const RemovedKeyWindow = 60 * time.Second

// EventKind says what an Event reports.
type EventKind uint8

const (
	// EventHealth is a health transition of Backend. The zero value.
	EventHealth EventKind = iota
	// EventAdded: discovery added Backend (its id); Healthy is the state
	// it starts in (DOWN until it passes the active checks, when they run
	// and the pool already had discovered backends).
	EventAdded
	// EventRemoved: discovery removed Backend; it takes no unkeyed new
	// players, keeps its keys for its key window (see goneBackend), and
	// its connections drain. Healthy is false.
	EventRemoved
	// EventDiscoveryFailed: a lookup failed or found nothing, after one
	// that succeeded (or at the first lookup); the pool keeps its last set.
	// Backend is the source (Discoverer.String); Healthy is false. Further
	// failures are only counted (Pool.Discovery), until EventDiscoveryOK.
	EventDiscoveryFailed
	// EventDiscoveryOK: a lookup succeeded again after EventDiscoveryFailed.
	// Backend is the source; Healthy is true.
	EventDiscoveryOK
	// EventAgent: Backend's (its id) agent changed its admin state or
	// answers again after EventAgentError; Reason has the answer. Healthy
	// is the backend's health state. An agent's down or up that changes the
	// health state is an EventHealth.
	EventAgent
	// EventAgentError: Backend's agent could not be reached or gave an
	// answer that was ignored (see AgentErrorReason); nothing changed.
	// Reported once per streak of the same error. Healthy is the backend's
	// health state.
	EventAgentError
)

// String names the kind for logs.
func (k EventKind) String() string {
	switch k {
	case EventHealth:
		return "health"
	case EventAdded:
		return "added"
	case EventRemoved:
		return "removed"
	case EventDiscoveryFailed:
		return "discovery_failed"
	case EventDiscoveryOK:
		return "discovery_ok"
	case EventAgent:
		return "agent"
	case EventAgentError:
		return "agent_error"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// discovery is a pool's dynamic part: the source and the last answer
// applied. The backends it removed drain in Pool.gone.
type discovery struct {
	src      Discoverer
	interval time.Duration
	minDelay time.Duration // MinResolveDelay; tests shorten it
	stats    *discoveryStats

	// Guarded by the pool's mu.
	found   []BackendConfig // the last answer applied, sorted by id
	seeded  bool            // an answer was applied: later additions are checked before use
	failing bool            // the last lookup failed or was empty
	lastTTL time.Duration   // of the last answer applied; negative: unknown
}

// discoveryStats are the counters behind Pool.Discovery; a reload carries
// them over (Adopt), so the metrics built on them do not restart.
type discoveryStats struct {
	lookups  atomic.Uint64 // lookups made
	failures atomic.Uint64 // lookups that returned an error
	empty    atomic.Uint64 // lookups that found no backend
	changes  atomic.Uint64 // answers that changed the set
	lastOK   atomic.Int64  // unix ns of the last successful lookup; 0 if none
	lastErr  atomic.Pointer[string]
}

// goneBackend is a backend discovery removed. It takes Drain at once (no
// unkeyed new player) and, for its key window, stays in the set after the
// pool's backends (backendSet.current): the keys that map to it keep
// reaching it (keyUsable) while it is healthy and not full, its active and
// agent checks go on (DOWN or maint move its keys at once). The window is
// measured alike by every instance that saw the same DNS change, from the
// removal to removal + DrainTimeout (RemovedKeyWindow without one), so
// they all place its keys alike, within a resolve interval. Then it
// leaves the set, its checks stop, and its connections are closed (at
// deadline: the same instant) or, without a DrainTimeout, kept until they
// end; it is forgotten once it has none.
type goneBackend struct {
	b        *Backend
	admin    AdminState // before the removal: restored if it comes back
	keyUntil time.Time  // end of its key window, while in the set; zero once it left
	deadline time.Time  // its connections are closed then; zero: no forced close
	// timer fires at keyUntil (or, once out of the set, at deadline:
	// after a reload); nil when none is pending.
	timer *time.Timer
}

// DiscoveryStatus is a snapshot of a pool's discovery, for the admin API
// and metrics.
type DiscoveryStatus struct {
	Source   string // Discoverer.String
	Lookups  uint64 // lookups made
	Failures uint64 // lookups that failed: the last set was kept
	Empty    uint64 // lookups that found no backend: the last set was kept
	Changes  uint64 // answers that added, removed or changed a backend
	// Backends is the number of discovered backends in the set; Draining
	// the number removed whose connections have not ended yet.
	Backends, Draining int
	// Failing is true while the last lookup failed or found nothing.
	Failing bool
	// LastError is the error of the last failed lookup; "" if none.
	LastError string
	// LastSuccess is when the last lookup succeeded; zero if none did.
	LastSuccess time.Time
}

// Discovery returns the state of the pool's discovery; ok is false when the
// pool has no Discover source.
func (p *Pool) Discovery() (st DiscoveryStatus, ok bool) {
	d := p.disc
	if d == nil {
		return st, false
	}
	st = DiscoveryStatus{
		Source:   d.src.String(),
		Lookups:  d.stats.lookups.Load(),
		Failures: d.stats.failures.Load(),
		Empty:    d.stats.empty.Load(),
		Changes:  d.stats.changes.Load(),
	}
	if e := d.stats.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	if ns := d.stats.lastOK.Load(); ns != 0 {
		st.LastSuccess = time.Unix(0, ns)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends() {
		if b.discovered {
			st.Backends++
		}
	}
	for _, g := range p.gone {
		if g.b.Active() > 0 {
			st.Draining++
		}
	}
	st.Failing = d.failing
	return st, true
}

// discoverLoop looks the backends up at once, then again after each
// delay (next), until ctx ends.
func (p *Pool) discoverLoop(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.Rediscover(ctx)
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		ttl := p.disc.lastTTL
		p.mu.Unlock()
		t.Reset(p.disc.next(ttl))
	}
}

// next is the delay until the next lookup: ResolveInterval, or the answer's
// TTL when that is shorter, but never below minDelay (records with TTL 0
// would otherwise be asked for in a busy loop).
func (d *discovery) next(ttl time.Duration) time.Duration {
	if ttl >= 0 && ttl < d.interval {
		return max(ttl, min(d.minDelay, d.interval))
	}
	return d.interval
}

// Rediscover looks the pool's backends up now and applies the answer, as
// the discovery goroutine does every ResolveInterval; it does nothing
// without a Discover source or after Close. A failed or empty lookup keeps
// the set and is counted (Discovery) and reported (OnChange,
// EventDiscoveryFailed).
func (p *Pool) Rediscover(ctx context.Context) {
	d := p.disc
	if d == nil {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, discoverTimeout)
	found, ttl, err := d.src.Discover(lctx)
	cancel()
	if ctx.Err() != nil {
		return // closing: the pool does not care any more
	}
	d.stats.lookups.Add(1)
	found = normalize(found)
	var evs []Event
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	now := time.Now()
	switch {
	case err != nil || len(found) == 0:
		reason := "no backend found"
		if err != nil {
			reason = err.Error()
			d.stats.failures.Add(1)
			d.stats.lastErr.Store(&reason)
		} else {
			d.stats.empty.Add(1)
		}
		if !d.failing {
			d.failing = true
			evs = append(evs, Event{Pool: p.name, Backend: d.src.String(), Kind: EventDiscoveryFailed, Time: now,
				Reason: fmt.Sprintf("%s; keeping the last %d discovered backends", reason, len(d.found))})
		}
	default:
		d.stats.lastOK.Store(now.UnixNano())
		d.lastTTL = ttl
		if d.failing {
			d.failing = false
			evs = append(evs, Event{Pool: p.name, Backend: d.src.String(), Kind: EventDiscoveryOK, Healthy: true, Time: now,
				Reason: fmt.Sprintf("lookup succeeded again: %d backends", len(found))})
		}
		evs = append(evs, p.applyLocked(found, now)...)
	}
	p.mu.Unlock()
	for _, ev := range evs {
		if p.onChange != nil {
			p.onChange(ev)
		}
	}
}

// normalize gives each config its id (the address by default) and sorts by
// id, then address: the order does not depend on the answer's, so every
// sluice instance builds the same set.
func normalize(found []BackendConfig) []BackendConfig {
	out := make([]BackendConfig, 0, len(found))
	for _, bc := range found {
		if bc.Address == "" || bc.Weight < 0 || bc.MaxConnections < 0 {
			continue
		}
		bc.ID = cmp.Or(bc.ID, bc.Address)
		out = append(out, bc)
	}
	slices.SortFunc(out, func(a, b BackendConfig) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Address, b.Address))
	})
	return out
}

// sameConfig reports whether b was built from bc.
func sameConfig(b *Backend, bc BackendConfig) bool {
	return b.id == bc.ID && b.addr == bc.Address && b.weight == max(bc.Weight, 1) &&
		b.maxConns == int64(max(bc.MaxConnections, 0)) && b.backup == bc.Backup
}

// applyLocked makes the pool's set the configured backends plus found (a
// normalized, non-empty answer) and returns the events to emit after
// unlocking. A discovered backend found again by id and address is kept as
// it is (health, counters, slots, place in the rotation); one whose weight,
// backup flag or slots changed is rebuilt with its state carried over; a
// new one starts checked (DOWN until it passes Rise checks, the first at
// once) when the pool runs active checks and already had discovered
// backends; one no longer found leaves the set and drains (see retireLocked).
// A found backend whose id or address is a configured backend's, or one
// found before it, is ignored. p.mu is held.
func (p *Pool) applyLocked(found []BackendConfig, now time.Time) []Event {
	d := p.disc
	src := d.src.String()
	var list []*Backend
	taken := map[string]bool{}
	prev := map[string]*Backend{} // discovered, by address
	for _, b := range p.backends() {
		if b.discovered {
			prev[b.addr] = b
			continue
		}
		list = append(list, b)
		taken[b.id], taken[b.addr] = true, true
	}
	var evs []Event
	kept := map[*Backend]bool{}
	changed := false
	for _, bc := range found {
		if taken[bc.ID] || taken[bc.Address] {
			continue
		}
		taken[bc.ID], taken[bc.Address] = true, true
		old := prev[bc.Address]
		if old != nil && old.id != bc.ID {
			old = nil // the address now names another server: that one drains
		}
		if old == nil {
			old = p.reclaimLocked(bc)
			if old != nil {
				changed = true
			}
		}
		if old != nil && sameConfig(old, bc) {
			kept[old] = true
			list = append(list, old)
			continue
		}
		changed = true
		b := newBackend(bc)
		b.discovered = true
		b.cookie = stickyValue(p.name, b.id)
		if old != nil {
			// Same server, new weight, backup flag or slots: a new Backend
			// (those fields are read without locks) with the old one's state.
			kept[old] = true
			p.restoreLocked(b, p.captureLocked(old))
			p.stopCheckLocked(old)
			p.stopMaintLocked(old)
			if b.opAdmin == Maint && p.maintClose > 0 && !p.closed {
				p.wg.Add(1)
				b.maintTimer = time.AfterFunc(p.maintClose, func() { p.maintExpired(b) })
			}
			p.startCheckLocked(b, -1)
			list = append(list, b)
			continue
		}
		reason := fmt.Sprintf("added by %s: address %s, weight %d", src, b.addr, b.weight)
		if b.backup {
			reason += ", backup"
		}
		if d.seeded && p.checking {
			// A server that has just registered may not listen yet: it
			// takes players once its checks pass, not before.
			b.checkUp = false
			b.healthy.Store(false)
			reason += fmt.Sprintf("; DOWN until %d passing %s checks", p.health.Rise, p.health.Check)
			p.startCheckLocked(b, 0)
		} else {
			p.startCheckLocked(b, -1)
		}
		if d.seeded {
			p.noteJoinedLocked(b, now) // its keys get a second chance on their previous owner
		}
		evs = append(evs, Event{Pool: p.name, Backend: b.id, Kind: EventAdded, Healthy: b.Healthy(), Reason: reason, Time: now})
		list = append(list, b)
	}
	var removed []*Backend
	for _, b := range p.backends() {
		if b.discovered && !kept[b] {
			removed = append(removed, b)
		}
	}
	// The new set first, then Drain for the removed: a Dial still holding
	// the old set that finds nothing usable in it moves to the new one
	// (see Dial); in the other order it could find both empty. The removed
	// are in both sets, in the new one for their key window (after the
	// pool's backends, with those removed before whose window goes on), so
	// a keyed Dial finds them in either.
	p.set.Store(newBackendSet(list, append(p.inWindowLocked(), removed...), p.maxAttempts))
	for _, b := range removed {
		evs = append(evs, p.retireLocked(b, now))
	}
	p.recountLocked()
	p.refreshReviveLocked()
	p.pruneGoneLocked()
	d.found, d.seeded = found, true
	if changed || len(removed) > 0 {
		d.stats.changes.Add(1)
	}
	return evs
}

// retireLocked takes a backend removed from the pool's backends out of
// service for unkeyed players: Drain (a Dial still holding the previous
// set skips it; an operator's Maint stays), its key window and the close
// of its connections armed. It must already be in the set's removed part
// (inWindowLocked), its checks running. p.mu is held.
func (p *Pool) retireLocked(b *Backend, now time.Time) Event {
	g := &goneBackend{b: b, admin: b.opAdmin}
	if b.opAdmin < Drain {
		p.setOperatorLocked(b, Drain)
		p.stopMaintLocked(b)
	}
	window := p.drainTimeout
	if window <= 0 {
		window = RemovedKeyWindow
	}
	g.keyUntil = now.Add(window)
	reason := fmt.Sprintf("removed by %s: no new unkeyed players; its keys stay on it for %v unless it goes DOWN; %d live connections ",
		p.disc.src.String(), window, b.Active())
	if p.drainTimeout > 0 {
		g.deadline = g.keyUntil
		reason += fmt.Sprintf("closed after %v unless they end before", p.drainTimeout)
	} else {
		reason += "kept until they end"
	}
	p.armGoneLocked(g)
	p.gone = append(p.gone, g)
	p.hadGone.Store(true)
	return Event{Pool: p.name, Backend: b.id, Kind: EventRemoved, Reason: reason, Time: now}
}

// inWindowLocked returns the removed backends in their key window, in the
// order they were removed. p.mu is held.
func (p *Pool) inWindowLocked() []*Backend {
	var out []*Backend
	for _, g := range p.gone {
		if !g.keyUntil.IsZero() {
			out = append(out, g.b)
		}
	}
	return out
}

// storeSetLocked makes the set list, then the removed backends in their
// key window, and recounts. p.mu is held.
func (p *Pool) storeSetLocked(list []*Backend) {
	p.set.Store(newBackendSet(list, p.inWindowLocked(), p.maxAttempts))
	p.recountLocked()
	p.refreshReviveLocked()
}

// armGoneLocked schedules the end of g's key window, or, once it left the
// set, the close of its connections at its deadline. p.mu is held.
func (p *Pool) armGoneLocked(g *goneBackend) {
	at := g.keyUntil
	if at.IsZero() {
		at = g.deadline
	}
	if p.closed || at.IsZero() {
		return
	}
	p.wg.Add(1)
	g.timer = time.AfterFunc(time.Until(at), func() { p.drainExpired(g) })
}

// drainExpired is the timer body of a removed backend: its key window
// ends (it leaves the set, its checks stop) and, at its deadline, its
// connections are closed.
func (p *Pool) drainExpired(g *goneBackend) {
	defer p.wg.Done()
	p.mu.Lock()
	if g.timer == nil { // reclaimed or handed over meanwhile
		p.mu.Unlock()
		return
	}
	g.timer = nil
	if !g.keyUntil.IsZero() {
		g.keyUntil = time.Time{}
		p.stopCheckLocked(g.b)
		p.stopMaintLocked(g.b)
		p.storeSetLocked(p.backends())
	}
	closing := !g.deadline.IsZero()
	p.pruneGoneLocked()
	p.mu.Unlock()
	if closing {
		g.b.closeLeases()
	}
}

// stopGoneLocked cancels g's pending close. p.mu is held.
func (p *Pool) stopGoneLocked(g *goneBackend) {
	if g.timer != nil {
		if g.timer.Stop() {
			p.wg.Done()
		}
		g.timer = nil
	}
}

// reclaimLocked takes back a removed backend that is found again (same id
// and address) in its key window or before its connections ended: its
// drain is cancelled, its admin state restored, its checks restarted (in
// its window they never stopped). It returns nil if there is none; the
// caller puts it back among the pool's backends. p.mu is held.
func (p *Pool) reclaimLocked(bc BackendConfig) *Backend {
	for i, g := range p.gone {
		if g.b.id != bc.ID || g.b.addr != bc.Address {
			continue
		}
		p.stopGoneLocked(g)
		p.gone = slices.Delete(p.gone, i, i+1)
		p.setOperatorLocked(g.b, g.admin)
		p.startCheckLocked(g.b, 0)
		return g.b
	}
	return nil
}

// pruneGoneLocked forgets removed backends past their key window that have
// no connection left (a pending close goes with them). p.mu is held.
func (p *Pool) pruneGoneLocked() {
	p.gone = slices.DeleteFunc(p.gone, func(g *goneBackend) bool {
		if g.keyUntil.IsZero() && g.b.Active() == 0 {
			p.stopGoneLocked(g)
			return true
		}
		return false
	})
}

// adoptDiscoveredLocked takes over old's removed backends (with what is
// left of their key window and drain), and, when both pools discover from
// the same source, old's discovered backends (its last answer, whose state
// Adopt then carries over by address) and its counters. p.mu is held, not
// old.mu.
func (p *Pool) adoptDiscoveredLocked(old *Pool) {
	old.mu.Lock()
	gone := make([]*goneBackend, len(old.gone))
	for i, g := range old.gone {
		old.stopGoneLocked(g)
		ng := *g
		if !g.keyUntil.IsZero() {
			// In its key window it is in old's set, checked by old's
			// goroutines: p gets its own Backend with its state and
			// connections (as Adopt does for the others), checked by p's.
			ng.b = p.successorLocked(old, g.b)
		}
		gone[i] = &ng
	}
	old.gone = nil
	var found []BackendConfig
	var seeded bool
	var ttl time.Duration
	same := p.disc != nil && old.disc != nil && p.disc.src.String() == old.disc.src.String()
	if same {
		found, seeded, ttl = old.disc.found, old.disc.seeded, old.disc.lastTTL
	}
	old.mu.Unlock()
	for _, g := range gone {
		p.armGoneLocked(g) // the rest of its window and drain, from this pool
		p.gone = append(p.gone, g)
		p.hadGone.Store(true)
	}
	if !same {
		p.storeSetLocked(p.backends())
		return
	}
	p.disc.stats = old.disc.stats
	if len(found) > 0 {
		p.applyLocked(found, time.Now()) // no event: nothing changed for the fleet
	} else {
		p.storeSetLocked(p.backends())
	}
	p.disc.seeded, p.disc.lastTTL = seeded, ttl
}

// successorLocked builds p's Backend for old's b (a removed one in its key
// window): same config, old's state, the same connections. p.mu and old.mu
// are held.
func (p *Pool) successorLocked(old *Pool, b *Backend) *Backend {
	nb := newBackend(BackendConfig{ID: b.id, Address: b.addr, Weight: b.weight, MaxConnections: int(b.maxConns), Backup: b.backup})
	nb.discovered = b.discovered
	nb.cookie = stickyValue(p.name, nb.id)
	p.restoreLocked(nb, old.captureLocked(b))
	return nb
}
