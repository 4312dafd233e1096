// Package balancertest holds loopback fixtures shared by the tests of
// balancer and of the packages above it (l4, l7 and package main): a backend
// address that refuses connections, and descriptor counts that can be
// limited to the sockets of the connections under test.
//
//	addr := balancertest.RefusedAddr(t) // a pool member that refuses
//	fds := balancertest.ReadFDs(t)      // skips where /proc/self/fd is missing
//	n := fds.Connected(lbPort, backendPort)
//
// Counting only the sockets on the ports a test owns keeps a count exact
// while the rest of the process opens and closes descriptors (earlier tests
// winding down, parallel tests, the runtime); a test that has to count the
// whole process still runs alone and uses a tolerance.
//
// It is imported by tests only and depends on the standard library only.
package balancertest

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// RefusedAddr returns a loopback address that refuses connections until the
// test ends. A socket bound to it but not listening holds the port: a
// listener closed at once would free it, and the kernel could hand it to the
// next listener on port 0 (the test's own proxy, seen as a flake).
func RefusedAddr(tb testing.TB) string {
	tb.Helper()
	// SOCK_CLOEXEC is not on every OS: set close-on-exec under ForkLock, as
	// package net does there, so a concurrent exec (a re-exec'd sluice, go
	// list in the deps tests) inherits nothing.
	syscall.ForkLock.RLock()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// FDs is a snapshot of this process's open file descriptors.
type FDs struct {
	Total   int      // every open descriptor
	Pipes   int      // pipe ends (splice pipes, exec'd children's stdio)
	Sockets []Socket // TCP sockets, listening or not
}

// Socket is one descriptor of a TCP socket, with the socket's ports.
type Socket struct {
	FD                    int
	LocalPort, RemotePort int
	Listening             bool
}

// ReadFDs reads /proc/self/fd, and the TCP tables (/proc/self/net/tcp and
// tcp6) for the sockets' ports. It skips the test where /proc is missing.
func ReadFDs(tb testing.TB) FDs {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Skip("no /proc/self/fd:", err)
	}
	var f FDs
	inodes := map[string][]int{} // socket inode → fds (a dup shares the inode)
	for _, e := range ents {
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the ReadDir fd itself, closed since
		}
		f.Total++
		switch {
		case strings.HasPrefix(link, "pipe:"):
			f.Pipes++
		case strings.HasPrefix(link, "socket:["):
			fd, _ := strconv.Atoi(e.Name())
			inode := strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")
			inodes[inode] = append(inodes[inode], fd)
		}
	}
	// A socket opened after the fd walk is not in inodes; one closed since
	// (or not TCP: unix, netlink) is not in the tables. Neither is counted.
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		fh, err := os.Open(table)
		if err != nil {
			continue // no IPv6
		}
		sc := bufio.NewScanner(fh)
		sc.Scan() // the header line
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 {
				continue
			}
			for _, fd := range inodes[fields[9]] {
				f.Sockets = append(f.Sockets, Socket{FD: fd, LocalPort: hexPort(fields[1]),
					RemotePort: hexPort(fields[2]), Listening: fields[3] == "0A"}) // TCP_LISTEN
			}
		}
		fh.Close()
	}
	return f
}

// hexPort is the port of a /proc/net/tcp address: ADDR:PORT, both hex.
func hexPort(addr string) int {
	_, p, _ := strings.Cut(addr, ":")
	n, _ := strconv.ParseUint(p, 16, 16)
	return int(n)
}

// Connected counts the descriptors of TCP sockets, other than listeners,
// that have one of ports at either end: with the ports of a proxy's listener and of its
// backends, the proxy's two sockets and the test's two ends of every
// connection through it.
func (f FDs) Connected(ports ...int) int {
	n := 0
	for _, s := range f.Sockets {
		if s.Listening {
			continue
		}
		for _, p := range ports {
			if s.LocalPort == p || s.RemotePort == p {
				n++
				break
			}
		}
	}
	return n
}
