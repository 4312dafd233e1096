package l7

import (
	"context"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"sluice/l4"
)

// fdUpstream is a raw dial's descriptor as an upstream: reads and writes
// with raw recvfrom and sendto, and waits (EAGAIN) in l4.WaitFD until the
// deadline (or ctx's end). Its errors are as a
// *net.TCPConn's: a net.OpError around os.ErrDeadlineExceeded on a
// deadline (isTimeout), around an os.SyscallError for an errno; io.EOF at
// the end.
type fdUpstream struct {
	ctx      context.Context
	fd       int // -1 once closed or taken
	rdl, wdl time.Time
	raddr    net.Addr // the backend's, for errors
}

func newFDUpstream(ctx context.Context, fd int, raddr net.Addr) *fdUpstream {
	return &fdUpstream{ctx: ctx, fd: fd, raddr: raddr}
}

func (u *fdUpstream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if u.fd < 0 {
			return 0, u.opError("read", net.ErrClosed)
		}
		n, errno := rawRecv(uintptr(u.fd), p, 0)
		switch errno {
		case 0:
			if n == 0 {
				return 0, io.EOF
			}
			return n, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if _, err := l4.WaitFD(u.ctx, u.fd, false, u.rdl); err != nil {
				return 0, u.opError("read", err)
			}
			continue
		}
		return 0, u.opError("read", os.NewSyscallError("read", errno))
	}
}

func (u *fdUpstream) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if u.fd < 0 {
			return n, u.opError("write", net.ErrClosed)
		}
		m, errno := rawSend(uintptr(u.fd), p[n:])
		switch errno {
		case 0:
			n += m
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if _, err := l4.WaitFD(u.ctx, u.fd, true, u.wdl); err != nil {
				return n, u.opError("write", err)
			}
			continue
		}
		return n, u.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

func (u *fdUpstream) SetReadDeadline(t time.Time) error  { u.rdl = t; return nil }
func (u *fdUpstream) SetWriteDeadline(t time.Time) error { u.wdl = t; return nil }

// Close closes the descriptor, unless the relay took it (take).
func (u *fdUpstream) Close() error {
	if u.fd < 0 {
		return nil
	}
	err := unix.Close(u.fd)
	u.fd = -1
	return err
}

// take records that the descriptor was handed over (to the relay): Close
// no longer closes it.
func (u *fdUpstream) take() { u.fd = -1 }

// opError wraps err as Go's conn does, with both addresses: the local one
// asked of the socket (on errors only), the backend's as dialled.
func (u *fdUpstream) opError(op string, err error) error {
	var laddr net.Addr
	if u.fd >= 0 {
		if sa, e := unix.Getsockname(u.fd); e == nil {
			switch sa := sa.(type) {
			case *unix.SockaddrInet4:
				laddr = &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}
			case *unix.SockaddrInet6:
				laddr = &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
			}
		}
	}
	return &net.OpError{Op: op, Net: "tcp", Source: laddr, Addr: u.raddr, Err: err}
}
