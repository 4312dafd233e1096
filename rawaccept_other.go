//go:build !linux

package main

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
)

// rawAcceptOK: only Linux accepts raw.
const rawAcceptOK = false

var errNoRawAccept = errors.New("no raw accept on this system")

func acceptRaw(rc syscall.RawConn) (int, netip.AddrPort, error) {
	return -1, netip.AddrPort{}, errNoRawAccept
}
func rawListenerFile(ln *net.TCPListener) *os.File  { return nil }
func localAddrOf(fd int) net.Addr                   { return nil }
func fdConn(fd int) (*net.TCPConn, error)           { return nil, errNoRawAccept }
func closeRaw(fd int, reset bool)                   {}
func recvRaw(fd int, b []byte) (int, syscall.Errno) { return 0, syscall.EINVAL }
