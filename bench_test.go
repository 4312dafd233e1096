package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
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
	c, err := DecodeConfig(fmt.Appendf(nil, `
[listeners.public]
address = "127.0.0.1:0"
[routes.r]
listener = "public"
sni = ["bench.test"]
pool = "p"
[pools.p]
health = { check = "none" }
backends = [{ address = %q }]
`, ln.Addr().String()))
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
	defer s.shutdown(0)
	addr := s.addr("public").String()
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
// sockets without goroutines, so the deltas are sluice's own. It is a
// measurement, not a test: scripts/bench.sh measures the process RSS side by
// side with HAProxy and nginx.
func BenchmarkIdleL4Memory(b *testing.B) {
	const conns = 2000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	backendConns := make(chan net.Conn, conns)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			backendConns <- c
		}
	}()
	c, err := DecodeConfig(fmt.Appendf(nil, `
[listeners.public]
address = "127.0.0.1:0"
[routes.r]
listener = "public"
sni = ["bench.test"]
pool = "p"
[pools.p]
health = { check = "none" }
backends = [{ address = %q }]
`, ln.Addr().String()))
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
	defer s.shutdown(0)
	addr := s.addr("public").String()
	hello := tlstest.CaptureClientHello(b, &tls.Config{ServerName: "bench.test", CurvePreferences: []tls.CurveID{tls.X25519}})
	msg := make([]byte, len(hello)+64)
	copy(msg, hello)

	for b.Loop() {
		runtime.GC()
		var m0 runtime.MemStats
		runtime.ReadMemStats(&m0)
		g0 := runtime.NumGoroutine()
		clients := make([]net.Conn, 0, conns)
		held := make([]net.Conn, 0, conns)
		for range conns {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			clients = append(clients, c)
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
			held = append(held, bc)
		}
		time.Sleep(100 * time.Millisecond)
		runtime.GC()
		runtime.GC() // a second cycle shrinks the stacks the first one found oversized
		var m1 runtime.MemStats
		runtime.ReadMemStats(&m1)
		g1 := runtime.NumGoroutine()
		if p := os.Getenv("SLUICE_HEAPPROF"); p != "" {
			f, _ := os.Create(p)
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
		b.ReportMetric(float64(g1-g0)/conns, "goroutines/conn")
		b.ReportMetric(float64(int64(m1.StackInuse)-int64(m0.StackInuse))/conns, "stack-B/conn")
		b.ReportMetric(float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/conns, "heap-B/conn")
		b.ReportMetric(float64(int64(m1.Sys)-int64(m0.Sys))/conns, "sys-B/conn")
		for i := range clients {
			clients[i].Close()
			held[i].Close()
		}
		deadline := time.Now().Add(10 * time.Second)
		for s.active.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
}
