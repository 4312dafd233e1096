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

// The raw socket calls (rawSock) behave as the *net.TCPConn's own: the
// same bytes, the same waits, and errors that errors.Is, net.Error and
// *net.OpError see the same: the route's timeouts, 408s and access
// reasons depend on them.
func TestRawSockBehavesAsTCPConn(t *testing.T) {
	type rw interface {
		Read([]byte) (int, error)
		Write([]byte) (int, error)
	}
	cases := []struct {
		name string
		run  func(t *testing.T, c *net.TCPConn, peer *net.TCPConn, io rw) string
	}{
		{"read data then EOF", func(t *testing.T, c, peer *net.TCPConn, s rw) string {
			go func() {
				time.Sleep(10 * time.Millisecond) // the Read waits for it
				_, _ = peer.Write([]byte("hello"))
				peer.CloseWrite()
			}()
			got, err := io.ReadAll(readerOf(s))
			return string(got) + " " + errClass(err) + " " + errClass(readErr(s))
		}},
		{"read deadline", func(t *testing.T, c, peer *net.TCPConn, s rw) string {
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_, err := s.Read(make([]byte, 8))
			return errClass(err)
		}},
		{"read after close", func(t *testing.T, c, peer *net.TCPConn, s rw) string {
			c.Close()
			_, err := s.Read(make([]byte, 8))
			return errClass(err)
		}},
		{"read of a reset", func(t *testing.T, c, peer *net.TCPConn, s rw) string {
			_ = peer.SetLinger(0)
			peer.Close()
			_, err := s.Read(make([]byte, 8))
			return errClass(err)
		}},
		{"large write to a slow reader", func(t *testing.T, c, peer *net.TCPConn, s rw) string {
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
			n, err := s.Write(want)
			same := bytes.Equal(<-got, want)
			return errClass(err) + " " + strconv.Itoa(n) + " " + map[bool]string{true: "same", false: "differ"}[same]
		}},
		{"write deadline", func(t *testing.T, c, peer *net.TCPConn, s rw) string {
			_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			_, err := s.Write(make([]byte, 64<<20)) // more than the buffers hold
			return errClass(err)
		}},
		{"write after a reset", func(t *testing.T, c, peer *net.TCPConn, s rw) string {
			_ = peer.SetLinger(0)
			peer.Close()
			time.Sleep(10 * time.Millisecond)
			var err error
			for range 100 {
				if _, err = s.Write([]byte("x")); err != nil {
					break
				}
			}
			return errClass(err)
		}},
		{"write after close", func(t *testing.T, c, peer *net.TCPConn, s rw) string {
			c.Close()
			_, err := s.Write([]byte("x"))
			return errClass(err)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c1, p1 := tcpPair(t)
			want := tc.run(t, c1, p1, c1)
			c2, p2 := tcpPair(t)
			s := newSockIO(c2)
			if s == nil {
				t.Fatal("no raw socket calls on Linux")
			}
			got := tc.run(t, c2, p2, s)
			if got != want {
				t.Fatalf("raw: %q, *net.TCPConn: %q", got, want)
			}
			t.Logf("both: %q", got)
		})
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func readerOf(s interface{ Read([]byte) (int, error) }) io.Reader { return readerFunc(s.Read) }

// readErr is the error of one more Read after the end.
func readErr(s interface{ Read([]byte) (int, error) }) error {
	_, err := s.Read(make([]byte, 1))
	return err
}
