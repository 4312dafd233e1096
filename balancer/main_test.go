package balancer

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/goleak"

	"sluice/balancer/balancertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// received is what a test backend saw on one connection.
type received struct {
	header *proxyproto.Header // nil in raw mode
	data   []byte             // bytes after the header (raw mode: all bytes)
	err    error
}

// testBackend is a real loopback listener. Each accepted connection is read
// to EOF (raw, or through go-proxyproto with REQUIRE) and reported on got.
// Cleanup closes the listener and every connection and waits for the
// goroutines.
type testBackend struct {
	ln    net.Listener
	parse bool
	got   chan received

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startBackend(t *testing.T, network, addr string, parse bool) *testBackend {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBackend{ln: ln, parse: parse, got: make(chan received, 64), conns: map[net.Conn]struct{}{}}
	tb.wg.Add(1)
	go tb.acceptLoop()
	t.Cleanup(tb.close)
	return tb
}

func (tb *testBackend) addr() string { return tb.ln.Addr().String() }

func (tb *testBackend) acceptLoop() {
	defer tb.wg.Done()
	for {
		c, err := tb.ln.Accept()
		if err != nil {
			return
		}
		tb.mu.Lock()
		tb.conns[c] = struct{}{}
		tb.mu.Unlock()
		tb.wg.Add(1)
		go tb.serve(c)
	}
}

func (tb *testBackend) serve(c net.Conn) {
	defer tb.wg.Done()
	defer func() {
		tb.mu.Lock()
		delete(tb.conns, c)
		tb.mu.Unlock()
		c.Close()
	}()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var r received
	if tb.parse {
		// A buffer larger than any header: go-proxyproto's default 256 bytes
		// is enough for the header itself, but a large one keeps the test
		// independent of how it hands over buffered payload.
		pc := proxyproto.NewConn(c, proxyproto.WithBufferSize(64<<10), proxyproto.WithPolicy(proxyproto.REQUIRE))
		r.data, r.err = io.ReadAll(pc)
		r.header = pc.ProxyHeader()
	} else {
		r.data, r.err = io.ReadAll(c)
	}
	tb.got <- r
}

func (tb *testBackend) close() {
	tb.ln.Close()
	tb.mu.Lock()
	for c := range tb.conns {
		c.Close()
	}
	tb.mu.Unlock()
	tb.wg.Wait()
}

// next waits for the next connection's report.
func (tb *testBackend) next(t *testing.T) received {
	t.Helper()
	select {
	case r := <-tb.got:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("backend received nothing")
		return received{}
	}
}

// closedAddr is a loopback address that refuses connections for the whole test.
var closedAddr = balancertest.RefusedAddr

func mustPool(t testing.TB, cfg PoolConfig) *Pool {
	t.Helper()
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func backendsOf(addrs ...string) []BackendConfig {
	bs := make([]BackendConfig, len(addrs))
	for i, a := range addrs {
		bs[i] = BackendConfig{Address: a}
	}
	return bs
}

// finish half-closes the lease's conn so the backend reads EOF, then closes
// and releases it.
func finish(t *testing.T, l *Lease) {
	t.Helper()
	leaseConn(t, l)
	if err := l.Conn.CloseWrite(); err != nil {
		t.Error(err)
	}
	t.Cleanup(func() {
		l.Conn.Close()
		l.Release()
	})
}

// parseHeader reads one PROXY header from b with go-proxyproto.
func parseHeader(t *testing.T, b []byte) (*proxyproto.Header, []byte) {
	t.Helper()
	br := bufio.NewReaderSize(bytes.NewReader(b), len(b)+16)
	h, err := proxyproto.Read(br)
	if err != nil {
		t.Fatalf("parse header %q: %v", b, err)
	}
	rest, _ := io.ReadAll(br)
	return h, rest
}

// dialKind is a way Dial connects: Go's dial, or (Linux) the raw dial
// with a test Wait (rawdial_linux_test.go adds it).
type dialKind struct {
	name string
	wait Waiter
}

var dialKinds = []dialKind{{"go", nil}}

// leaseConn returns l's conn; an FD lease (the raw dial) becomes a Conn
// one first, for the tests' reads and closes: net.FileConn dups the
// descriptor, and the original is closed.
func leaseConn(t *testing.T, l *Lease) *net.TCPConn {
	t.Helper()
	if l.Conn != nil {
		return l.Conn
	}
	if l.FD < 0 {
		t.Fatal("lease with neither Conn nor FD")
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
