package balancer

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
)

// Algorithm is a pool's balance setting.
type Algorithm uint8

const (
	// RoundRobin is nginx's smooth weighted round robin: over any run of
	// sum(weights) picks each backend gets exactly its weight, interleaved
	// rather than in bursts. The zero value.
	RoundRobin Algorithm = iota
	// LeastConn picks the backend with the fewest active connections per
	// unit of weight; ties are broken at random.
	LeastConn
	// RandomTwo is the power of two choices: two distinct random backends,
	// the one with fewer active connections per unit of weight wins.
	RandomTwo
	// Hash sends equal DialRequest.HashKey values to the same backend
	// (weighted rendezvous hashing, optionally with bounded loads); a request
	// without a key falls back to LeastConn.
	Hash
)

// ParseAlgorithm parses the config value of balance: "round_robin" (also
// ""), "least_conn", "random_two" or "hash".
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "", "round_robin":
		return RoundRobin, nil
	case "least_conn":
		return LeastConn, nil
	case "random_two":
		return RandomTwo, nil
	case "hash":
		return Hash, nil
	}
	return RoundRobin, fmt.Errorf("balancer: unknown balance %q (want round_robin, least_conn, random_two or hash)", s)
}

// String returns the config spelling.
func (a Algorithm) String() string {
	switch a {
	case RoundRobin:
		return "round_robin"
	case LeastConn:
		return "least_conn"
	case RandomTwo:
		return "random_two"
	case Hash:
		return "hash"
	}
	return fmt.Sprintf("Algorithm(%d)", uint8(a))
}

// Hash key kinds. The caller extracts the value (DialRequest.HashKey); the
// pool only carries the spec so callers know what to extract.
const (
	HashClientIP   = "client_ip"   // the client's IP, without port
	HashSNI        = "sni"         // the TLS server name
	HashQuery      = "query"       // l7: the query parameter Name
	HashHeader     = "header"      // l7: the request header Name (canonical form)
	HashCookie     = "cookie"      // l7: the cookie Name
	HashPathPrefix = "path_prefix" // l7: the matched location's path prefix
)

// HashKey is a parsed hash_key spec.
type HashKey struct {
	Kind string // one of the Hash* kinds; "" when unset
	Name string // for query, header and cookie; "" otherwise
}

// ParseHashKey parses client_ip | sni | path_prefix | query:NAME |
// header:NAME | cookie:NAME. Header names are canonicalized
// (textproto.CanonicalMIMEHeaderKey).
func ParseHashKey(s string) (HashKey, error) {
	kind, name, hasName := strings.Cut(s, ":")
	switch kind {
	case HashClientIP, HashSNI, HashPathPrefix:
		if !hasName {
			return HashKey{Kind: kind}, nil
		}
	case HashQuery, HashCookie, HashHeader:
		if hasName && name != "" && !strings.ContainsAny(name, " \t\r\n:") {
			if kind == HashHeader {
				name = textproto.CanonicalMIMEHeaderKey(name)
			}
			return HashKey{Kind: kind, Name: name}, nil
		}
		return HashKey{}, fmt.Errorf("balancer: hash key %q: %s needs a name (%s:NAME)", s, kind, kind)
	}
	return HashKey{}, fmt.Errorf("balancer: unknown hash key %q (want client_ip, sni, path_prefix, query:NAME, header:NAME or cookie:NAME)", s)
}

// String returns the spec ParseHashKey accepts.
func (k HashKey) String() string {
	if k.Name == "" {
		return k.Kind
	}
	return k.Kind + ":" + k.Name
}

// pick chooses the backend of one connect attempt: the index in s.list of
// a backend usable in v, never one already in st.tried, or -1 when none is
// left. s is the set the caller loaded once for all its attempts (the
// indices in st are into it). A switch rather than an interface: an
// interface call makes v and st escape to the heap, one allocation per
// pick. The pickers are safe for concurrent use and allocation-free; only
// smooth round robin takes a (short) mutex.
func (p *Pool) pick(s *backendSet, v *view, st *pickState, req *DialRequest) int {
	if req.Sticky != "" {
		if i := stickyPick(s, v, st, req.Sticky); i >= 0 {
			return i
		}
	}
	switch p.algo {
	case LeastConn:
		return leastConn{}.pick(p, s, v, st, req)
	case RandomTwo:
		return randomTwo{}.pick(p, s, v, st, req)
	case Hash:
		return p.hash.pick(p, s, v, st, req)
	}
	return p.rr.pick(p, s, v, st, req)
}

// pickState is what one Dial knows while it picks: the backends it already
// tried or found full, in order. It lives on the caller's stack: the first
// few fit in buf, and it holds no pointer into itself (which would move it
// to the heap).
type pickState struct {
	n    int
	buf  [6]int
	more []int // beyond len(buf)
}

