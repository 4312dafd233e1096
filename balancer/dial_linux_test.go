package balancer

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const bhTimeout = 300 * time.Millisecond

// blackhole returns a loopback address whose SYNs are dropped: a raw
// listening socket with listen(fd, 1) whose accept queue is filled by
// connections never accepted (Linux admits backlog+1, so usually 2). The
// fill loop stops at the first connect that times out, so it does not
// depend on that exact count.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	for range 8 {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return addr
			}
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("accept queue never filled")
	return ""
}

// TestDialBlackholeRetry pins T12: a blackholed backend costs one
// ConnectTimeout, then the next backend serves the connection.
func TestDialBlackholeRetry(t *testing.T) {
	for _, k := range dialKinds {
		t.Run(k.name, func(t *testing.T) {
			good := startBackend(t, "tcp", "127.0.0.1:0", false)
			p := mustPool(t, PoolConfig{Name: "bh", Backends: backendsOf(blackhole(t), good.addr()), ConnectTimeout: bhTimeout})
			start := time.Now()
			l, err := p.Dial(context.Background(), DialRequest{Prefix: []byte("hello"), Wait: k.wait})
			if err != nil {
				t.Fatal(err)
			}
			finish(t, l)
			if l.Attempts != 2 || l.Backend.Addr() != good.addr() {
				t.Fatalf("lease on %s after %d attempts", l.Backend.Addr(), l.Attempts)
			}
			if el := time.Since(start); el < bhTimeout {
				t.Errorf("returned after %v, before the first attempt's timeout", el)
			}
			if r := good.next(t); string(r.data) != "hello" {
				t.Errorf("got %q", r.data)
			}
			if f := p.Backends()[0].Failures(); f != 1 {
				t.Errorf("blackholed backend failures = %d", f)
			}
		})
	}
}

// TestDialAllBlackholed pins the bound on a dead pool: MaxAttempts timeouts,
// one cause per backend, each a deadline.
func TestDialAllBlackholed(t *testing.T) {
	for _, k := range dialKinds {
		t.Run(k.name, func(t *testing.T) {
			p := mustPool(t, PoolConfig{Name: "bh", Backends: backendsOf(blackhole(t), blackhole(t), blackhole(t)), ConnectTimeout: bhTimeout})
			start := time.Now()
			_, err := p.Dial(context.Background(), DialRequest{Wait: k.wait})
			el := time.Since(start)
			var de *DialError
			if !errors.As(err, &de) || len(de.Attempts) != 3 || de.Stop != nil {
				t.Fatalf("err = %v", err)
			}
			for i, a := range de.Attempts {
				// Whichever fires first, the context's deadline or the socket's,
				// the cause is a net.Error timeout.
				if ne, ok := errors.AsType[net.Error](a.Err); !ok || !ne.Timeout() {
					t.Errorf("attempt %d: %v, want a timeout", i, a.Err)
				}
			}
			// Timers never fire early; the upper bound only catches a missing
			// per-attempt timeout (the default would take 3 x 3 s).
			if el < 3*bhTimeout || el > 3*bhTimeout+5*time.Second {
				t.Errorf("took %v, want about %v", el, 3*bhTimeout)
			}
			for i, b := range p.Backends() {
				if b.Dials() != 1 || b.Failures() != 1 || b.Active() != 0 {
					t.Errorf("backend %d: dials %d failures %d active %d", i, b.Dials(), b.Failures(), b.Active())
				}
			}
		})
	}
}

// TestDialBudget pins ConnectBudget: 450 ms allows one full 300 ms attempt
// and a second cut to the remaining ~150 ms, never the third.
func TestDialBudget(t *testing.T) {
	const budget = 450 * time.Millisecond
	p := mustPool(t, PoolConfig{
		Name:           "budget",
		Backends:       backendsOf(blackhole(t), blackhole(t), blackhole(t)),
		ConnectTimeout: bhTimeout,
		ConnectBudget:  budget,
	})
	start := time.Now()
	_, err := p.Dial(context.Background(), DialRequest{})
	el := time.Since(start)
	var de *DialError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v", err)
	}
	// Normally 2; 1 only if the machine stalled ~150 ms between attempts.
	if n := len(de.Attempts); n < 1 || n > 2 {
		t.Errorf("%d attempts within the budget, want 2", n)
	}
	if !errors.Is(err, ErrBudgetExhausted) {
		t.Errorf("err = %v, want ErrBudgetExhausted", err)
	}
	if el < budget {
		t.Errorf("gave up after %v, before the budget", el)
	}
	if d := p.Backends()[2].Dials(); d != 0 {
		t.Errorf("third backend dialed %d times past the budget", d)
	}
}

// TestDialCancelMidConnect: the caller's context ends during a blackholed
// connect. Dial stops at once and the backend is not blamed.
func TestDialCancelMidConnect(t *testing.T) {
	p := mustPool(t, PoolConfig{Name: "cancel", Backends: backendsOf(blackhole(t), blackhole(t)), ConnectTimeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := p.Dial(ctx, DialRequest{})
	var de *DialError
	if !errors.As(err, &de) || !errors.Is(err, context.Canceled) || len(de.Attempts) != 1 {
		t.Fatalf("err = %v, want one canceled attempt", err)
	}
	if f := p.Backends()[0].Failures(); f != 0 {
		t.Errorf("canceled attempt counted as %d failures", f)
	}
}

// sockopts reads the T17 options of c: keepalive 30s/10s/3,
// TCP_USER_TIMEOUT 30 s, TCP_NODELAY.
func sockopts(t *testing.T, c *net.TCPConn) map[string]int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, o := range []struct {
		name       string
		level, opt int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
		{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT},
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY},
	} {
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), o.level, o.opt) }); err != nil {
			t.Fatal(err)
		}
		if gerr != nil {
			t.Fatalf("%s: %v", o.name, gerr)
		}
		got[o.name] = v
	}
	return got
}

