package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"sluice/tlsutil/tlstest"
)

func TestIPLimiter(t *testing.T) {
	l := newIPLimiter()
	l.limits = ipLimits{maxConns: 2, rate: 1, burst: 3}
	a := netip.MustParseAddr("198.51.100.1")
	now := time.Unix(1000, 0)
	for i := range 2 {
		if ok, r := l.admit(a, now); !ok {
			t.Fatalf("connection %d refused: %s", i, r)
		}
	}
	if ok, r := l.admit(a, now); ok || r != reasonPerIPConnections {
		t.Fatalf("third live connection: %v %s", ok, r)
	}
	l.done(a)
	if ok, _ := l.admit(a, now); !ok { // the third token
		t.Fatal("a slot freed but refused")
	}
	l.done(a)
	if ok, r := l.admit(a, now); ok || r != reasonPerIPRate {
		t.Fatalf("bucket empty: %v %s", ok, r)
	}
	if ok, _ := l.admit(a, now.Add(1500*time.Millisecond)); !ok {
		t.Fatal("a token refilled after 1.5 s at 1/s but refused")
	}
}

// IPv6 clients are one client per /64; IPv4-mapped addresses are IPv4.
func TestClientKey(t *testing.T) {
	k := func(s string) netip.Addr {
		a, ok := clientKey(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)))
		if !ok {
			t.Fatalf("%s: no key", s)
		}
		return a
	}
	if k("[2001:db8:1:2:aaaa::1]:5") != k("[2001:db8:1:2:bbbb::9]:6") {
		t.Fatal("two addresses of one /64 are two clients")
	}
	if k("[2001:db8:1:2::1]:5") == k("[2001:db8:1:3::1]:5") {
		t.Fatal("two /64s are one client")
	}
	if k("[::ffff:192.0.2.1]:5") != k("192.0.2.1:7") {
		t.Fatal("an IPv4-mapped address is not its IPv4 client")
	}
}

// A flood of distinct addresses cannot grow the table past its sweep size
// with clients that hold no connection.
func TestIPLimiterBounded(t *testing.T) {
	l := newIPLimiter()
	l.limits = ipLimits{maxConns: 512, rate: 100, burst: 200}
	now := time.Unix(1000, 0)
	for i := range 3 * limiterSweepAt {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if ok, _ := l.admit(a, now); !ok {
			t.Fatal("refused")
		}
		l.done(a)
	}
	if n := l.size(); n > limiterSweepAt {
		t.Fatalf("%d clients tracked after a flood, bound %d", n, limiterSweepAt)
	}
}

// Through a listener: the fourth live connection from one address is
// closed at once while another address gets through; a freed slot is
// usable again; the bucket refuses past its burst.
func TestPerIPLimitsOnListener(t *testing.T) {
	hello := tlstest.CaptureClientHello(t, &tls.Config{ServerName: "lim.game.test"})
	be, got := captureBackend(t, len(hello))
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
max_connections_per_ip = 3
new_connections_per_ip = { rate = 0.001, burst = 6 }
[routes.r]
listener = "public"
sni = ["lim.game.test"]
pool = "p"
[pools.p]
backends = [{ address = %q }]
`, be.addr))
	from := func(ip byte) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, ip)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", l.addr("public").String())
		if err != nil {
			// A refusal is a reset right after accept: on loopback it can
			// beat the dialer's own check of the connect (SO_ERROR).
			t.Logf("dial: %v", err)
			return deadConn{}
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	served := func(c net.Conn) {
		t.Helper()
		c.Write(hello)
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("not served")
		}
	}
	var held []net.Conn
	for range 3 {
		c := from(1)
		served(c)
		held = append(held, c)
	}
	over := from(1)
	over.Write(hello)
	if b, _ := readAllTimeout(over, 5*time.Second); len(b) != 0 {
		t.Fatalf("the fourth connection got %q", b)
	}
	l.waitRejected(t, reasonPerIPConnections, 1)
	served(from(2)) // another client is not limited by the first

	// Freed slots are usable again; the bucket (burst 6, refilling once in
	// 1,000 s) refuses the seventh new connection while a slot is free.
	lim := l.rt.Load().Listeners["public"].limiter
	one := netip.MustParseAddr("127.0.0.1")
	held[0].Close()
	waitFor(t, "a freed slot", func() bool { return lim.live(one) == 2 })
	c4 := from(1)
	served(c4) // token 4
	held[1].Close()
	held[2].Close()
	waitFor(t, "two freed slots", func() bool { return lim.live(one) == 1 })
	c5 := from(1)
	served(c5)      // token 5
	served(from(1)) // token 6: 3 live
	c5.Close()
	waitFor(t, "a freed slot", func() bool { return lim.live(one) == 2 })
	last := from(1)
	last.Write(hello)
	if b, _ := readAllTimeout(last, 5*time.Second); len(b) != 0 {
		t.Fatalf("past the burst: got %q", b)
	}
	l.waitRejected(t, reasonPerIPRate, 1)
}

// deadConn stands for a connection reset before the dial returned.
type deadConn struct{ net.Conn }

func (deadConn) Write(b []byte) (int, error)     { return len(b), nil }
func (deadConn) Read([]byte) (int, error)        { return 0, io.EOF }
func (deadConn) Close() error                    { return nil }
func (deadConn) SetDeadline(time.Time) error     { return nil }
func (deadConn) SetReadDeadline(time.Time) error { return nil }

// The defaults: 512 live connections and 100 new a second (burst 200) per
// client, per listener.
func TestPerIPDefaults(t *testing.T) {
	c, err := DecodeConfig([]byte(`
[listeners.public]
address = "127.0.0.1:0"
plain_route = "raw"
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
backends = [{ address = "127.0.0.1:9" }]
`))
	must(t, err)
	cc, err := c.Compile()
	must(t, err)
	if got := cc.listenerSpecs["public"].perIP; got != (ipLimits{maxConns: 512, rate: 100, burst: 200}) {
		t.Fatalf("defaults %+v", got)
	}
}

// live is the number of live connections of key (tests).
func (l *ipLimiter) live(key netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.clients[key]; e != nil {
		return e.active
	}
	return 0
}

// size is the number of clients tracked (tests).
func (l *ipLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}
