package l4

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// checkLeaks fails t if goroutines started during the test outlive it.
//
// goleak sees every goroutine of the process, so a test whose subtests call
// t.Parallel calls it once, in the parent (its cleanup runs after every
// subtest returned), and never inside a parallel subtest, where it would
// count the siblings' goroutines as leaks. Top-level tests do not call
// t.Parallel: each runs alone with its check.
func checkLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// tcpPair returns the two ends of a real loopback TCP connection.
func tcpPair(tb testing.TB) (dialed, accepted *net.TCPConn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		d.Close()
		tb.Fatal(r.err)
	}
	return d.(*net.TCPConn), r.c.(*net.TCPConn)
}

// wrapped hides *net.TCPConn (no splice) but still unwraps for CloseWrite.
type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }

// mode is how the relay's client end looks: the L4 shape (raw TCP, splice),
// a wrapper (buffer path) or the L7 shape (a terminated *tls.Conn).
type mode struct {
	name   string
	path   Path
	tls    bool
	start  bool   // run the relay with Start (how the l4 path runs it) instead of Relay
	engine Engine // the engine asked for (EngineEpoll runs TCP↔TCP, and TLS over an nbConn)
	nb     bool   // the relay's *tls.Conn runs over an nbConn (as l7's wss:// tunnels)
	shed   bool   // Options.Owner set: the relay sheds its conns (testOwner)
	fd     bool   // the backend goes to StartSockets as a descriptor (balancer's raw dial)
	cfd    bool   // with fd, the client too (the l4 path's raw accept)
}

// testOwner is an Owner that always lets the relay detach.
type testOwner struct {
	mu sync.Mutex
	k  Killer
}

func (o *testOwner) Detach(k Killer) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.k = k
	return true
}

func (o *testOwner) killer() Killer {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.k
}

var modes = []mode{
	{name: "splice", path: PathSplice},
	{name: "buffer", path: PathBuffer},
	{name: "tls", path: PathBuffer, tls: true},
	{name: "splice-start", path: PathSplice, start: true},
	{name: "epoll", path: PathSplice, engine: EngineEpoll},
	{name: "epoll-start", path: PathSplice, start: true, engine: EngineEpoll},
	{name: "epoll-tls", path: PathBuffer, tls: true, nb: true, engine: EngineEpoll},
	{name: "epoll-tls-start", path: PathBuffer, tls: true, nb: true, start: true, engine: EngineEpoll},
	// The relay sheds its *net.TCPConns at once (shedAtStart) and runs on
	// descriptors of its own, as an idle L4 player's relay does.
	{name: "epoll-shed", path: PathSplice, start: true, engine: EngineEpoll, shed: true},
	// A wss:// tunnel's relay: the backend socket sheds, the TLS client's
	// stays.
	{name: "epoll-tls-shed", path: PathBuffer, tls: true, nb: true, start: true, engine: EngineEpoll, shed: true},
}

// nbConn is the transport l7's recordWriter is under a *tls.Conn, reduced
// to the NBIO switch: the epoll engine can drive a *tls.Conn over it.
type nbConn struct {
	net.Conn
	nb NBIO
}

