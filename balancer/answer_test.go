package balancer

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// serveEach runs handle on a goroutine for each accepted connection until
// the test ends.
func serveEach(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// T12 "accepted and closed", D2: a backend that accepts, lets the header and
// hello land in its socket, then resets (or closes) without answering fails
// the attempt when the dial awaits an answer; the next backend gets exactly
// the same PROXY header and hello, and its answer is still there to read.
// close: with the bytes unread, the close is a reset too; fin: the backend
// reads them first, so its close is a FIN (the peek's EOF). Go's dial and
// the raw dial alike (dialKinds).
func TestDialAwaitAnswerRetriesAcceptThenClose(t *testing.T) {
	for _, k := range dialKinds {
		t.Run(k.name, func(t *testing.T) {
			for _, how := range []string{"reset", "close", "fin"} {
				t.Run(how, func(t *testing.T) {
					req := DialRequest{Client: testClient, Local: testLocal, SNI: "game.example.com", Prefix: payloadOf(1500), AwaitAnswer: true, Wait: k.wait}
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
					c := leaseConn(t, l)
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
						t.Fatalf("the closing backend has %d failures, want 1 (a passive failure)", f)
					}
				})
			}
		})
	}
}

// A backend that is only slow to answer is not a failed one: after the
// connect timeout the dial returns its connection, on the first attempt.
func TestDialAwaitAnswerKeepsSlowBackend(t *testing.T) {
	for _, k := range dialKinds {
		t.Run(k.name, func(t *testing.T) {
			slow := serveEach(t, func(c net.Conn) { io.Copy(io.Discard, c) })
			p := mustPool(t, PoolConfig{Name: "slow", Backends: backendsOf(slow), ConnectTimeout: 200 * time.Millisecond})
			t0 := time.Now()
			l, err := p.Dial(context.Background(), DialRequest{Prefix: payloadOf(100), AwaitAnswer: true, Wait: k.wait})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Release()
			defer leaseConn(t, l).Close()
			if d := time.Since(t0); d < 200*time.Millisecond {
				t.Fatalf("returned after %v, before the answer wait ended", d)
			}
			if l.Attempts != 1 || p.Backends()[0].Failures() != 0 {
				t.Fatalf("attempts %d, failures %d; want 1 and 0", l.Attempts, p.Backends()[0].Failures())
			}
		})
	}
}

// Cancelling ctx (drain) ends the wait at once, and is not the backend's
// failure.
func TestDialAwaitAnswerCancel(t *testing.T) {
	for _, k := range dialKinds {
		t.Run(k.name, func(t *testing.T) {
			silent := serveEach(t, func(c net.Conn) { io.Copy(io.Discard, c) })
			p := mustPool(t, PoolConfig{Name: "cancel", Backends: backendsOf(silent), ConnectTimeout: time.Minute})
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			l, err := p.Dial(ctx, DialRequest{Prefix: payloadOf(100), AwaitAnswer: true, Wait: k.wait})
			if l != nil {
				leaseConn(t, l).Close()
				l.Release()
				t.Fatal("lease after cancel")
			}
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			if b := p.Backends()[0]; b.Failures() != 0 || b.Active() != 0 {
				t.Fatalf("failures %d active %d, want 0 and 0", b.Failures(), b.Active())
			}
		})
	}
}
