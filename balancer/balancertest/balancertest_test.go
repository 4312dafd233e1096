package balancertest

import (
	"net"
	"testing"
	"time"
)

// Pins what Connected counts: the descriptors of both ends of a loopback
// connection (the listener's port at one end of each) and their dups, not
// the listener, not other sockets.
func TestConnected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	before := ReadFDs(t)
	if n := before.Connected(port); n != 0 {
		t.Fatalf("Connected(%d) = %d before any connection, want 0 (the listener is not counted)", port, n)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	o, err := net.Dial("tcp", other.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	after := ReadFDs(t)
	if n := after.Connected(port); n != 2 {
		t.Fatalf("Connected(%d) = %d with one connection, want 2 (its two ends); sockets %+v", port, n, after.Sockets)
	}
	if after.Total < before.Total+3 {
		t.Errorf("total %d → %d, want at least +3", before.Total, after.Total)
	}
	// A dup of a socket is one more descriptor to count.
	dup, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer dup.Close()
	if n := ReadFDs(t).Connected(port); n != 3 {
		t.Fatalf("Connected(%d) = %d with one end dup'ed, want 3", port, n)
	}
}

// A RefusedAddr has a port of its own and refuses connections.
func TestRefusedAddr(t *testing.T) {
	addr := RefusedAddr(t)
	if _, port, _ := net.SplitHostPort(addr); port == "0" {
		t.Fatalf("no port in %s", addr)
	}
	if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("%s accepted a connection", addr)
	}
}