var t17 = map[string]int{"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 30000, "TCP_NODELAY": 1}

func checkOpts(t *testing.T, what string, got map[string]int, want map[string]int) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %d, want %d", what, k, got[k], v)
		}
	}
}

// TestDialSocketOptions pins T17 on the dialed socket: keepalive 30s/10s/3,
// TCP_USER_TIMEOUT 30 s, TCP_NODELAY. A relay's backend connection (Dial)
// gets keepalive and TCP_USER_TIMEOUT once it has lived about optionsDelay, so a
// short connection never pays the five setsockopt calls (issue 11); one
// released sooner never gets them; Pool.Connect (plain HTTP) sets them all
// with the connect; a connect_timeout longer than TCP_USER_TIMEOUT keeps
// TCP_USER_TIMEOUT before connect, where it bounds the SYN retries.
func TestDialSocketOptions(t *testing.T) {
	defer func(d time.Duration) { optionsDelay = d }(optionsDelay)
	optionsDelay = 50 * time.Millisecond
	tb := startBackend(t, "tcp", "127.0.0.1:0", false)
	p := mustPool(t, PoolConfig{Name: "opts", Backends: backendsOf(tb.addr())})

	l, err := p.Dial(context.Background(), DialRequest{})
	if err != nil {
		t.Fatal(err)
	}
	finish(t, l)
	checkOpts(t, "at dial", sockopts(t, l.Conn), map[string]int{"SO_KEEPALIVE": 0, "TCP_USER_TIMEOUT": 0, "TCP_NODELAY": 1})
	deadline := time.Now().Add(5 * time.Second)
	for sockopts(t, l.Conn)["SO_KEEPALIVE"] == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	checkOpts(t, "after optionsDelay", sockopts(t, l.Conn), t17)
	opts.mu.Lock()
	if l.batch.leases != nil {
		t.Error("the fired batch still holds its leases")
	}
	opts.mu.Unlock()

	short, err := p.Dial(context.Background(), DialRequest{})
	if err != nil {
		t.Fatal(err)
	}
	short.Release() // before optionsDelay; the conn stays open to be looked at
	defer short.Conn.Close()
	time.Sleep(3 * optionsDelay)
	checkOpts(t, "released before optionsDelay", sockopts(t, short.Conn), map[string]int{"SO_KEEPALIVE": 0, "TCP_USER_TIMEOUT": 0})

	c, err := p.Connect(context.Background(), p.Backends()[0], DialRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkOpts(t, "Pool.Connect", sockopts(t, c), t17)

	slow := mustPool(t, PoolConfig{Name: "slow", Backends: backendsOf(tb.addr()), ConnectTimeout: UserTimeout + time.Second})
	ls, err := slow.Dial(context.Background(), DialRequest{})
	if err != nil {
		t.Fatal(err)
	}
	finish(t, ls)
	checkOpts(t, "connect_timeout > TCP_USER_TIMEOUT, at dial", sockopts(t, ls.Conn), map[string]int{"SO_KEEPALIVE": 0, "TCP_USER_TIMEOUT": 30000})
}

type killRecorder struct{ n atomic.Int32 }

func (k *killRecorder) Kill() { k.n.Add(1) }

// Lease.Detach (l4.Owner): refused while the conn's deferred options are
// not set (the relay keeps the socket they must reach); afterwards the
// lease forgets Conn, and closing the backend's connections calls Kill.
func TestLeaseDetach(t *testing.T) {
	defer func(d time.Duration) { optionsDelay = d }(optionsDelay)
	optionsDelay = 50 * time.Millisecond
	tb := startBackend(t, "tcp", "127.0.0.1:0", false)
	p := mustPool(t, PoolConfig{Name: "detach", Backends: backendsOf(tb.addr())})
	l, err := p.Dial(context.Background(), DialRequest{})
	if err != nil {
		t.Fatal(err)
	}
	conn := l.Conn
	defer conn.Close()
	k := &killRecorder{}
	if l.Detach(k) {
		t.Fatal("Detach before the options were set")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !l.Detach(k) {
		if time.Now().After(deadline) {
			t.Fatal("Detach still refused after optionsDelay")
		}
		time.Sleep(10 * time.Millisecond)
	}
	checkOpts(t, "at detach", sockopts(t, conn), t17)
	if l.Conn != nil {
		t.Error("the detached lease still holds its conn")
	}
	if n, err := p.CloseConnections(tb.addr()); n != 1 || err != nil {
		t.Fatalf("CloseConnections: %d, %v", n, err)
	}
	if k.n.Load() != 1 {
		t.Errorf("Kill called %d times, want 1", k.n.Load())
	}
	l.Release()
	if n, _ := p.CloseConnections(tb.addr()); n != 0 || k.n.Load() != 1 {
		t.Errorf("after Release: closed %d, Kill called %d times", n, k.n.Load())
	}
}
