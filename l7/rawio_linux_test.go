//go:build linux

package l7

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// errClass is what callers of Read and Write look at in an error.
func errClass(err error) string {
	if err == nil {
		return "nil"
	}
	var ne net.Error
	var oe *net.OpError
	s := ""
	switch {
	case err == io.EOF:
		return "EOF"
	case errors.Is(err, os.ErrDeadlineExceeded):
		s = "deadline"
	case errors.Is(err, net.ErrClosed):
		s = "closed"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		s = "reset"
	default:
		s = "other: " + err.Error()
	}
	if errors.As(err, &ne) && ne.Timeout() {
		s += " timeout"
	}
	if errors.As(err, &oe) {
		s += " op=" + oe.Op
	}
	// The text once: "read tcp A->B: i/o timeout", not an OpError in one.
	s += " ops=" + strconv.Itoa(strings.Count(err.Error(), "tcp "))
	return s
}

// sockUnderTest is a socket's Read and Write as one of sluice's paths
// gives them (a *net.TCPConn, rawSock, fdUpstream), with the deadlines and
// the close that go with them.
type sockUnderTest struct {
	rw interface {
		Read([]byte) (int, error)
		Write([]byte) (int, error)
	}
	readDeadline, writeDeadline func(time.Time) error
	close                       func() error
}

func tcpConnUnderTest(c *net.TCPConn) sockUnderTest {
	return sockUnderTest{c, c.SetReadDeadline, c.SetWriteDeadline, c.Close}
}

// sockCases are what the l7 path meets on a socket: bytes that come late,
// the end, a reset, deadlines, a peer that reads slowly, a closed conn.
var sockCases = []struct {
	name string
	run  func(s sockUnderTest, peer *net.TCPConn) string
}{
	{"read data then EOF", func(s sockUnderTest, peer *net.TCPConn) string {
		go func() {
			time.Sleep(10 * time.Millisecond) // the Read waits for it
			_, _ = peer.Write([]byte("HTTP/1.1 101 Switching Protocols\r\n\r\n"))
			peer.CloseWrite()
		}()
		got, err := io.ReadAll(readerOf(s.rw))
		return string(got) + " " + errClass(err) + " " + errClass(readErr(s.rw))
	}},
	{"read deadline", func(s sockUnderTest, peer *net.TCPConn) string {
		_ = s.readDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := s.rw.Read(make([]byte, 8))
		return errClass(err)
	}},
	{"read after close", func(s sockUnderTest, peer *net.TCPConn) string {
		_ = s.close()
		_, err := s.rw.Read(make([]byte, 8))
		return errClass(err)
	}},
	{"read of a reset", func(s sockUnderTest, peer *net.TCPConn) string {
		_ = peer.SetLinger(0)
		peer.Close()
		_, err := s.rw.Read(make([]byte, 8))
		return errClass(err)
	}},
	{"large write to a slow reader", func(s sockUnderTest, peer *net.TCPConn) string {
		want := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB: many EAGAINs
		got := make(chan []byte)
		go func() {
			var b bytes.Buffer
			buf := make([]byte, 64<<10)
			for b.Len() < len(want) {
				time.Sleep(time.Millisecond)
				n, err := peer.Read(buf)
				b.Write(buf[:n])
				if err != nil {
					break
				}
			}
			got <- b.Bytes()
		}()
		_ = s.writeDeadline(time.Now().Add(time.Minute))
		n, err := s.rw.Write(want)
		same := bytes.Equal(<-got, want)
		return errClass(err) + " " + strconv.Itoa(n) + " " + strconv.FormatBool(same)
	}},
	{"write deadline", func(s sockUnderTest, peer *net.TCPConn) string {
		_ = s.writeDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := s.rw.Write(make([]byte, 64<<20)) // more than the buffers hold
		return errClass(err)
	}},
	{"write after a reset", func(s sockUnderTest, peer *net.TCPConn) string {
		_ = peer.SetLinger(0)
		peer.Close()
		time.Sleep(10 * time.Millisecond)
		var err error
		for range 100 {
			if _, err = s.rw.Write([]byte("x")); err != nil {
				break
			}
		}
		return errClass(err)
	}},
	{"write after close", func(s sockUnderTest, peer *net.TCPConn) string {
		_ = s.close()
		_, err := s.rw.Write([]byte("x"))
		return errClass(err)
	}},
}

// sameAsTCPConn runs every sockCase on a *net.TCPConn and on what under
// makes of another one, and wants the same outcome of both.
func sameAsTCPConn(t *testing.T, under func(t *testing.T, c *net.TCPConn) sockUnderTest) {
	for _, tc := range sockCases {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			c1, p1 := tcpPair(t)
			want := tc.run(tcpConnUnderTest(c1), p1)
			c2, p2 := tcpPair(t)
			got := tc.run(under(t, c2), p2)
			if got != want {
				t.Fatalf("got %q, *net.TCPConn: %q", got, want)
			}
			t.Logf("both: %q", got)
		})
	}
}

// The raw socket calls (rawSock) behave as the *net.TCPConn's own: the
// same bytes, the same waits, and errors that errors.Is, net.Error and
// *net.OpError see the same: the route's timeouts, 408s and access
// reasons depend on them.
func TestRawSockBehavesAsTCPConn(t *testing.T) {
	sameAsTCPConn(t, func(t *testing.T, c *net.TCPConn) sockUnderTest {
		s := newSockIO(c)
		if s == nil {
			t.Fatal("no raw socket calls on Linux")
		}
		return sockUnderTest{s, c.SetReadDeadline, c.SetWriteDeadline, c.Close}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func readerOf(s interface{ Read([]byte) (int, error) }) io.Reader { return readerFunc(s.Read) }

// readErr is the error of one more Read after the end.
func readErr(s interface{ Read([]byte) (int, error) }) error {
	_, err := s.Read(make([]byte, 1))
	return err
}
