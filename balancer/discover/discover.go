// Package discover finds a pool's backends in DNS (issue 12, part 3): SRV
// records, as Kubernetes headless services, Consul and Nomad publish them,
// or every A/AAAA address of a name. A Source is a balancer.Discoverer:
//
//	r, err := discover.NewResolver([]string{"127.0.0.1:53"}) // nil: /etc/resolv.conf
//	src, err := discover.New("srv:_game._tcp.rooms.default.svc.cluster.local", r)
//	pool, err := balancer.NewPool(balancer.PoolConfig{Name: "rooms", Discover: src, ...})
//	pool.Start() // looks up at once, then every ResolveInterval (or TTL)
//
// Queries go over UDP (EDNS0, 1232 bytes) and are repeated over TCP when
// the answer is truncated; servers are asked in order until one answers
// with NOERROR or NXDOMAIN. Names are absolute: no search list applies.
//
// It does not cache (the pool asks no more often than the TTLs say, and
// never sooner than 1 s), does not validate DNSSEC, does not follow CNAME
// chains itself (recursive servers put the chain in the answer), and starts
// no goroutine.
package discover

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"sluice/balancer"
)

// DefaultTimeout bounds one query to one server, retry over TCP included.
const DefaultTimeout = 2 * time.Second

// ednsSize is the UDP payload size sluice advertises: DNS flag day 2020's
// 1232 bytes, which fits any path MTU without IP fragmentation.
const ednsSize = 1232

// resolvConf is where the system's resolvers are listed.
const resolvConf = "/etc/resolv.conf"

// Resolver sends discovery's queries. The zero value is not usable; use
// NewResolver.
type Resolver struct {
	servers []string // host:port; nil: the system's, read at each lookup
	// Timeout bounds one query to one server. If zero, DefaultTimeout.
	Timeout time.Duration
	conf    string // resolv.conf path (tests)
}

// NewResolver returns a resolver that asks servers ("ip:port", in order).
// With no servers it asks the system's: the nameservers of
// /etc/resolv.conf, read again at each lookup, or 127.0.0.1:53 and
// [::1]:53 when it lists none (as Go's resolver does).
func NewResolver(servers []string) (*Resolver, error) {
	r := &Resolver{conf: resolvConf}
	for _, s := range servers {
		ap, err := netip.ParseAddrPort(s)
		if err != nil || ap.Port() == 0 {
			return nil, fmt.Errorf("discover: resolver %q: want an IP address and port, like 127.0.0.1:53 or [::1]:53", s)
		}
		r.servers = append(r.servers, ap.String())
	}
	return r, nil
}

// Servers returns the servers asked, in order: the configured ones, or the
// system's as listed now.
func (r *Resolver) Servers() []string {
	if len(r.servers) > 0 {
		return slices.Clone(r.servers)
	}
	cc, err := dns.ClientConfigFromFile(r.conf)
	if err != nil || len(cc.Servers) == 0 {
		return []string{"127.0.0.1:53", "[::1]:53"}
	}
	out := make([]string, len(cc.Servers))
	for i, s := range cc.Servers {
		out[i] = net.JoinHostPort(s, cmp.Or(cc.Port, "53"))
	}
	return out
}

// exchange asks each server in turn for name's qtype records and returns
// the first answer with NOERROR or NXDOMAIN. Any other outcome (timeout,
// SERVFAIL, REFUSED, a malformed reply) moves on to the next server; when
// none answers, the error lists each server's.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.RecursionDesired = true
	q.SetEdns0(ednsSize, false)
	var errs []error
	for _, srv := range r.Servers() {
		resp, err := r.exchangeOne(ctx, q, srv)
		if err == nil {
			if resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError {
				return resp, nil
			}
			err = fmt.Errorf("%s: %s", srv, dns.RcodeToString[resp.Rcode])
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("discover: %s %s: %w", dns.TypeToString[qtype], dns.Fqdn(name), errors.Join(errs...))
}

// exchangeOne asks srv over UDP, and again over TCP when the reply is
// truncated (RFC 7766, Section 5).
func (r *Resolver) exchangeOne(ctx context.Context, q *dns.Msg, srv string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(r.Timeout, DefaultTimeout))
	defer cancel()
	c := dns.Client{Net: "udp", UDPSize: ednsSize}
	resp, _, err := c.ExchangeContext(ctx, q, srv)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, q, srv)
	}
	if err != nil {
		return nil, fmt.Errorf("%s over %s: %w", srv, c.Net, err)
	}
	return resp, nil
}

// Source is one discover target: it implements balancer.Discoverer.
type Source struct {
	spec string // as configured
	srv  bool   // SRV; else A/AAAA
	name string // absolute, lower case
	port string // A/AAAA only
	r    *Resolver
}

var _ balancer.Discoverer = (*Source)(nil)

// New parses a pool's discover value: "srv:NAME" (every SRV record of
// NAME: target, port, weight; the lowest priority is the primary set, the
// others are backups) or "a:NAME:PORT" (every A and AAAA address of NAME,
// each a backend on PORT). It sends nothing.
func New(spec string, r *Resolver) (*Source, error) {
	if r == nil {
		return nil, errors.New("discover: no resolver")
	}
	kind, rest, _ := strings.Cut(spec, ":")
	s := &Source{spec: spec, r: r}
	switch kind {
	case "srv":
		s.srv, s.name = true, rest
	case "a":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return nil, fmt.Errorf("discover: %q: want a:NAME:PORT", spec)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("discover: %q: port %q: want 1 to 65535", spec, port)
		}
		s.name, s.port = host, port
	default:
		return nil, fmt.Errorf("discover: %q: want srv:NAME or a:NAME:PORT", spec)
	}
	if _, err := netip.ParseAddr(s.name); err == nil {
		return nil, fmt.Errorf("discover: %q: %s is an address, not a name: list it in backends", spec, s.name)
	}
	if _, ok := dns.IsDomainName(s.name); !ok || strings.Trim(s.name, ".") == "" {
		return nil, fmt.Errorf("discover: %q: %q is not a domain name", spec, s.name)
	}
	s.name = strings.ToLower(dns.Fqdn(s.name))
	return s, nil
}

