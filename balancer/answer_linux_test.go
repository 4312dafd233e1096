package balancer

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A payload larger than one send takes goes out whole all the same: awaitAnswer
// writes the rest under the write deadline, then waits; the backend gets the
// header and prefix byte-exact, and its answer is left to read.
func TestDialAwaitAnswerLargePrefix(t *testing.T) {
	req := DialRequest{Client: testClient, Local: testLocal, Prefix: payloadOf(16 << 20), AwaitAnswer: true}
	wire := want(t, ProxyV2, req)
	got := make(chan [sha256.Size]byte, 1)
	addr := serveEach(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		time.Sleep(20 * time.Millisecond) // the socket buffers fill: the first send is partial
		b := make([]byte, len(wire))
		n, _ := io.ReadFull(c, b)
		got <- sha256.Sum256(b[:n])
		c.Write([]byte("S"))
		io.Copy(io.Discard, c)
	})
	p := mustPool(t, PoolConfig{Name: "large", Backends: backendsOf(addr), ProxyProtocol: ProxyV2, ConnectTimeout: 5 * time.Second})
	l, err := p.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	defer l.Conn.Close()
	if <-got != sha256.Sum256(wire) {
		t.Fatal("the backend got bytes that differ from header+prefix")
	}
	l.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer := make([]byte, 1)
	if _, err := io.ReadFull(l.Conn, answer); err != nil || answer[0] != 'S' {
		t.Fatalf("the answer the dial waited for was not left to read: %q %v", answer, err)
	}
}

// sendPeek, the send and the wait for the answer of every L4 dial, allocates
// nothing (issue 11: unix.Recvfrom allocated the peer address it returns).
func TestSendPeekAllocs(t *testing.T) {
	addr := serveEach(t, func(c net.Conn) { io.Copy(c, c) }) // echo: each byte sent is answered
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	payload := []byte{'x'}
	var failed error
	n := testing.AllocsPerRun(100, func() {
		if sent, werr, err := sendPeek(tc, payload); sent != 1 || werr != nil || err != nil {
			failed = err
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if n != 0 {
		t.Errorf("sendPeek allocates %v times", n)
	}
}

// A send that fails reports what conn.Write would have: a *net.OpError
// for "write" around the errno, under attemptWith's prefix.
func TestAwaitAnswerWriteError(t *testing.T) {
	release, reset := make(chan struct{}), make(chan struct{}, 2)
	addr := serveEach(t, func(c net.Conn) {
		<-release
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		reset <- struct{}{}
	})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before serveEach's: its handlers must end
	dial := func() *net.TCPConn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}
	a, b := dial(), dial()
	unblock()
	<-reset
	<-reset
	time.Sleep(50 * time.Millisecond) // the RSTs land
	deadline := time.Now().Add(5 * time.Second)
	got := awaitAnswer(context.Background(), a, payloadOf(100), deadline, deadline)
	_, werr := b.Write(payloadOf(100))
	if werr == nil || got == nil {
		t.Fatalf("write to a reset connection: conn.Write %v, awaitAnswer %v", werr, got)
	}
	wantMsg := strings.ReplaceAll("write proxy header and prefix: "+werr.Error(), b.LocalAddr().String(), a.LocalAddr().String())
	if got.Error() != wantMsg || !errors.Is(got, syscall.ECONNRESET) {
		t.Fatalf("awaitAnswer: %v\nwant:        %v", got, wantMsg)
	}
	var op *net.OpError
	if !errors.As(got, &op) || op.Op != "write" || op.Net != "tcp" {
		t.Fatalf("awaitAnswer: %#v, want a write *net.OpError", got)
	}
}
