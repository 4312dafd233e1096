package balancer

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// sink is a loopback backend that accepts, discards what it reads and
// closes at EOF, reporting nothing: health checks may open any number of
// connections to it. stop closes the listener and every connection;
// restart listens again on the same port.
type sink struct {
	t       testing.TB
	address string
	accepts atomic.Int64

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startSink(t testing.TB) *sink {
	t.Helper()
	s := &sink{t: t, conns: map[net.Conn]struct{}{}}
	s.listen("127.0.0.1:0")
	t.Cleanup(s.stop)
	return s
}

func (s *sink) listen(addr string) {
	s.t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.ln, s.address = ln, ln.Addr().String()
	s.mu.Unlock()
	s.wg.Add(1)
	go s.acceptLoop(ln)
}

func (s *sink) addr() string { return s.address }

func (s *sink) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.accepts.Add(1)
		s.mu.Lock()
		if s.ln != ln { // stopped between Accept and here
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *sink) serve(c net.Conn) {
	defer s.wg.Done()
	_, _ = io.Copy(io.Discard, c)
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

func (s *sink) stop() {
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// restart listens again on the sink's port. While it was stopped, an
// outgoing connection of the test (a dial, a health check) may have taken
// that port as its ephemeral source port; it is released when that
// connection closes, so a busy port is retried for a while.
func (s *sink) restart() {
	s.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", s.address)
		if err == nil {
			ln.Close()
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			s.t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.listen(s.address)
}

func sinks(t testing.TB, n int) []*sink {
	out := make([]*sink, n)
	for i := range out {
		out[i] = startSink(t)
	}
	return out
}

func sinkConfigs(ss []*sink, weights ...int) []BackendConfig {
	bs := make([]BackendConfig, len(ss))
	for i, s := range ss {
		bs[i] = BackendConfig{Address: s.addr()}
		if i < len(weights) {
			bs[i].Weight = weights[i]
		}
	}
	return bs
}

// events records OnChange calls.
type events struct {
	mu  sync.Mutex
	evs []Event
}

func (e *events) record(ev Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *events) list() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.evs...)
}

// waitFor polls cond every 5 ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// dialHold dials and registers cleanup (close, release) for the lease.
func dialHold(t testing.TB, p *Pool, req DialRequest) *Lease {
	t.Helper()
	l, err := p.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Conn.Close()
		l.Release()
	})
	return l
}

// dialDone dials, then closes and releases at once; it returns the backend.
func dialDone(t testing.TB, p *Pool, req DialRequest) *Backend {
	t.Helper()
	l, err := p.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	l.Conn.Close()
	l.Release()
	return l.Backend
}

func indexOf(p *Pool, b *Backend) int {
	for i, x := range p.backends() {
		if x == b {
			return i
		}
	}
	return -1
}
