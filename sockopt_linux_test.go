package main

import (
	"net"
	"syscall"
	"testing"
)

// Accepted sockets inherit keepalive and TCP_USER_TIMEOUT from the listening
// socket, so the accept path sets them without a syscall per connection (T17).
func TestAcceptedSocketOptions(t *testing.T) {
	lc := listenConfig()
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	must(t, err)
	defer ln.Close()
	c := dial(t, ln.Addr())
	_ = c
	a, err := ln.Accept()
	must(t, err)
	defer a.Close()
	raw, _ := a.(*net.TCPConn).SyscallConn()
	want := map[string][3]int{
		"SO_KEEPALIVE":     {syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		"TCP_KEEPIDLE":     {syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 30},
		"TCP_KEEPINTVL":    {syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 10},
		"TCP_KEEPCNT":      {syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, 3},
		"TCP_USER_TIMEOUT": {syscall.IPPROTO_TCP, 18, 30000},
		"TCP_NODELAY":      {syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
	}
	raw.Control(func(fd uintptr) {
		for name, o := range want {
			v, err := syscall.GetsockoptInt(int(fd), o[0], o[1])
			if err != nil || v != o[2] {
				t.Errorf("%s = %d (%v), want %d", name, v, err, o[2])
			}
		}
	})
}
