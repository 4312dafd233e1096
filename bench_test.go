package main

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sluice/l4"
	"testing"
	"time"

	"go.uber.org/zap"

	"sluice/tlsutil/tlstest"
)

// BenchmarkL4Connection is one whole L4 connection through an in-process
// sluice: connect, ClientHello, route, dial the backend, 64-byte echo,
// close. Client and backend run in this process too, so ns/op is an upper
// bound; allocs/op is sluice's per-connection allocation plus the test's.
func BenchmarkL4Connection(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	addr := benchServer(b, benchConfig("l4", ln.Addr().String()))
	hello := tlstest.CaptureClientHello(b, &tls.Config{ServerName: "bench.test", CurvePreferences: []tls.CurveID{tls.X25519}})
	msg := make([]byte, len(hello)+64)
	copy(msg, hello)
	buf := make([]byte, len(msg))

	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkIdleL4Memory holds idle L4 connections through an in-process
// sluice and reports what each one costs sluice: goroutines, stack bytes and
// live heap bytes (after a GC). The clients and the backend hold their
// sockets without goroutines, so the deltas are sluice's own (plus the
// test's two sockets per connection, about 0.6 KiB of heap). It is a
// measurement, not a test: scripts/bench.sh measures the process RSS side by
// side with HAProxy and nginx. SLUICE_HEAPPROF=file writes a heap profile
// while the connections are open.
func BenchmarkIdleL4Memory(b *testing.B) {
	backendAddr, backendConns := holdingBackend(b, nil)
	addr := benchServer(b, benchConfig("l4", backendAddr))
	hello := tlstest.CaptureClientHello(b, &tls.Config{ServerName: "bench.test", CurvePreferences: []tls.CurveID{tls.X25519}})
	msg := make([]byte, len(hello)+64)
	copy(msg, hello)
	measureIdle(b, true, func() (client, backend net.Conn) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		bc := <-backendConns
		// Read the hello and the 64 bytes, and echo 64 bytes back, so
		// both directions of the relay have run once.
		if _, err := io.ReadFull(bc, make([]byte, len(msg))); err != nil {
			b.Fatal(err)
		}
		if _, err := bc.Write(msg[:64]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 64)); err != nil {
			b.Fatal(err)
		}
		return c, bc
	})
}

// BenchmarkIdleWSSMemory is BenchmarkIdleL4Memory for wss:// connections:
// TLS terminated by sluice, a WebSocket upgrade to the backend, one message
// each way, then idle. The test's client end is a *tls.Conn, whose state
// (about 3 KiB) counts here too.
func BenchmarkIdleWSSMemory(b *testing.B) {
	backendAddr, backendConns := holdingBackend(b, func(c net.Conn) {
		if err := acceptUpgrade(c); err != nil {
			b.Error(err)
		}
	})
	addr := benchServer(b, benchConfig("l7", backendAddr))
	cfg, upgrade, frame := benchWSSClient()
	measureIdle(b, true, func() (client, backend net.Conn) {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.WriteString(c, upgrade); err != nil {
			b.Fatal(err)
		}
		bc := <-backendConns
		head := make([]byte, 0, 256)
		for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
			var one [1]byte
			if _, err := c.Read(one[:]); err != nil {
				b.Fatal(err)
			}
			head = append(head, one[0])
		}
		if !bytes.HasPrefix(head, []byte("HTTP/1.1 101 ")) {
			b.Fatalf("upgrade answered %q", head)
		}
		if _, err := c.Write(frame); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(bc, make([]byte, len(frame))); err != nil {
			b.Fatal(err)
		}
		if _, err := bc.Write([]byte{0x82, 4, 'p', 'o', 'n', 'g'}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 6)); err != nil {
			b.Fatal(err)
		}
		return c, bc
	})
}

// BenchmarkWSSConnection is one whole wss:// connection through an
// in-process sluice: TLS handshake (sluice terminates), WebSocket upgrade
// to the backend, one masked frame each way, close. As for
// BenchmarkL4Connection, ns/op includes the test's client and backend;
// allocs/op is sluice's per-connection allocation plus theirs.
func BenchmarkWSSConnection(b *testing.B) {
	backendAddr, backendConns := holdingBackend(b, func(c net.Conn) { _ = acceptUpgrade(c) })
	stop := make(chan struct{})
	b.Cleanup(func() { close(stop) })
	go func() {
		for {
			var c net.Conn
			select {
			case c = <-backendConns:
			case <-stop:
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 10)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write([]byte{0x82, 4, 'p', 'o', 'n', 'g'})
				}
				io.Copy(io.Discard, c)
			}()
		}
	}()
	addr := benchServer(b, benchConfig("l7", backendAddr))
	cfg, upgrade, frame := benchWSSClient()
	b.ReportAllocs()
	for b.Loop() {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, upgrade); err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			b.Fatalf("upgrade: %v %v", resp, err)
		}
		if _, err := c.Write(frame); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(br, make([]byte, 6)); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// benchConfig is the benchmarks' config: one listener and one route of