// String returns the spec New parsed.
func (s *Source) String() string { return s.spec }

// Discover looks the backends up. An empty list with a nil error means the
// name exists with no usable record, or does not exist (NXDOMAIN): the pool
// keeps its backends either way. The TTL is the shortest of the records
// used, CNAMEs included; -1 when nothing was found.
func (s *Source) Discover(ctx context.Context) ([]balancer.BackendConfig, time.Duration, error) {
	if s.srv {
		return s.discoverSRV(ctx)
	}
	var ttl minTTL
	addrs, err := s.lookupAddrs(ctx, s.name, nil, &ttl, true)
	if err != nil {
		return nil, 0, err
	}
	out := make([]balancer.BackendConfig, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, balancer.BackendConfig{Address: net.JoinHostPort(a.String(), s.port)})
	}
	return out, ttl.get(), nil
}

// discoverSRV reads the SRV records of s.name (RFC 2782). Each target
// becomes a backend with id TARGET:PORT (without the final dot) and, as
// address, the first of its IPv4 addresses in ascending order (IPv6 when
// it has none), from the additional section or asked for. Weight 0 counts
// as 1. Targets "." (no service) and names that do not exist are skipped;
// an error resolving a target fails the whole lookup, so that the pool
// keeps its set rather than losing that backend.
func (s *Source) discoverSRV(ctx context.Context) ([]balancer.BackendConfig, time.Duration, error) {
	var ttl minTTL
	resp, err := s.r.exchange(ctx, s.name, dns.TypeSRV)
	if err != nil {
		return nil, 0, err
	}
	var srvs []*dns.SRV
	for _, rr := range resp.Answer {
		switch rr := rr.(type) {
		case *dns.SRV:
			srvs = append(srvs, rr)
			ttl.add(rr.Hdr.Ttl)
		case *dns.CNAME:
			ttl.add(rr.Hdr.Ttl)
		}
	}
	if len(srvs) == 0 {
		return nil, -1, nil
	}
	extra := map[string][]dns.RR{} // additional A/AAAA by owner name
	for _, rr := range resp.Extra {
		switch rr.(type) {
		case *dns.A, *dns.AAAA:
			name := strings.ToLower(rr.Header().Name)
			extra[name] = append(extra[name], rr)
		}
	}
	prio := srvs[0].Priority
	for _, rr := range srvs {
		prio = min(prio, rr.Priority)
	}
	var out []balancer.BackendConfig
	for _, rr := range srvs {
		target := strings.ToLower(dns.Fqdn(rr.Target))
		if target == "." || rr.Port == 0 {
			continue
		}
		addrs, err := s.lookupAddrs(ctx, target, extra[target], &ttl, false)
		if err != nil {
			return nil, 0, err
		}
		if len(addrs) == 0 {
			continue
		}
		port := strconv.Itoa(int(rr.Port))
		out = append(out, balancer.BackendConfig{
			ID:      strings.TrimSuffix(target, ".") + ":" + port,
			Address: net.JoinHostPort(addrs[0].String(), port),
			Weight:  max(int(rr.Weight), 1),
			Backup:  rr.Priority != prio,
		})
	}
	return out, ttl.get(), nil
}

// lookupAddrs returns name's addresses, IPv4 first, each family in
// ascending order: from known (the additional section) when it has any,
// else asked for, A then AAAA. With both, AAAA is asked even when A
// answered (discover = "a:..."); otherwise only when A found nothing.
func (s *Source) lookupAddrs(ctx context.Context, name string, known []dns.RR, ttl *minTTL, both bool) ([]netip.Addr, error) {
	var v4, v6 []netip.Addr
	collect := func(rrs []dns.RR) {
		for _, rr := range rrs {
			switch rr := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
					v4 = append(v4, a)
					ttl.add(rr.Hdr.Ttl)
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(rr.AAAA.To16()); ok {
					v6 = append(v6, a)
					ttl.add(rr.Hdr.Ttl)
				}
			case *dns.CNAME:
				ttl.add(rr.Hdr.Ttl)
			}
		}
	}
	if len(known) > 0 {
		collect(known)
	} else {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			if qtype == dns.TypeAAAA && len(v4) > 0 && !both {
				break
			}
			resp, err := s.r.exchange(ctx, name, qtype)
			if err != nil {
				return nil, err
			}
			if resp.Rcode == dns.RcodeNameError {
				break // no such name: no AAAA either
			}
			collect(resp.Answer)
		}
	}
	slices.SortFunc(v4, netip.Addr.Compare)
	slices.SortFunc(v6, netip.Addr.Compare)
	return slices.Compact(append(v4, v6...)), nil
}

// minTTL is the shortest TTL seen; -1 until one is.
type minTTL struct {
	seen bool
	ttl  uint32
}

func (m *minTTL) add(ttl uint32) {
	if !m.seen || ttl < m.ttl {
		m.seen, m.ttl = true, ttl
	}
}

func (m *minTTL) get() time.Duration {
	if !m.seen {
		return -1
	}
	return time.Duration(m.ttl) * time.Second
}