func (st *pickState) reset() { st.n, st.more = 0, st.more[:0] }

func (st *pickState) add(i int) {
	if st.n < len(st.buf) {
		st.buf[st.n] = i
	} else {
		st.more = append(st.more, i)
	}
	st.n++
}

// has reports whether backend i was already tried. Linear: attempts are few.
func (st *pickState) has(i int) bool {
	for _, j := range st.buf[:min(st.n, len(st.buf))] {
		if j == i {
			return true
		}
	}
	for _, j := range st.more {
		if j == i {
			return true
		}
	}
	return false
}

// moveTo re-expresses st, indices into from, as indices into to (the
// backends of from that to still has stay tried) and returns to. It
// allocates, but runs only when a Dial outlived a set swap.
func (st *pickState) moveTo(from, to *backendSet) *backendSet {
	tried := make([]*Backend, 0, st.n)
	for _, i := range st.tried() {
		tried = append(tried, from.list[i])
	}
	st.reset()
	for _, b := range tried {
		if j := slices.Index(to.list, b); j >= 0 {
			st.add(j)
		}
	}
	return to
}

// tried returns the backends tried so far, in order (tests, messages).
func (st *pickState) tried() []int {
	return append(append([]int(nil), st.buf[:min(st.n, len(st.buf))]...), st.more...)
}

// Tiers of backends a pick may use; see Pool.view.
const (
	tierPrimary = iota // healthy ready primaries
	tierBackup         // healthy ready backups: no primary is healthy
	tierAll            // OnAllUnhealthy TryAll: every ready backend
	tierNone           // no backend: only keyed picks have one (keyTier)
)

// view is the pool state one pick works from, computed once per attempt.
type view struct {
	tier int
	// keyTier is the tier of keyed Hash picks, for which Drain counts as
	// Ready (see keyUsable): a pool whose primaries all drain keeps their
	// keys on them, while unkeyed players go to the backups.
	keyTier int
	now     int64 // unix ns while some backend is in slow start; 0 otherwise
}

// usable reports whether b may take a new connection in v: admitted and
// below MaxConnections.
func usable(b *Backend, v *view) bool { return admitted(b, v) && !b.full() }

// admitted reports whether b is ready and in v's tier.
func admitted(b *Backend, v *view) bool {
	return b.admin.Load() == uint32(Ready) && inTier(b, v.tier)
}

// keyUsable reports whether b may take a keyed Hash connection in v: ready
// or draining, in v's keyTier, below MaxConnections. Drain never moves a
// key (issue 12, part 7): a room running on a draining server stays
// reachable from every instance, while unkeyed players (usable) avoid it;
// Maint, DOWN and full move the key to its next backend in rendezvous order,
// which every instance seeing the same states computes alike.
func keyUsable(b *Backend, v *view) bool {
	return b.admin.Load() != uint32(Maint) && inTier(b, v.keyTier) && !b.full()
}

// inTier reports whether b belongs to tier, health included.
func inTier(b *Backend, tier int) bool {
	switch tier {
	case tierPrimary:
		return !b.backup && b.healthy.Load()
	case tierBackup:
		return b.backup && b.healthy.Load()
	case tierAll:
		return true
	}
	return false
}

// weightScale makes slow start's fractional weights integers.
const weightScale = 1000

// effWeight returns b's weight × weightScale, reduced during slow start:
// linear from 1/10 to full over p.slowStart after b came UP.
// The weight is the agent's when it reported one (Backend.effWeight).
func (p *Pool) effWeight(b *Backend, now int64) int64 {
	w := b.effWeight.Load()
	if now == 0 {
		return w
	}
	up := b.upSince.Load()
	if up == 0 || now-up >= int64(p.slowStart) {
		return w
	}
	frac := max((now-up)*weightScale/int64(p.slowStart), weightScale/10)
	return w * frac / weightScale
}

// smoothRR is nginx's smooth weighted round robin
// (ngx_http_upstream_get_peer): each usable backend's current weight grows by
// its effective weight, the largest wins and gives back the total. A short
// mutex guards the current weights (Backend.rrWeight, measured in
// BenchmarkPick); the loop reads only atomics. The weights live on the
// backends, so a set swap keeps every remaining backend's place, a new one
// joins at 0, and a pick still holding the previous set updates the same
// weights.
type smoothRR struct {
	mu sync.Mutex
}

func (r *smoothRR) pick(p *Pool, s *backendSet, v *view, st *pickState, _ *DialRequest) int {
	var best *Backend
	bi := -1
	var total int64
	r.mu.Lock()
	for i, b := range s.list {
		if st.has(i) || !usable(b, v) {
			continue
		}
		w := p.effWeight(b, v.now)
		b.rrWeight += w
		total += w
		if best == nil || b.rrWeight > best.rrWeight {
			best, bi = b, i
		}
	}
	if best != nil {
		best.rrWeight -= total
	}
	r.mu.Unlock()
	return bi
}

