// Package balancertest holds loopback fixtures shared by the tests of
// balancer and of the packages above it (l4, l7 and package main): a backend
// address that refuses connections, a port free on several loopback
// addresses, and descriptor counts that can be limited to the sockets of the
// connections under test.
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
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// SharedPort returns a port free on every one of hosts (127.0.0.N
// addresses) at the time of the call: the one port of a service that runs
// on each host, such as a pool's agent port.
func SharedPort(tb testing.TB, hosts ...string) int {
	tb.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", hosts[0]+":0")
		if err != nil {
			tb.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ok := true
		for _, h := range hosts[1:] {
			l2, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			l2.Close()
		}
		ln.Close()
		if ok {
			return port
		}
	}
	tb.Fatal("no port free on every host")
	return 0
}

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

// ReadFDs lists /proc/self/fd and asks each socket descriptor for its
// ports (getsockname, getpeername: exact, where /proc/net/tcp, read in
// chunks while other processes open and close sockets, can list a socket
// twice or not at all). Only a socket still connecting, which has no peer
// yet, takes its remote port from /proc/net/tcp. It skips the test where
// /proc is missing.
func ReadFDs(tb testing.TB) FDs {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Skip("no /proc/self/fd:", err)
	}
	var f FDs
	var table map[string]int // inode → remote port, read once if needed
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
			fd, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			s, ok := tcpSocket(fd)
			if !ok {
				continue
			}
			if s.RemotePort == 0 && !s.Listening {
				if table == nil {
					table = remotePorts()
				}
				s.RemotePort = table[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")]
			}
			f.Sockets = append(f.Sockets, s)
		}
	}
	return f
}

// remotePorts maps the inodes in /proc/self/net/tcp and tcp6 to their
// remote ports (SYN_SENT sockets have one before getpeername does).
func remotePorts() map[string]int {
	ports := map[string]int{}
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue // no IPv6
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(line)
			if len(f) < 10 {
				continue
			}
			_, port, _ := strings.Cut(f[2], ":") // ADDR:PORT, hex
			if n, err := strconv.ParseUint(port, 16, 16); err == nil {
				ports[f[9]] = int(n)
			}
		}
	}
	return ports
}

// tcpSocket describes fd if it is a TCP socket (IPv4 or IPv6). A socket
// closed since the listing is left out (getsockname fails).
func tcpSocket(fd int) (Socket, bool) {
	if typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil || typ != syscall.SOCK_STREAM {
		return Socket{}, false
	}
	local, err := syscall.Getsockname(fd)
	if err != nil {
		return Socket{}, false
	}
	lport, ok := inetPort(local)
	if !ok {
		return Socket{}, false // a unix socket
	}
	s := Socket{FD: fd, LocalPort: lport}
	if peer, err := syscall.Getpeername(fd); err == nil {
		s.RemotePort, _ = inetPort(peer) // ENOTCONN: a listener, or not connected yet
	}
	acc, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	s.Listening = err == nil && acc != 0
	return s, true
}

func inetPort(sa syscall.Sockaddr) (int, bool) {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return a.Port, true
	case *syscall.SockaddrInet6:
		return a.Port, true
	}
	return 0, false
}

// Connected counts the descriptors of TCP sockets, other than listeners,
// that have one of ports at either end: with the ports of a proxy's
// listener and of its backends, the proxy's two sockets and the test's two
// ends of every connection through it (and a connect still under way).
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

// FreePort returns a port free for TCP and UDP on host (a loopback address)
// at the time of the call, for a listener the caller binds later (a child
// process, a server restarted on its port). It is taken below the kernel's
// ephemeral range: a port 0 listener gets its port from that range, and so
// does every outgoing connection, so a released ephemeral port can be
// taken by any of them before the caller binds it (full runs saw a
// restarted DNS server and a child sluice fail with EADDRINUSE).
func FreePort(tb testing.TB, host string) int {
	tb.Helper()
	lo := 32768 // the kernel's default start of ip_local_port_range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				lo = n
			}
		}
	}
	base := 10000
	span := lo - base
	// Spread the picks of parallel tests and processes: a start from the
	// clock, the pid and a per-process count, then strides of a prime.
	start := int((time.Now().UnixNano()/1000+int64(os.Getpid())*7+freePortCalls.Add(1)*4099)%int64(span)) + span
	for i := range span {
		port := base + (start+i*7919)%span
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port
	}
	tb.Fatalf("no free port below %d on %s", lo, host)
	return 0
}

var freePortCalls atomic.Int64
