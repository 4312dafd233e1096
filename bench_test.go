package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
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
