//go:build unix

package l7

import (
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// peekIdle reports whether an idle conn is still open and has nothing to
// read, without blocking: a FIN, a reset or stray bytes make it unusable.
func peekIdle(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			_, errno := rawRecv(fd, b[:], unix.MSG_PEEK)
			if errno == unix.EINTR {
				continue
			}
			ok = errno == unix.EAGAIN
			return true
		}
	})
	return err == nil && ok
}

// writeThenRead writes held, the end of a request, to bc's socket, then
// waits until the socket is readable before it reads the answer into p:
// no read(2) that finds nothing while the backend has not answered yet.
// RawRead arms the wait (it clears the socket's readiness) before the
// write, so the answer's readiness cannot be missed; the read deadline
// (the request's context, exchange) ends the wait as it ends a Read.
func writeThenRead(bc *backendConn, held, p []byte) (int, error) {
	rc, err := bc.c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	wrote := false
	err = rc.Read(func(fd uintptr) bool {
		if !wrote {
			wrote = true
			for len(held) > 0 {
				m, errno := rawSend(fd, held)
				if errno == unix.EINTR {
					continue
				}
				if errno == unix.EAGAIN {
					break
				}
				if errno != 0 {
					bc.werr = bc.opError("write", errno)
					held = nil
					break
				}
				held = held[m:]
			}
			if len(held) > 0 {
				// The send buffer is full: the rest through the netpoller.
				if _, werr := bc.c.Write(held); werr != nil {
					bc.werr = werr
				}
			}
			if bc.werr == nil {
				return false // wait for the answer
			}
			// The backend may have answered (and closed) before reading
			// it all: read what there is.
		}
		for {
			m, errno := rawRead(fd, p)
			switch {
			case errno == unix.EINTR:
				continue
			case errno == unix.EAGAIN:
				return false
			case errno != 0:
				rerr = bc.opError("read", errno)
			case m == 0:
				rerr = io.EOF
			default:
				n = m
			}
			return true
		}
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}
