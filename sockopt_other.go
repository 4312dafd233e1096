//go:build !linux

package main

import (
	"net"

	"sluice/balancer"
)

// listenConfig asks Go to set keepalive on each accepted connection (a few
// syscalls per accept): whether a listening socket's TCP options are
// inherited differs between the BSDs and macOS, and TCP_USER_TIMEOUT does
// not exist there. sluice targets Linux (sockopt_linux.go); this keeps it
// building and behaving sanely elsewhere.
func listenConfig() net.ListenConfig {
	return net.ListenConfig{
		KeepAliveConfig: balancer.KeepAlive,
	}
}
