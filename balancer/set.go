package balancer

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"
)

// backendSet is one immutable snapshot of a pool's backends. A pick, a
// Dial (all its attempts) and a Chooser (all its Nexts) each load the
// pool's set once and work from it to the end, so the indices in their
// pickState always name the backends they meant, while discovery swaps in
// a new set (Pool.set, an atomic.Pointer) without a lock on the pick path.
// The per-backend state the picks read (health, admin state, active
// connections, round robin's current weight) lives on the *Backend, which
// consecutive sets share: a backend in both keeps all of it.
//
// A backend discovery removed stays in the set for its key window (see
// goneBackend): after the pool's backends, draining, so that keyed picks
// still reach it and unkeyed ones do not.
type backendSet struct {
	// list is what the picks walk: the pool's backends (list[:current]),
	// then the removed ones in their key window.
	list    []*Backend
	current int
	// weighted: the weights differ, rendezvous uses Schindler's scores.
	// Equal weights rank backends in the same order either way (-1/ln(x)
	// grows with x), so a swap that flips it moves no key.
	weighted bool
	// maxAttempts is PoolConfig.MaxAttempts capped at len(list).
	maxAttempts int
}

func newBackendSet(list, removed []*Backend, maxAttempts int) *backendSet {
	n := len(list)
	if len(removed) > 0 {
		list = append(slices.Clip(list), removed...)
	}
	s := &backendSet{list: list, current: n, maxAttempts: min(maxAttempts, len(list))}
	for _, b := range list {
		s.weighted = s.weighted || b.weight != list[0].weight
	}
	return s
}

// backends returns the pool's backends, without the removed ones still in
// their key window. The slice is shared: do not modify it.
func (p *Pool) backends() []*Backend {
	s := p.set.Load()
	return s.list[:s.current]
}

// inSet returns every backend the picks may reach: the pool's, then the
// removed ones in their key window. The slice is shared: do not modify it.
func (p *Pool) inSet() []*Backend { return p.set.Load().list }

// backendState is what a Backend carries over to its successor: the
// Backend of the same address in the next pool (Pool.Adopt, a reload) or in
// the next set when its weight, backup flag or slots changed (discovery).
// The connections in flight are shared, not copied.
type backendState struct {
	healthy              bool // the checks' verdict (checkUp); the agent's is in agent
	admin                AdminState
	upSince              int64
	consecFails          int32
	okStreak, failStreak int
	downUntil            int64
	lastErr              string
	lastDur              time.Duration
	dials, failures      uint64
	rrWeight             int64
	live                 *liveState
	local                *[numLocalReasons]atomic.Uint64
	agent                *agentState // nil: no agent state
}

// captureLocked reads b's state; p is b's pool and p.mu is held.
func (p *Pool) captureLocked(b *Backend) backendState {
	s := backendState{
		healthy: b.checkUp, admin: b.opAdmin, upSince: b.upSince.Load(),
		consecFails: b.consecFails.Load(), okStreak: b.okStreak, failStreak: b.failStreak,
		downUntil: b.downUntil, lastErr: b.lastCheckErr, lastDur: b.lastCheckDur,
		dials: b.dials.Load(), failures: b.failures.Load(),
		live: b.live, local: b.local, agent: snapshotAgentLocked(b),
	}
	if p.rr != nil { // picks write it under rr.mu, not mu
		p.rr.mu.Lock()
		s.rrWeight = b.rrWeight
		p.rr.mu.Unlock()
	}
	return s
}

// restoreLocked gives b the state s; p.mu is held and b is in no set yet
// (so no pick reads rrWeight concurrently: storing the set publishes it).
func (p *Pool) restoreLocked(b *Backend, s backendState) {
	b.checkUp = s.healthy
	b.opAdmin = s.admin
	p.restoreAgentLocked(b, s.agent) // health and admin state in force, with the agent's
	b.upSince.Store(s.upSince)
	b.consecFails.Store(s.consecFails)
	b.okStreak, b.failStreak = s.okStreak, s.failStreak
	b.downUntil = s.downUntil
	b.lastCheckErr, b.lastCheckDur = s.lastErr, s.lastDur
	b.dials.Store(s.dials)
	b.failures.Store(s.failures)
	b.rrWeight = s.rrWeight
	b.live = s.live // connections from before keep counting here
	b.local = s.local
	if s.upSince != 0 && p.slowStart > 0 {
		p.slowUntil.Store(max(p.slowUntil.Load(), s.upSince+int64(p.slowStart)))
	}
}

// startCheckLocked starts b's active-check goroutine when checks run, and
// its agent's when the pool has an agent (startAgentLocked); the first
// check comes after first, or at a random point of the first interval
// (HAProxy spread-checks) when first is negative. p.mu is held.
func (p *Pool) startCheckLocked(b *Backend, first time.Duration) {
	p.startAgentLocked(b, first)
	if !p.checking || b.stopCheck != nil {
		return
	}
	if first < 0 {
		first = time.Duration(rand.Int64N(int64(p.health.Interval)) + 1)
	}
	ctx, cancel := context.WithCancel(p.ctx)
	b.stopCheck = cancel
	p.wg.Add(1)
	go p.checkLoop(ctx, b, first)
}

// stopCheckLocked ends b's active checks and agent checks (the goroutines
// exit at their next wake-up; Close waits for them). p.mu is held.
func (p *Pool) stopCheckLocked(b *Backend) {
	p.stopAgentLocked(b)
	if b.stopCheck != nil {
		b.stopCheck()
		b.stopCheck = nil
	}
}

// stopMaintLocked cancels b's pending MaintCloseAfter close. p.mu is held.
func (p *Pool) stopMaintLocked(b *Backend) {
	if b.maintTimer != nil {
		if b.maintTimer.Stop() {
			p.wg.Done()
		}
		b.maintTimer = nil
	}
}
