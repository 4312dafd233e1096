package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"sluice/l4"
	"sluice/tlsutil"
)

func TestMain(m *testing.M) {
	// Re-exec'd as sluice itself, for tests that need a separate process
	// (resource limits, signals).
	if os.Getenv("SLUICE_TEST_MAIN") == "1" {
		if n, err := strconv.ParseUint(os.Getenv("SLUICE_TEST_NOFILE"), 10, 64); err == nil {
			var lim syscall.Rlimit
			setRlim(&lim.Cur, n)
			setRlim(&lim.Max, n)
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
				fmt.Fprintln(os.Stderr, "setrlimit:", err)
				os.Exit(3)
			}
		}
		os.Exit(run(strings.Fields(os.Getenv("SLUICE_TEST_ARGS")), os.Stdout, os.Stderr))
	}
	// Re-exec'd as a backend, for tests that kill it (kill_test.go).
	if addr := os.Getenv("SLUICE_TEST_BACKEND"); addr != "" {
		os.Exit(runEchoBackend(addr))
	}
	goleak.VerifyTestMain(m)
}

// setRlim sets a field of syscall.Rlimit: uint64 on Linux and macOS, int64
// on FreeBSD.
func setRlim[T ~int64 | ~uint64](f *T, n uint64) { *f = T(n) }

// lb is an in-process sluice under test.
type lb struct {
	*server
	logs *observer.ObservedLogs
}

// startLB validates cfg (TOML), binds its listeners (use 127.0.0.1:0) and
// serves until the test ends.
func startLB(t *testing.T, cfg string) *lb {
	t.Helper()
	c, err := DecodeConfig([]byte(cfg))
	if err != nil {
		t.Fatalf("decode: %v\n%s", err, cfg)
	}
	// Tests count backend connections: active health checks (on by default)
	// only where a test asks for them.
	for _, p := range c.Pools {
		if p.Health.Check == "" {
			p.Health.Check = "none"
		}
	}
	// Tests open many connections from 127.0.0.1 at once: per-client
	// limits (on by default) only where a test sets them.
	zero := 0
	for _, l := range c.Listeners {
		if l.MaxConnectionsPerIP == nil {
			l.MaxConnectionsPerIP = &zero
		}
		if l.NewConnectionsPerIP == nil {
			l.NewConnectionsPerIP = &RateConfig{}
		}
	}
	rt, err := c.Validate()
	if err != nil {
		t.Fatalf("validate: %v\n%s", err, cfg)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	s := newServer(rt, log, log)
	if err := s.listen(); err != nil {
		t.Fatal(err)
	}
	s.serve()
	t.Cleanup(func() { s.shutdown(0) })
	return &lb{server: s, logs: logs}
}

// accessLines returns the access-log entries ("connection closed") so far.
func (l *lb) accessLines() []observer.LoggedEntry {
	return l.logs.FilterMessage("connection closed").AllUntimed()
}

// waitAccess waits (bounded) until n access lines were written.
func (l *lb) waitAccess(t *testing.T, n int) []observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if e := l.accessLines(); len(e) >= n {
			return e
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("want %d access lines, have %d", n, len(l.accessLines()))
	return nil
}

// waitRejected waits (bounded) until the reason's counter reaches n.
func (l *lb) waitRejected(t *testing.T, reason l4.Reason, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if l.rejectedCount(reason) >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("rejected[%s] = %d, want >= %d", reason, l.rejectedCount(reason), n)
}

func fieldOf(e observer.LoggedEntry, key string) any {
	return e.ContextMap()[key]
}

// backend is a real loopback server for tests, counting what it accepted.
type backend struct {
	ln       net.Listener
	addr     string
	mu       sync.Mutex
	accepted int
	wg       sync.WaitGroup
}

func (b *backend) accepts() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accepted
}

// startBackend serves every accepted connection with handle until the test ends.
func startBackend(t *testing.T, ln net.Listener, handle func(net.Conn)) *backend {
	t.Helper()
	b := &backend{ln: ln, addr: ln.Addr().String()}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.accepted++
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

func listenTCP(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// echoBackend is a raw TCP echo server.
func echoBackend(t *testing.T) *backend {
	return startBackend(t, listenTCP(t), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.Copy(c, c)
	})
}

// tlsEchoBackend is a TLS echo server with its own self-signed certificate
// for name; it returns the certificate so tests can check passthrough.
func tlsEchoBackend(t *testing.T, name string) (*backend, *x509.Certificate) {
	t.Helper()
	cert, err := tlsutil.SelfSigned([]string{name}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(listenTCP(t), &tls.Config{Certificates: []tls.Certificate{cert}})
	b := startBackend(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.Copy(c, c)
	})
	return b, cert.Leaf
}

// proxyResult is what a PROXY-reading backend saw on one connection.
type proxyResult struct {
	header  *proxyproto.Header
	payload []byte
	err     error
}

// proxyBackend parses a required PROXY header with go-proxyproto, then
// reports it and the first n payload bytes, and echoes "ok".
func proxyBackend(t *testing.T, n int) (*backend, chan proxyResult) {
	t.Helper()
	ch := make(chan proxyResult, 16)
	b := startBackend(t, listenTCP(t), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// The default 256-byte buffer would swallow hello bytes behind the header.
		br := bufio.NewReaderSize(c, 64<<10)
		h, err := proxyproto.Read(br)
		if err != nil {
			ch <- proxyResult{err: err}
			return
		}
		buf := make([]byte, n)
		_, err = io.ReadFull(br, buf)
		ch <- proxyResult{header: h, payload: buf, err: err}
		io.WriteString(c, "ok")
	})
	return b, ch
}

// captureBackend records the first n bytes of each connection.
func captureBackend(t *testing.T, n int) (*backend, chan []byte) {
	t.Helper()
	ch := make(chan []byte, 16)
	b := startBackend(t, listenTCP(t), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, n)
		k, _ := io.ReadFull(c, buf)
		ch <- buf[:k]
		// Answer, as a TLS server answers a hello: sluice retries a backend
		// that closes without a byte (DialRequest.AwaitAnswer).
		c.Write([]byte{0x15})
	})
	return b, ch
}

func dial(t *testing.T, addr net.Addr) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// readAllTimeout reads until EOF or error, bounded.
func readAllTimeout(c net.Conn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	return io.ReadAll(c)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
