// Package dnstest is an in-process authoritative DNS server for tests of
// discovery: real DNS over UDP and TCP on one loopback port, with records
// and failure modes the test changes while the code under test runs.
//
//	srv := dnstest.Start(t)
//	srv.SetSRV("_game._tcp.rooms.test", 5, dnstest.SRV{Target: "gs1.rooms.test", Port: 7000, Weight: 1})
//	srv.SetA("gs1.rooms.test", 5, "127.0.0.1")
//	r, _ := discover.NewResolver([]string{srv.Addr})
//	srv.SetMode(dnstest.ServFail) // or Refuse, Drop; srv.Stop() and srv.Restart()
//
// A name with records of other types answers NOERROR with no answer;
// an unknown name NXDOMAIN. SRV answers carry their targets' A and AAAA
// records in the additional section unless SetAdditional(false).
//
// It is imported by tests only.
package dnstest

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"sluice/balancer/balancertest"
)

// Mode is how the server answers.
type Mode int

const (
	// Answer from the records. The zero value.
	Answer Mode = iota
	// ServFail answers every query SERVFAIL.
	ServFail
	// Refuse answers every query REFUSED.
	Refuse
	// Drop answers nothing: the client times out.
	Drop
)

// SRV is one SRV record's data.
type SRV struct {
	Target           string
	Port             uint16
	Priority, Weight uint16
}

// Query is one query the server received.
type Query struct {
	Name string // lower case, absolute
	Type uint16
	Net  string // "udp" or "tcp"
	Time time.Time
}

// Server is a running test DNS server.
type Server struct {
	// Addr is the loopback host:port it serves on, over UDP and TCP.
	Addr string

	tb         testing.TB
	mu         sync.Mutex
	records    map[string][]dns.RR // by lower-case absolute owner name
	mode       Mode
	truncate   bool // UDP answers carry TC and no records: the client must retry over TCP
	additional bool
	queries    []Query
	udp, tcp   *dns.Server
	wg         sync.WaitGroup
}

// Start starts a server on 127.0.0.1 (one port, UDP and TCP); it stops
// when the test ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{tb: tb, records: map[string][]dns.RR{}, additional: true}
	// A port below the ephemeral range: Restart binds it again, and a
	// released ephemeral port can be taken meanwhile by any outgoing
	// connection.
	s.listen(net.JoinHostPort("127.0.0.1", strconv.Itoa(balancertest.FreePort(tb, "127.0.0.1"))))
	tb.Cleanup(s.Stop)
	return s
}

// listen binds UDP and TCP on addr (port 0: a UDP port whose TCP twin is
// free, retried a few times) and serves.
func (s *Server) listen(addr string) {
	s.tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pc, err := net.ListenPacket("udp", addr)
		if err == nil {
			ln, terr := net.Listen("tcp", pc.LocalAddr().String())
			if terr == nil {
				s.serve(pc, ln)
				return
			}
			pc.Close()
			err = terr
		}
		// The port of a restarted server may be held by a client's socket
		// for a moment; a fresh port 0 may have a busy TCP twin.
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			s.tb.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *Server) serve(pc net.PacketConn, ln net.Listener) {
	s.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.handle)}
	tcp := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.handle)}
	for _, srv := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			_ = srv.ActivateAndServe()
		}()
		<-started
	}
	s.mu.Lock()
	s.udp, s.tcp = udp, tcp
	s.mu.Unlock()
}

// Stop shuts the server down (the port then refuses: the resolver is
// down) and waits for its goroutines. It is idempotent.
func (s *Server) Stop() {
	s.mu.Lock()
	udp, tcp := s.udp, s.tcp
	s.udp, s.tcp = nil, nil
	s.mu.Unlock()
	for _, srv := range []*dns.Server{udp, tcp} {
		if srv != nil {
			_ = srv.Shutdown()
		}
	}
	s.wg.Wait()
}

// Restart serves again on the same port, with the same records.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	s.listen(s.Addr)
}

