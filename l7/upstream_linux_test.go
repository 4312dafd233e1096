package l7

import (
	"bytes"
	"context"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

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
	cases := []struct {
		name string
		run  func(u upstream, peer *net.TCPConn) string
	}{
		{"read data then EOF", func(u upstream, peer *net.TCPConn) string {
			go func() {
				time.Sleep(10 * time.Millisecond) // the Read waits for it
				_, _ = peer.Write([]byte("HTTP/1.1 101 Switching Protocols\r\n\r\n"))
				peer.CloseWrite()
			}()
			got, err := io.ReadAll(u)
			return string(got) + " " + errClass(err) + " " + errClass(readErr(u))
		}},
		{"read deadline", func(u upstream, peer *net.TCPConn) string {
			_ = u.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_, err := u.Read(make([]byte, 8))
			return errClass(err)
		}},
		{"read of a reset", func(u upstream, peer *net.TCPConn) string {
			_ = peer.SetLinger(0)
			peer.Close()
			_, err := u.Read(make([]byte, 8))
			return errClass(err)
		}},
		{"large write to a slow reader", func(u upstream, peer *net.TCPConn) string {
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
			_ = u.SetWriteDeadline(time.Now().Add(time.Minute))
			n, err := u.Write(want)
			same := bytes.Equal(<-got, want)
			return errClass(err) + " " + strconv.Itoa(n) + " " + strconv.FormatBool(same)
		}},
		{"write deadline", func(u upstream, peer *net.TCPConn) string {
			_ = u.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			_, err := u.Write(make([]byte, 64<<20)) // more than the buffers hold
			return errClass(err)
		}},
		{"write after a reset", func(u upstream, peer *net.TCPConn) string {
			_ = peer.SetLinger(0)
			peer.Close()
			time.Sleep(10 * time.Millisecond)
			var err error
			for range 100 {
				if _, err = u.Write([]byte("x")); err != nil {
					break
				}
			}
			return errClass(err)
		}},
		{"read after close", func(u upstream, peer *net.TCPConn) string {
			u.Close()
			_, err := u.Read(make([]byte, 8))
			return errClass(err)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			c1, p1 := tcpPair(t)
			want := tc.run(c1, p1)
			c2, p2 := tcpPair(t)
			u := newFDUpstream(context.Background(), fdOf(t, c2), c2.RemoteAddr())
			defer u.Close()
			got := tc.run(u, p2)
			if got != want {
				t.Fatalf("raw dial's descriptor: %q, *net.TCPConn: %q", got, want)
			}
			t.Logf("both: %q", got)
		})
	}
}
