package l7

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// fdOf makes c's socket a descriptor of its own, as the raw dial's: a
// nonblocking duplicate, c closed.
func fdOf(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	return fd
}

// An upgrade's backend dialled raw (fdUpstream) reads, writes, waits and
// fails as Go's conn does: readAnswer, relayRefusal and the tunnel's
// pipelined write see the same bytes and the same errors (isTimeout for
// the 504, io.EOF, a reset) on both.
func TestFDUpstreamBehavesAsTCPConn(t *testing.T) {
	sameAsTCPConn(t, func(t *testing.T, c *net.TCPConn) sockUnderTest {
		u := newFDUpstream(context.Background(), fdOf(t, c), c.RemoteAddr())
		t.Cleanup(func() { u.Close() })
		return sockUnderTest{u, u.SetReadDeadline, u.SetWriteDeadline, u.Close}
	})
}