// mode ("l4" or "l7") to the backend at addr.
func benchConfig(mode, addr string) string {
	return fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
max_connections_per_ip = 0 # tests open many connections from 127.0.0.1
new_connections_per_ip = { rate = 0 }
[routes.r]
listener = "public"
sni = ["bench.test"]
mode = %q
pool = "p"
[pools.p]
health = { check = "none" }
backends = [{ address = %q }]
`, mode, addr)
}

// benchWSSClient returns the wss:// benchmarks' client config, upgrade
// request and masked "ping" frame.
func benchWSSClient() (cfg *tls.Config, upgrade string, frame []byte) {
	cfg = &tls.Config{ServerName: "bench.test", InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{tls.X25519}}
	upgrade = "GET /ws HTTP/1.1\r\nHost: bench.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	frame = []byte{0x82, 0x80 | 4, 1, 2, 3, 4, 'p' ^ 1, 'i' ^ 2, 'n' ^ 3, 'g' ^ 4}
	return cfg, upgrade, frame
}

// acceptUpgrade reads a WebSocket upgrade request from c and answers 101.
func acceptUpgrade(c net.Conn) error {
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return err
	}
	h := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	_, err = fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		base64.StdEncoding.EncodeToString(h[:]))
	return err
}

// holdingBackend accepts connections, runs greet (if not nil) on each in the
// accept loop, and hands them over without a goroutine per connection.
func holdingBackend(b *testing.B, greet func(net.Conn)) (string, <-chan net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	conns := make(chan net.Conn, idleConns)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if greet != nil {
				greet(c)
			}
			conns <- c
		}
	}()
	return ln.Addr().String(), conns
}

// benchServer starts an in-process sluice on cfg and returns the address of
// its listener "public".
func benchServer(b *testing.B, cfg string) string {
	c, err := DecodeConfig([]byte(cfg))
	if err != nil {
		b.Fatal(err)
	}
	rt, err := c.Validate()
	if err != nil {
		b.Fatal(err)
	}
	s := newServer(rt, zap.NewNop(), zap.NewNop())
	if err := s.listen(); err != nil {
		b.Fatal(err)
	}
	s.serve()
	b.Cleanup(func() { s.shutdown(0) })
	return s.addr("public").String()
}

const idleConns = 2000

// measureIdle opens idleConns connections with open, lets them go idle and
// reports sluice's goroutines, stack, heap and runtime memory per
// connection.
func measureIdle(b *testing.B, shed bool, open func() (client, backend net.Conn)) {
	for b.Loop() {
		runtime.GC()
		var m0 runtime.MemStats
		runtime.ReadMemStats(&m0)
		g0 := runtime.NumGoroutine()
		sheds0 := l4.Sheds()
		held := make([]net.Conn, 0, 2*idleConns)
		for range idleConns {
			c, bc := open()
			held = append(held, c, bc)
		}
		time.Sleep(100 * time.Millisecond)
		if shed {
			// An idle relay sheds Go's state of its sockets (both for
			// L4, the backend's for wss://) after about a second
			// (l4.Options.Owner): measure the idle player's steady
			// state, as a player idle between matches is.
			for end := time.Now().Add(15 * time.Second); l4.Sheds()-sheds0 < idleConns && time.Now().Before(end); {
				time.Sleep(50 * time.Millisecond)
			}
			b.ReportMetric(float64(l4.Sheds()-sheds0)/idleConns, "shed/conn")
		}
		runtime.GC()
		runtime.GC() // a second cycle shrinks the stacks the first one found oversized
		var m1 runtime.MemStats
		runtime.ReadMemStats(&m1)
		g1 := runtime.NumGoroutine()
		if p := os.Getenv("SLUICE_HEAPPROF"); p != "" {
			f, err := os.Create(p)
			if err != nil {
				b.Fatal(err)
			}
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
		b.ReportMetric(float64(g1-g0)/idleConns, "goroutines/conn")
		b.ReportMetric(float64(int64(m1.StackInuse)-int64(m0.StackInuse))/idleConns, "stack-B/conn")
		b.ReportMetric(float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/idleConns, "heap-B/conn")
		b.ReportMetric(float64(int64(m1.Sys)-int64(m0.Sys))/idleConns, "sys-B/conn")
		for _, c := range held {
			c.Close()
		}
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > g0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
}
