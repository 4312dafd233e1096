package main

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"sluice/l4"
)

// Per-client limits (issue 12 part 2), per listener: at most
// max_connections_per_ip live connections and new_connections_per_ip new
// ones a second (a token bucket) from one client address: an IPv4 address,
// or an IPv6 /64 (one subscriber's prefix). The client is the PROXY header's
// source when the listener reads one.

const (
	defaultMaxConnsPerIP = 512 // sized for carrier-grade NAT: many players behind one address
	defaultNewConnsRate  = 100 // a second
	defaultNewConnsBurst = 200

	// limiterSweepAt is the table size at which entries holding no live
	// connection are dropped. Entries with live connections are bounded by
	// the global max_connections, so the table is bounded under a flood of
	// distinct addresses; dropping an idle entry only forgets its bucket.
	limiterSweepAt = 1 << 16
)

// ipLimits is a listener's per-client limits; zero disables one.
type ipLimits struct {
	maxConns int     // live connections per client
	rate     float64 // new connections a second per client
	burst    float64 // bucket size
}

func (l ipLimits) enabled() bool { return l.maxConns > 0 || l.rate > 0 }

// ipLimiter counts live connections and new-connection tokens per client.
// One per listener address, kept across reloads (the limits may change).
type ipLimiter struct {
	mu      sync.Mutex
	limits  ipLimits
	clients map[netip.Addr]*ipEntry
}

type ipEntry struct {
	active int
	tokens float64
	last   time.Time // of the last refill
}

func newIPLimiter() *ipLimiter {
	return &ipLimiter{clients: map[netip.Addr]*ipEntry{}}
}

// clientKey groups a client address: IPv4 as is, IPv6 by /64. ok is false
// for an address that is not IP (no limit applies).
func clientKey(a net.Addr) (netip.Addr, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip := ta.AddrPort().Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		ip = p.Addr()
	}
	return ip, ip.IsValid()
}

// admit takes a slot for one new connection from key at now, or returns
// the reason it is refused.
func (l *ipLimiter) admit(key netip.Addr, now time.Time) (ok bool, reason l4.Reason) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.limits
	e := l.clients[key]
	if e == nil {
		if len(l.clients) >= limiterSweepAt {
			l.sweepLocked()
		}
		e = &ipEntry{tokens: lim.burst, last: now}
		l.clients[key] = e
	}
	if lim.maxConns > 0 && e.active >= lim.maxConns {
		return false, reasonPerIPConnections
	}
	if lim.rate > 0 {
		e.tokens = min(lim.burst, e.tokens+now.Sub(e.last).Seconds()*lim.rate)
		e.last = now
		if e.tokens < 1 {
			return false, reasonPerIPRate
		}
		e.tokens--
	}
	e.active++
	return true, ""
}

// done returns key's slot when its connection ends.
func (l *ipLimiter) done(key netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.clients[key]; e != nil && e.active > 0 {
		e.active--
	}
}

// sweepLocked drops the entries of clients with no live connection.
func (l *ipLimiter) sweepLocked() {
	for k, e := range l.clients {
		if e.active == 0 {
			delete(l.clients, k)
		}
	}
}

// attachLimiters gives each listener of rt the per-client limiter of its
// socket (kept across reloads, so live connections keep counting), set to
// rt's limits; a listener without limits gets none. Call it before rt is
// stored.
func (s *server) attachLimiters(rt *Runtime) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, lr := range rt.Listeners {
		if !lr.perIP.enabled() {
			continue
		}
		l := s.limiters[lr.key]
		if l == nil {
			l = newIPLimiter()
			s.limiters[lr.key] = l
		}
		l.mu.Lock()
		l.limits = lr.perIP
		l.mu.Unlock()
		lr.limiter = l
	}
}
