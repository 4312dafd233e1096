package balancer

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pollWait is a DialRequest.Wait for these tests: poll(2) in slices of at
// most 10 ms, watching ctx between them. sluice's own is l4.WaitFD (l4
// imports balancer, so its tests and the l4 path run that one).
func pollWait(ctx context.Context, fd int, write bool, deadline time.Time) error {
	ev := int16(unix.POLLIN | unix.POLLRDHUP)
	if write {
		ev = unix.POLLOUT
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		ms := 10
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return os.ErrDeadlineExceeded
			}
			ms = min(ms, int(d/time.Millisecond)+1)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: ev}}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// adopt turns an FD lease into a Conn one for the test helpers: the
// descriptor becomes a *net.TCPConn (net.FileConn dups it; the original is
// closed), so that finish and reads work as on Go's dial.
func adopt(t *testing.T, l *Lease) *net.TCPConn {
	t.Helper()
	if l.Conn != nil || l.FD < 0 {
		t.Fatalf("lease has Conn %v and FD %d: want a raw dial's FD", l.Conn, l.FD)
	}
	f := os.NewFile(uintptr(l.FD), "backend")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	l.Conn, l.FD = c.(*net.TCPConn), -1
	return l.Conn
}

// The raw dial puts exactly Go's dial's bytes on the wire: a PROXY v2
// header (parsed by go-proxyproto on the backend) and the prefix in one
// piece, after a refused backend was skipped and counted.
func TestRawDialRetryRefused(t *testing.T) {
	good := startBackend(t, "tcp", "127.0.0.1:0", false)
	p := mustPool(t, PoolConfig{Name: "raw", Backends: backendsOf(closedAddr(t), good.addr()), ProxyProtocol: ProxyV2})
	req := DialRequest{Client: testClient, Local: testLocal, SNI: "game.example.com", Prefix: payloadOf(2000), Wait: pollWait}
	l, err := p.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	adopt(t, l)
	finish(t, l)
	if l.Attempts != 2 || l.Backend.Addr() != good.addr() {
		t.Fatalf("lease on %s after %d attempts, want %s after 2", l.Backend.Addr(), l.Attempts, good.addr())
	}
	r := good.next(t)
	if sha256.Sum256(r.data) != sha256.Sum256(want(t, ProxyV2, req)) {
		t.Fatalf("backend got %d bytes that differ from header+prefix", len(r.data))
	}
	bad := p.Backends()[0]
	if bad.Dials() != 1 || bad.Failures() != 1 || bad.Active() != 0 {
		t.Errorf("refused backend: dials %d failures %d active %d", bad.Dials(), bad.Failures(), bad.Active())
	}
}

// Every backend refused: a DialError whose causes are ECONNREFUSED, as
// Go's dial reports it.
func TestRawDialAllRefused(t *testing.T) {
	p := mustPool(t, PoolConfig{Name: "raw", Backends: backendsOf(closedAddr(t), closedAddr(t))})
	_, err := p.Dial(context.Background(), DialRequest{Prefix: payloadOf(10), Wait: pollWait})
	var de *DialError
	if !errors.As(err, &de) || len(de.Attempts) != 2 || !errors.Is(err, syscall.ECONNREFUSED) || de.Local() {
		t.Fatalf("err = %v, want a DialError of 2 refused attempts, not local", err)
	}
}

// T12 on the raw dial: a blackholed backend costs one connect timeout (the
// wait for the connect, then a timeout error), then the next one serves.
func TestRawDialBlackholeRetry(t *testing.T) {
	good := startBackend(t, "tcp", "127.0.0.1:0", false)
	p := mustPool(t, PoolConfig{Name: "bh", Backends: backendsOf(blackhole(t), good.addr()), ConnectTimeout: bhTimeout})
	start := time.Now()
	l, err := p.Dial(context.Background(), DialRequest{Prefix: payloadOf(10), Wait: pollWait})
	if err != nil {
		t.Fatal(err)
	}
	adopt(t, l)
	finish(t, l)
	if l.Attempts != 2 || l.Backend.Addr() != good.addr() {
		t.Fatalf("lease on %s after %d attempts", l.Backend.Addr(), l.Attempts)
	}
	if d := time.Since(start); d < bhTimeout {
		t.Fatalf("took %v, less than the blackholed backend's connect timeout", d)
	}
	if f := p.Backends()[0].Failures(); f != 1 {
		t.Errorf("blackholed backend: %d failures, want 1", f)
	}
	var ne net.Error
	p2 := mustPool(t, PoolConfig{Name: "bh2", Backends: backendsOf(blackhole(t)), ConnectTimeout: bhTimeout})
	if _, err := p2.Dial(context.Background(), DialRequest{Wait: pollWait}); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("err = %v, want a timeout", err)
	}
}

