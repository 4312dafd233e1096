package balancer

import (
	"context"
	"fmt"
	"time"
)

// Second chance (issue 12, part 7; GLB Director's idea for flows): when a
// backend joins a Hash pool, rendezvous hashing gives it about 1/n of the
// keys, and a room running under one of those keys on its previous owner
// would be split: players connected before stay there, new ones reach the
// new owner. With PoolConfig.SecondChanceStatus set, the caller (l7, for a
// WebSocket upgrade) sends the upgrade to the new owner as usual; when that
// backend joined within SecondChanceWindow and answers the status ("unknown
// room"), the caller asks DialPrevious for the key's owner as if the
// backends that joined in the window were not there, and uses it if it
// accepts the upgrade. Every instance sees the same joins (within a
// lookup), so all of them find the same previous owner.

// DefaultSecondChanceWindow is how long a joined backend's keys get a
// second chance on their previous owner, if PoolConfig.SecondChanceWindow
// is zero.
const DefaultSecondChanceWindow = 30 * time.Minute

// SecondChanceStatus returns the pool's "unknown room" status, 0 when
// second chance is off.
func (p *Pool) SecondChanceStatus() int { return p.scStatus }

// JoinedRecently reports whether b joined the pool (discovery, or a reload
// that added it) within the second-chance window. Backends present when
// the pool was first built never count as joined. It is false when second
// chance is off.
func (p *Pool) JoinedRecently(b *Backend) bool {
	if p.scStatus == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.joined[b.id]
	return ok && time.Since(at) < p.scWindow
}

// RecentJoins reports whether a backend joined the pool within the
// second-chance window; false when second chance is off.
func (p *Pool) RecentJoins() bool {
	if p.scStatus == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, at := range p.joined {
		if time.Since(at) < p.scWindow {
			return true
		}
	}
	return false
}

// noteJoinedLocked records that b joined the running pool at now, and
// forgets joins older than the window. p.mu is held.
func (p *Pool) noteJoinedLocked(b *Backend, now time.Time) {
	if p.scStatus == 0 {
		return
	}
	if p.joined == nil {
		p.joined = map[string]time.Time{}
	}
	for id, at := range p.joined {
		if now.Sub(at) >= p.scWindow {
			delete(p.joined, id)
		}
	}
	p.joined[b.id] = now
}

// adoptJoins carries old's recent joins over to p (a reload) and records
// the backends p has and old did not have (by id) as joining now.
func (p *Pool) adoptJoins(old *Pool) {
	if p.scStatus == 0 {
		return
	}
	old.mu.Lock()
	had := map[string]bool{}
	for _, b := range old.backends() {
		had[b.id] = true
	}
	prev := make(map[string]time.Time, len(old.joined))
	for id, at := range old.joined {
		prev[id] = at
	}
	old.mu.Unlock()
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends() {
		if at, ok := prev[b.id]; ok {
			if p.joined == nil {
				p.joined = map[string]time.Time{}
			}
			p.joined[b.id] = at
		} else if !had[b.id] {
			p.noteJoinedLocked(b, now)
		}
	}
}

// ErrNoPreviousOwner is returned by DialPrevious when no backend joined
// within the window, or none of the others may take the request.
var ErrNoPreviousOwner error = &sentinel{"balancer: no previous owner", ErrNoBackend}

// DialPrevious dials as Dial does, as if the backends that joined within
// the second-chance window were not in the pool: for a keyed request, the
// key's owner before they joined (or its next choice, as Dial retries).
func (p *Pool) DialPrevious(ctx context.Context, req DialRequest) (*Lease, error) {
	payload, err := buildPayload(p.proxy, &req)
	if err != nil {
		return nil, fmt.Errorf("balancer: pool %q: %w", p.name, err)
	}
	var ch Chooser
	p.startWalk(&ch, &req)
	joined := 0
	if p.scStatus != 0 {
		now := time.Now()
		p.mu.Lock()
		for i, b := range ch.set.list {
			if at, ok := p.joined[b.id]; ok && now.Sub(at) < p.scWindow {
				ch.st.add(i) // as if tried: never picked
				joined++
			}
		}
		p.mu.Unlock()
	}
	if joined == 0 || joined == len(ch.set.list) {
		return nil, fmt.Errorf("balancer: pool %q: %w", p.name, ErrNoPreviousOwner)
	}
	return p.dialWalk(ctx, &ch, &req, payload)
}