func (s *Server) handle(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	s.mu.Lock()
	s.queries = append(s.queries, Query{Name: name, Type: q.Qtype, Net: network, Time: time.Now()})
	mode, truncate, additional := s.mode, s.truncate, s.additional
	rrs, known := s.records[name]
	var extra []dns.RR
	var answer []dns.RR
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype {
			answer = append(answer, dns.Copy(rr))
			if srv, ok := rr.(*dns.SRV); ok && additional {
				for _, x := range s.records[strings.ToLower(srv.Target)] {
					if t := x.Header().Rrtype; t == dns.TypeA || t == dns.TypeAAAA {
						extra = append(extra, dns.Copy(x))
					}
				}
			}
		}
	}
	s.mu.Unlock()
	switch mode {
	case Drop:
		return
	case ServFail:
		m.Rcode = dns.RcodeServerFailure
	case Refuse:
		m.Rcode = dns.RcodeRefused
	default:
		switch {
		case !known:
			m.Rcode = dns.RcodeNameError
		case truncate && network == "udp":
			m.Truncated = true
		default:
			m.Answer, m.Extra = answer, extra
		}
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	_ = w.WriteMsg(m)
}

// SetSRV replaces name's SRV records (none: the name keeps existing with
// no SRV record, if it has others; see Delete).
func (s *Server) SetSRV(name string, ttl uint32, recs ...SRV) {
	rrs := make([]dns.RR, len(recs))
	for i, r := range recs {
		rrs[i] = &dns.SRV{
			Hdr:      dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
			Priority: r.Priority, Weight: r.Weight, Port: r.Port, Target: dns.Fqdn(r.Target),
		}
	}
	s.set(name, dns.TypeSRV, rrs)
}

// SetA replaces name's A and AAAA records with ips.
func (s *Server) SetA(name string, ttl uint32, ips ...string) {
	var rrs []dns.RR
	for _, ip := range ips {
		a := net.ParseIP(ip)
		if a == nil {
			s.tb.Fatalf("dnstest: bad IP %q", ip)
		}
		hdr := dns.RR_Header{Name: dns.Fqdn(name), Class: dns.ClassINET, Ttl: ttl}
		if a4 := a.To4(); a4 != nil {
			hdr.Rrtype = dns.TypeA
			rrs = append(rrs, &dns.A{Hdr: hdr, A: a4})
		} else {
			hdr.Rrtype = dns.TypeAAAA
			rrs = append(rrs, &dns.AAAA{Hdr: hdr, AAAA: a})
		}
	}
	s.set(name, dns.TypeA, rrs, dns.TypeAAAA)
}

// set replaces name's records of the given types with rrs; the name exists
// (NOERROR) as long as Delete has not been called, even with no record.
func (s *Server) set(name string, qtype uint16, rrs []dns.RR, more ...uint16) {
	name = strings.ToLower(dns.Fqdn(name))
	drop := append([]uint16{qtype}, more...)
	s.mu.Lock()
	defer s.mu.Unlock()
	var keep []dns.RR
	for _, rr := range s.records[name] {
		t := rr.Header().Rrtype
		if t != drop[0] && (len(drop) < 2 || t != drop[1]) {
			keep = append(keep, rr)
		}
	}
	s.records[name] = append(keep, rrs...)
}

// Delete removes name: it answers NXDOMAIN.
func (s *Server) Delete(name string) {
	s.mu.Lock()
	delete(s.records, strings.ToLower(dns.Fqdn(name)))
	s.mu.Unlock()
}

// SetMode sets how the server answers from now on.
func (s *Server) SetMode(m Mode) {
	s.mu.Lock()
	s.mode = m
	s.mu.Unlock()
}

// SetTruncate makes UDP answers truncated (TC set, no records), so clients
// must ask again over TCP.
func (s *Server) SetTruncate(on bool) {
	s.mu.Lock()
	s.truncate = on
	s.mu.Unlock()
}

// SetAdditional sets whether SRV answers carry the targets' addresses.
func (s *Server) SetAdditional(on bool) {
	s.mu.Lock()
	s.additional = on
	s.mu.Unlock()
}

// Queries returns the queries received so far, in order.
func (s *Server) Queries() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Query(nil), s.queries...)
}