// lessLoaded reports whether active a over weight wa is strictly below b over
// wb, without division.
func lessLoaded(a, wa, b, wb int64) bool { return a*wb < b*wa }

// leastConn scans from a random start so ties spread without a shared
// counter (math/rand/v2's top-level source is per-thread).
type leastConn struct{}

func (leastConn) pick(p *Pool, s *backendSet, v *view, st *pickState, _ *DialRequest) int {
	n := len(s.list)
	if n == 0 {
		return -1
	}
	best := -1
	var bestA, bestW int64
	i := rand.IntN(n)
	for range n {
		if b := s.list[i]; !st.has(i) && usable(b, v) {
			a, w := b.live.active.Load(), p.effWeight(b, v.now)
			if best < 0 || lessLoaded(a, w, bestA, bestW) {
				best, bestA, bestW = i, a, w
			}
		}
		if i++; i == n {
			i = 0
		}
	}
	return best
}

// randomTwo takes the first usable backend at or after each of two random
// positions (distinct) and keeps the less loaded.
type randomTwo struct{}

func (randomTwo) pick(p *Pool, s *backendSet, v *view, st *pickState, _ *DialRequest) int {
	n := len(s.list)
	if n == 0 {
		return -1
	}
	first := nextUsable(s, v, st, rand.IntN(n), -1)
	if first < 0 {
		return -1
	}
	second := nextUsable(s, v, st, rand.IntN(n), first)
	if second < 0 {
		return first
	}
	a, b := s.list[first], s.list[second]
	aa, wa := a.live.active.Load(), p.effWeight(a, v.now)
	ab, wb := b.live.active.Load(), p.effWeight(b, v.now)
	if lessLoaded(ab, wb, aa, wa) || (!lessLoaded(aa, wa, ab, wb) && rand.Uint32()&1 == 0) {
		return second
	}
	return first
}

// nextUsable returns the first usable, untried backend at or after start
// (wrapping) other than skip, or -1.
func nextUsable(s *backendSet, v *view, st *pickState, start, skip int) int {
	n := len(s.list)
	i := start
	for range n {
		if i != skip && !st.has(i) && usable(s.list[i], v) {
			return i
		}
		if i++; i == n {
			i = 0
		}
	}
	return -1
}

// rendezvous is weighted rendezvous (highest random weight) hashing. Each
// key ranks all backends by score(key, backend); the key goes to the best
// usable one. Removing a backend moves only the keys it held (each to its
// own next choice), adding one takes only the keys it now wins, ~1/n of
// them, and "next candidate in the key's own preference order" (for
// retries, DOWN, full, or over the load bound) is simply the best remaining
// score: one O(n) pass, no table to rebuild on health changes. Chosen over
// Maglev (table rebuild per change, a few keys move between survivors) and a
// ring (needs ~100+ virtual nodes per backend for an even spread); see
// TestHashRemap and BenchmarkPick/hash for the measurements.
//
// Weighted scores are Schindler's -w/ln(u), u uniform in (0,1) from the
// top 53 bits of the hash: the backend with the highest score wins with
// probability w/sum(weights).
//
// With factor > 0 (consistent hashing with bounded loads, Mirrokni et al.
// 2016; HAProxy hash-balance-factor) a backend holding at least
// ceil(factor × (active+1) × weight/sum(weights)) connections of the usable
// set is passed over; with an agent, the loads and weights are the agents'
// (see bound: placement that N instances agree on).
//
// A set swap (discovery) moves only the keys of the backends it removes or
// adds: a score depends on the key and the backend alone (backendSet.weighted
// only picks the cheaper of two formulas that rank equal weights alike).
type rendezvous struct {
	factor   float64
	fallback leastConn
}

func (h *rendezvous) pick(p *Pool, s *backendSet, v *view, st *pickState, req *DialRequest) int {
	if !req.HasHashKey {
		return h.fallback.pick(p, s, v, st, req)
	}
	key := mix64(hashString(req.HashKey))

	var load float64 // factor × (load+1) / sum(weights), when bounded
	if h.factor > 0 {
		load = h.bound(p, s, v)
	}

	best, bestUnder := -1, -1
	var bestS, bestUnderS float64
	for i, b := range s.list {
		if st.has(i) || !keyUsable(b, v) {
			continue
		}
		u := mix64(key ^ b.hash)
		sc := float64(u >> 11) // 53 bits: exact in a float64
		if s.weighted {
			// -ln(x) >= 1-x, so w/(1-x) bounds the score from above: when
			// that cannot beat the current bests, skip the logarithm
			// (measured: 4.1 → 1.0 µs/op at 100 backends).
			x := (sc + 0.5) / (1 << 53)
			if ub := float64(b.weight) / (1 - x); best >= 0 && ub <= bestS && (load == 0 || bestUnder >= 0 && ub <= bestUnderS) {
				continue
			}
			sc = -float64(b.weight) / math.Log(x)
		}
		if best < 0 || sc > bestS {
			best, bestS = i, sc
		}
		if load > 0 && h.loadOf(p, b) >= math.Ceil(load*h.share(p, b)) {
			continue
		}
		if bestUnder < 0 || sc > bestUnderS {
			bestUnder, bestUnderS = i, sc
		}
	}
	if bestUnder >= 0 {
		return bestUnder
	}
	// Every remaining candidate is over the bound (only possible once some
	// were excluded): availability beats balance.
	return best
}

