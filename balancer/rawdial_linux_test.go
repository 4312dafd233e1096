package balancer

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The Dial tests run with the raw dial too (dialKinds).
func init() { dialKinds = append(dialKinds, dialKind{"raw", pollWait}) }

// pollWait is a DialRequest.Wait for these tests: poll(2) in slices of at
// most 10 ms, watching ctx between them; its revents are epoll's events
// (POLLIN, POLLRDHUP, POLLHUP and POLLERR have the same values). sluice's
// own is l4.WaitFD (l4 imports balancer, so its tests and the l4 path run
// that one).
func pollWait(ctx context.Context, fd int, write bool, deadline time.Time) (uint32, error) {
	ev := int16(unix.POLLIN | unix.POLLRDHUP)
	if write {
		ev = unix.POLLOUT
	}
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		ms := 10
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			ms = min(ms, int(d/time.Millisecond)+1)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: ev}}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n > 0 {
			return uint32(uint16(fds[0].Revents)), nil
		}
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
		c := leaseConn(t, l) // the descriptor is still the test's: no Close reached it
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