// AwaitAnswer on the raw dial (T12 "accepted and closed"): a backend that
// accepts and closes or resets without answering fails the attempt; the
// next one gets the same bytes and its answer is left to read.
func TestRawDialAwaitAnswer(t *testing.T) {
	// close: with the bytes unread, the close is a reset too; fin: the
	// backend reads them first, so its close is a FIN (the peek's EOF).
	for _, how := range []string{"reset", "close", "fin"} {
		t.Run(how, func(t *testing.T) {
			req := DialRequest{Client: testClient, Local: testLocal, SNI: "game.example.com", Prefix: payloadOf(1500), AwaitAnswer: true, Wait: pollWait}
			wire := want(t, ProxyV2, req)
			bad := serveEach(t, func(c net.Conn) {
				if how == "fin" {
					c.SetDeadline(time.Now().Add(10 * time.Second))
					io.ReadFull(c, make([]byte, len(wire)))
					return
				}
				time.Sleep(50 * time.Millisecond) // the write lands first: no EPIPE to catch it
				if how == "reset" {
					c.(*net.TCPConn).SetLinger(0)
				}
			})
			got := make(chan []byte, 1)
			good := serveEach(t, func(c net.Conn) {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				b := make([]byte, len(wire))
				n, _ := io.ReadFull(c, b)
				got <- b[:n]
				c.Write([]byte("S"))
				io.Copy(io.Discard, c)
			})
			p := mustPool(t, PoolConfig{Name: "d2", Backends: backendsOf(bad, good), ProxyProtocol: ProxyV2})
			l, err := p.Dial(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			c := adopt(t, l)
			defer l.Release()
			defer c.Close()
			if l.Attempts != 2 || l.Backend.Addr() != good {
				t.Fatalf("lease on %s after %d attempts, want %s after 2", l.Backend.Addr(), l.Attempts, good)
			}
			if b := <-got; sha256.Sum256(b) != sha256.Sum256(wire) {
				t.Fatalf("retried backend got %d bytes that differ from header+hello", len(b))
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			answer := make([]byte, 1)
			if _, err := io.ReadFull(c, answer); err != nil || answer[0] != 'S' {
				t.Fatalf("the answer the dial waited for was not left to read: %q %v", answer, err)
			}
			if f := p.Backends()[0].Failures(); f != 1 {
				t.Fatalf("the closing backend has %d failures, want 1", f)
			}
		})
	}
}

// A slow backend is kept after the answer wait; a cancelled ctx ends the
// wait at once and is nobody's failure.
func TestRawDialAwaitAnswerSlowAndCancel(t *testing.T) {
	silent := serveEach(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	p := mustPool(t, PoolConfig{Name: "slow", Backends: backendsOf(silent), ConnectTimeout: 200 * time.Millisecond})
	t0 := time.Now()
	l, err := p.Dial(context.Background(), DialRequest{Prefix: payloadOf(100), AwaitAnswer: true, Wait: pollWait})
	if err != nil {
		t.Fatal(err)
	}
	c := adopt(t, l)
	c.Close()
	l.Release()
	if d := time.Since(t0); d < 200*time.Millisecond {
		t.Fatalf("returned after %v, before the answer wait ended", d)
	}
	if l.Attempts != 1 || p.Backends()[0].Failures() != 0 {
		t.Fatalf("attempts %d, failures %d; want 1 and 0", l.Attempts, p.Backends()[0].Failures())
	}

	p2 := mustPool(t, PoolConfig{Name: "cancel", Backends: backendsOf(silent), ConnectTimeout: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	l, err = p2.Dial(ctx, DialRequest{Prefix: payloadOf(100), AwaitAnswer: true, Wait: pollWait})
	if l != nil {
		unix.Close(l.FD)
		l.Release()
		t.Fatal("lease after cancel")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if b := p2.Backends()[0]; b.Failures() != 0 || b.Active() != 0 {
		t.Fatalf("failures %d active %d, want 0 and 0", b.Failures(), b.Active())
	}
}

// A backend named by host name goes through Go's resolver and dial: a
// Conn lease, Wait or not.
func TestRawDialHostNameUsesGoDial(t *testing.T) {
	good := startBackend(t, "tcp", "127.0.0.1:0", false)
	_, port, _ := net.SplitHostPort(good.addr())
	p := mustPool(t, PoolConfig{Name: "name", Backends: backendsOf(net.JoinHostPort("localhost", port))})
	l, err := p.Dial(context.Background(), DialRequest{Prefix: payloadOf(10), Wait: pollWait})
	if err != nil {
		t.Fatal(err)
	}
	if l.Conn == nil || l.FD != -1 {
		t.Fatalf("lease Conn %v FD %d: want Go's conn", l.Conn, l.FD)
	}
	finish(t, l)
}

// An FD lease has no deferred-options batch: Detach takes the relay's
// Killer at once, and CloseConnections calls it. CloseConnections before
// Detach (the relay not started yet) makes Detach refuse, so the relay
// ends as soon as it starts. SetBackendOptions sets T17's options on the
// descriptor.
func TestRawLeaseDetach(t *testing.T) {
	tb := startBackend(t, "tcp", "127.0.0.1:0", false)
	p := mustPool(t, PoolConfig{Name: "detach", Backends: backendsOf(tb.addr())})
	for _, early := range []bool{false, true} {
		l, err := p.Dial(context.Background(), DialRequest{Wait: pollWait})
		if err != nil {
			t.Fatal(err)
		}
		if l.FD < 0 || l.Conn != nil {
			t.Fatalf("lease Conn %v FD %d: want a raw FD", l.Conn, l.FD)
		}
		k := &killRecorder{}
		if early {
			if n, _ := p.CloseConnections(tb.addr()); n != 1 {
				t.Fatalf("CloseConnections closed %d, want 1", n)
			}
			if l.Detach(k) {
				t.Error("Detach after CloseConnections: want refused")
			}
		} else {
			if !l.Detach(k) {
				t.Fatal("Detach refused on a fresh FD lease")
			}
			if n, _ := p.CloseConnections(tb.addr()); n != 1 || k.n.Load() != 1 {
				t.Errorf("CloseConnections closed %d, Kill called %d times; want 1 and 1", n, k.n.Load())
			}
		}
		c := adopt(t, l) // the descriptor is still the test's: no Close reached it
		if !early {
			// After adopt: net.FileConn sets Go's keepalive defaults.
			rc, _ := c.SyscallConn()
			var serr error
			rc.Control(func(fd uintptr) { serr = SetBackendOptions(int(fd)) })
			if serr != nil {
				t.Fatal(serr)
			}
			checkOpts(t, "SetBackendOptions", sockopts(t, c), t17)
		}
		c.Close()
		l.Release()
	}
}
