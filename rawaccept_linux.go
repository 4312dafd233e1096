package main

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawAcceptOK: Linux listeners may accept raw (acceptor.loop, lr.rawAccept).
const rawAcceptOK = true

// rawListenerFile returns a duplicate of ln's socket as an *os.File (nil
// if that fails: the loop accepts with Go): nonblocking like ln's, so
// os.NewFile registers it with Go's poller and its RawConn.Read waits for
// the next connection, which a listener's RawConn does not do.
func rawListenerFile(ln *net.TCPListener) *os.File {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil
	}
	fd := -1
	rc.Control(func(s uintptr) { fd, _ = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if fd < 0 {
		return nil
	}
	return os.NewFile(uintptr(fd), "sluice-listener")
}

// acceptRaw accepts one connection on a listening socket with accept4(2)
// of sluice's own: a nonblocking descriptor and the peer's address, and
// none of what Go's accept adds (a netFD and its pollDesc, the poller's
// epoll_ctl ADD, getsockname, TCP_NODELAY: the listener's is inherited).
// rc is rawListenerFile's: it parks in Go's poller on the listening
// socket while none is queued; once that file is closed, an error wrapping
// os.ErrClosed.
func acceptRaw(rc syscall.RawConn) (int, netip.AddrPort, error) {
	nfd := -1
	var errno unix.Errno
	var rsa unix.RawSockaddrAny
	err := rc.Read(func(fd uintptr) bool {
		for {
			l := uint32(unix.SizeofSockaddrAny)
			r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)),
				unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
			switch e {
			case 0:
				nfd = int(r)
				return true
			case unix.EINTR, unix.ECONNABORTED:
				continue // as Go's accept: the next one
			case unix.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
	})
	if err != nil {
		return -1, netip.AddrPort{}, err
	}
	if errno != 0 {
		return -1, netip.AddrPort{}, os.NewSyscallError("accept4", errno)
	}
	return nfd, rawAddrPort(&rsa), nil
}

// rawAddrPort decodes an AF_INET or AF_INET6 socket address.
func rawAddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// localAddrOf is getsockname on a raw descriptor: the address the client
// connected to, asked only when a PROXY header needs it.
func localAddrOf(fd int) net.Addr {
	var rsa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	if _, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l))); e != 0 {
		return nil
	}
	return net.TCPAddrFromAddrPort(rawAddrPort(&rsa))
}

// fdConn makes a raw descriptor a *net.TCPConn (an l7 route, a refusal
// that answers): net.FileConn dups it and closes nothing, so the original
// is closed here. Cleared O_NONBLOCK first keeps os.NewFile from
// registering it with the poller only to close it.
func fdConn(fd int) (*net.TCPConn, error) {
	_ = unix.SetNonblock(fd, false)
	f := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// closeRaw closes a raw descriptor; with reset, by RST (SO_LINGER 0).
func closeRaw(fd int, reset bool) {
	if reset {
		l := unix.Linger{Onoff: 1}
		unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
	}
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// recvRaw is a nonblocking recv on a raw descriptor.
func recvRaw(fd int, b []byte) (int, unix.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
	return int(n), e
}