// Bounded loads that N instances agree on (issue 12, part 6). A key's
// backend must depend only on what every sluice instance sees alike: the
// backend set (config and discovery), health, admin states and agent
// reports. Connections counted by one instance are not such a thing: with
// live counts, instance A may find a backend over the bound while B does
// not, and a room's players split. So:
//
//   - Without an agent, the bound compares this instance's live
//     connections (the classic algorithm; instances may disagree while some
//     backend is over the bound).
//   - With an agent (PoolConfig.Agent), it compares the loads the agents
//     report (load:N), which all instances read from the same servers, and
//     the shares use the agents' weights: placement then depends only on
//     shared state (instances may disagree for one agent interval after a
//     report changes). A backend whose agent reported no load is never
//     over the bound and does not count in the average; when no agent
//     reports a load, nothing is bounded.
//
// The agent's weight never changes a key's ranking (scores use the
// configured weight, as during slow start): a weight that follows the
// players would otherwise move rooms with every report. Weight 0% is
// drain.

// bound returns factor × (sum of loads + 1) / sum of shares over the usable
// backends; 0 (unbounded) when no backend has a load.
func (h *rendezvous) bound(p *Pool, s *backendSet, v *view) float64 {
	var sumL, sumW float64
	for _, b := range s.list {
		if !usable(b, v) {
			continue
		}
		if l := h.loadOf(p, b); l >= 0 {
			sumL += l
			sumW += h.share(p, b)
		}
	}
	if sumW <= 0 {
		return 0
	}
	return h.factor * (sumL + 1) / sumW
}

// loadOf is b's load for the bound: its live connections from this
// instance, or with an agent the load its agent reported (-1: none).
func (h *rendezvous) loadOf(p *Pool, b *Backend) float64 {
	if p.agent != nil {
		return float64(b.agentLoad.Load())
	}
	return float64(b.live.active.Load())
}

// share is b's weight for the bound: the configured one, or with an agent
// the agent's (effWeight). An agent's 0 is drain, which keeps b's keys
// (keyUsable): it bounds them by the configured weight, as it ranks them.
func (h *rendezvous) share(p *Pool, b *Backend) float64 {
	if w := b.effWeight.Load(); p.agent != nil && w > 0 {
		return float64(w) / weightScale
	}
	return float64(b.weight)
}

// hashString is 64-bit FNV-1a: stable across processes and releases, so two
// sluice instances (or one after a restart) send a room to the same server.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is the splitmix64 finalizer: a bijection with full avalanche, so
// key^backend scores are independent across backends.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// ConnKey returns the key value of the connection-level kinds: the client's
// IP for client_ip, the server name for sni. ok is false for the other kinds
// (the l7 caller reads those from the request) and for a missing value.
func (k HashKey) ConnKey(client net.Addr, sni string) (key string, ok bool) {
	switch k.Kind {
	case HashClientIP:
		if client == nil {
			return "", false
		}
		if ta, isTCP := client.(*net.TCPAddr); isTCP {
			return ta.IP.String(), true
		}
		host, _, err := net.SplitHostPort(client.String())
		return host, err == nil
	case HashSNI:
		return sni, sni != ""
	}
	return "", false
}

// stickyPick returns the backend named by a sticky cookie value when it may
// take the player (see DialRequest.Sticky), else -1.
func stickyPick(s *backendSet, v *view, st *pickState, cookie string) int {
	for i, b := range s.list {
		if b.cookie != cookie {
			continue
		}
		if st.has(i) || b.full() || b.admin.Load() == uint32(Maint) || !(b.healthy.Load() || v.tier == tierAll) {
			return -1
		}
		return i
	}
	return -1
}

// stickyValue is Backend.Cookie: the first 8 bytes of SHA-256 over the pool
// name and the backend's id, in hex.
func stickyValue(pool, id string) string {
	h := sha256.Sum256([]byte("sluice sticky\x00" + pool + "\x00" + id))
	return hex.EncodeToString(h[:8])
}
