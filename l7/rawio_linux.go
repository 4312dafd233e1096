package l7

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawRead, rawRecv and rawSend are read, recvfrom and sendto without the scheduler's
// syscall bookkeeping (entersyscall, exitsyscall): on a nonblocking socket
// neither blocks, and a send on loopback that runs the receiver's TCP
// input in line can take long enough that sysmon hands the P to another
// thread while it runs (issue 10: h2-small −3 to −17 % CPU per request,
// http-small −3 %).
func rawRead(fd uintptr, b []byte) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), errno
}

func rawRecv(fd uintptr, b []byte, flags uintptr) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_DONTWAIT|flags, 0, 0)
	return int(n), errno
}

func rawSend(fd uintptr, b []byte) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	return int(n), errno
}

// rawSock is a *net.TCPConn's Read and Write through its RawConn with
// rawRead and rawSend: the same deadlines, waits and errors as the conn's
// own methods (net.OpError around a syscall or poll error, io.EOF bare).
// The callbacks and their arguments live in the struct, so that a call
// allocates nothing; rmu and wmu keep concurrent calls of one direction
// apart as the conn's own locks do.
type rawSock struct {
	c  *net.TCPConn
	rc syscall.RawConn

	rmu     sync.Mutex
	rp      []byte
	rn      int
	rerrno  unix.Errno
	readFn  func(uintptr) bool
	wmu     sync.Mutex
	wp      []byte
	wn      int
	werrno  unix.Errno
	writeFn func(uintptr) bool
}

// newSockIO returns c's raw reads and writes, or nil if c has no RawConn.
func newSockIO(c *net.TCPConn) sockIO {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	s := &rawSock{c: c, rc: rc}
	s.readFn, s.writeFn = s.read, s.write
	return s
}

func (s *rawSock) read(fd uintptr) bool {
	for {
		s.rn, s.rerrno = rawRead(fd, s.rp)
		switch s.rerrno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		return true
	}
}

func (s *rawSock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.rp, s.rn, s.rerrno = p, 0, 0
	err := s.rc.Read(s.readFn)
	n, errno := s.rn, s.rerrno
	s.rp = nil
	if err := s.callError("read", err, errno); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (s *rawSock) write(fd uintptr) bool {
	for s.wn < len(s.wp) {
		m, e := rawSend(fd, s.wp[s.wn:])
		switch e {
		case 0:
			s.wn += m
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			s.werrno = e
			return true
		}
	}
	return true
}

func (s *rawSock) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wp, s.wn, s.werrno = p, 0, 0
	err := s.rc.Write(s.writeFn)
	n, errno := s.wn, s.werrno
	s.wp = nil
	return n, s.callError("write", err, errno)
}

// callError is a RawConn call's outcome as the conn's own error: the poll
// error (a deadline, a closed conn) or the callback's errno, wrapped; nil
// if neither.
func (s *rawSock) callError(op string, err error, errno unix.Errno) error {
	switch {
	case err != nil:
		return s.opError(op, err)
	case errno != 0:
		return s.opError(op, os.NewSyscallError(op, errno))
	}
	return nil
}

// opError wraps err as the conn's Read and Write do; an error of the
// RawConn's own (a deadline, a closed conn) is unwrapped first, so that its
// text reads as theirs.
func (s *rawSock) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: s.c.LocalAddr(), Addr: s.c.RemoteAddr(), Err: err}
}