func (c *nbConn) Read(p []byte) (int, error) {
	if c.nb.On() {
		return c.nb.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *nbConn) Write(p []byte) (int, error) {
	if c.nb.On() {
		return c.nb.Write(p)
	}
	return c.Conn.Write(p)
}

func (c *nbConn) NetConn() net.Conn  { return c.Conn }
func (c *nbConn) Nonblocking() *NBIO { return &c.nb }

// tcpModes are the TCP↔TCP modes, one per engine.
var tcpModes = []mode{modes[0], modes[4], modes[8]}

var testCert = sync.OnceValues(func() (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sluice.test"},
		DNSNames:     []string{"sluice.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
})

// tlsPair runs a handshake over a TCP pair: server is the relay's end (as
// l7 hands it over), client is the test's.
func tlsPair(tb testing.TB, clientRaw, serverRaw net.Conn) (client, server *tls.Conn) {
	tb.Helper()
	cert, pool := testCert()
	server = tls.Server(serverRaw, &tls.Config{Certificates: []tls.Certificate{cert}})
	client = tls.Client(clientRaw, &tls.Config{RootCAs: pool, ServerName: "sluice.test"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- server.HandshakeContext(ctx) }()
	if err := client.HandshakeContext(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
	return client, server
}

// harness is one relay between a test client and a test backend.
type harness struct {
	client    net.Conn     // the test's client end (*net.TCPConn or *tls.Conn)
	clientRaw *net.TCPConn // the socket under client
	backend   *net.TCPConn // the test's backend end
	cancel    context.CancelFunc
	start     time.Time
	statsc    chan Stats
	endedc    chan time.Time
	stats     Stats
	endedAt   time.Time
	gotResult bool
	owner     *testOwner // m.shed
}

func startRelay(tb testing.TB, m mode, opts Options) *harness {
	tb.Helper()
	cc, rc := tcpPair(tb)
	rb, bc := tcpPair(tb)
	h := &harness{client: cc, clientRaw: cc, backend: bc,
		statsc: make(chan Stats, 1), endedc: make(chan time.Time, 1)}
	var relayClient net.Conn = rc
	switch {
	case m.tls && m.nb:
		h.client, relayClient = tlsPair(tb, cc, &nbConn{Conn: rc})
	case m.tls:
		h.client, relayClient = tlsPair(tb, cc, rc)
	case m.path == PathBuffer:
		relayClient = wrapped{rc}
	}
	// Deadlines a caller may leave behind; Relay must replace them.
	_ = relayClient.SetDeadline(time.Now().Add(-time.Second))
	_ = rb.SetDeadline(time.Now().Add(-time.Second))

	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.start = time.Now()
	opts.Engine = m.engine
	if m.shed {
		h.owner = &testOwner{}
		opts.Owner, opts.ShedClient = h.owner, true // the TLS client is never shed
	}
	if m.start {
		var calls atomic.Int32
		start := Start
		if m.fd {
			start = startFDFromConn(tb, m)
		}
		start(ctx, relayClient, rb, opts, func(st Stats) {
			if calls.Add(1) != 1 {
				tb.Error("Start called done twice")
				return
			}
			// done runs after both conns are closed.
			if _, err := rb.Write([]byte{0}); !errors.Is(err, net.ErrClosed) {
				tb.Errorf("done called with the backend conn open (write: %v)", err)
			}
			h.endedc <- time.Now()
			h.statsc <- st
		})
		if m.shed && runtime.GOOS == "linux" && h.owner.killer() == nil {
			tb.Fatal("the relay did not shed its conns (shedAtStart)")
		}
	} else {
		go func() {
			st := Relay(ctx, relayClient, rb, opts)
			h.endedc <- time.Now()
			h.statsc <- st
		}()
	}
	tb.Cleanup(func() {
		cancel()
		cc.Close()
		bc.Close()
		if _, ok := h.waitFor(20 * time.Second); !ok {
			tb.Error("relay did not return after cleanup")
		}
	})
	return h
}

// waitFor waits up to d for the relay to return.
func (h *harness) waitFor(d time.Duration) (Stats, bool) {
	if h.gotResult {
		return h.stats, true
	}
	select {
	case h.endedAt = <-h.endedc:
		h.stats = <-h.statsc
		h.gotResult = true
		return h.stats, true
	case <-time.After(d):
		return Stats{}, false
	}
}

// wait waits (generously) for the relay to return.
func (h *harness) wait(tb testing.TB) Stats {
	tb.Helper()
	st, ok := h.waitFor(20 * time.Second)
	if !ok {
		tb.Fatal("relay did not return within 20s")
	}
	return st
}

// running reports whether the relay has not returned yet, without waiting.
func (h *harness) running() bool {
	_, ok := h.waitFor(0)
	return !ok
}

// sendN writes n bytes of a seeded pseudo-random stream to c and returns
// their sha256.
func sendN(c net.Conn, n int, seed uint64) ([32]byte, error) {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rng := mrand.NewChaCha8(s)
	sum := sha256.New()
	buf := make([]byte, 64<<10)
	for n > 0 {
		k := min(n, len(buf))
		_, _ = rng.Read(buf[:k])
		sum.Write(buf[:k])
		if _, err := c.Write(buf[:k]); err != nil {
			return [32]byte{}, err
		}
		n -= k
	}
	return [32]byte(sum.Sum(nil)), nil
}

// sumOf is the sha256 sendN(_, n, seed) produces.
func sumOf(n int, seed uint64) [32]byte {
	sum, _ := sendN(discardConn{}, n, seed)
	return sum
}

type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error) { return len(b), nil }

type recvResult struct {
	n   int64
	sum [32]byte
	err error // what ended the read: io.EOF for a clean end
}

// recvAll reads c until an error.
func recvAll(c io.Reader) recvResult {
	sum := sha256.New()
	n, err := io.Copy(sum, c)
	if err == nil {
		err = io.EOF
	}
	return recvResult{n: n, sum: [32]byte(sum.Sum(nil)), err: err}
}

func goRecv(c io.Reader) <-chan recvResult {
	ch := make(chan recvResult, 1)
	go func() { ch <- recvAll(c) }()
	return ch
}

func goSend(c net.Conn, n int, seed uint64, after func(net.Conn)) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := sendN(c, n, seed)
		if err == nil && after != nil {
			after(c)
		}
		ch <- err
	}()
	return ch
}

func within[T any](tb testing.TB, ch <-chan T, d time.Duration, what string) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		tb.Fatalf("%s: nothing within %v", what, d)
		panic("unreachable")
	}
}

func isEOF(err error) bool { return errors.Is(err, io.EOF) }
