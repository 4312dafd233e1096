package balancer

import (
	"errors"
	"syscall"
)

// LocalReason names a connect failure that is sluice's own trouble, not the
// backend's: the machine ran out of source ports, descriptors or buffers.
// Such a failure fails the attempt (the next attempt may go to another
// backend) but never counts towards the backend's passive MaxFails, nor
// towards its Failures; an active check that fails this way is not counted
// either way. A connection storm makes them (issue 11): before sluice
// stopped binding before connect, a storm of ~4,000 connections a second to
// one backend took a healthy pool DOWN with "bind: address already in use".
type LocalReason uint8

const (
	// NotLocal: the failure may be the backend's (refused, timed out, reset).
	NotLocal LocalReason = iota
	// LocalAddrInUse is EADDRINUSE: a source address (with a port) is taken.
	LocalAddrInUse
	// LocalNoSourcePort is EADDRNOTAVAIL: no free source port towards that
	// destination (the ephemeral range, ip_local_port_range, is used up).
	LocalNoSourcePort
	// LocalFDLimit is EMFILE or ENFILE: the process or system descriptor limit.
	LocalFDLimit
	// LocalNoBuffers is ENOBUFS or ENOMEM: the kernel is out of memory for
	// sockets; or ENOSPC: the raw dial's wait (DialRequest.Wait) could not
	// add the socket to an epoll set (fs.epoll.max_user_watches).
	LocalNoBuffers

	numLocalReasons
)

// LocalReasons lists every local reason, in order (for metrics).
var LocalReasons = [...]LocalReason{LocalAddrInUse, LocalNoSourcePort, LocalFDLimit, LocalNoBuffers}

// String returns the stable label used in logs and metrics.
func (r LocalReason) String() string {
	switch r {
	case NotLocal:
		return ""
	case LocalAddrInUse:
		return "addr_in_use"
	case LocalNoSourcePort:
		return "no_source_port"
	case LocalFDLimit:
		return "fd_limit"
	case LocalNoBuffers:
		return "no_buffers"
	}
	return "local"
}

// ClassifyLocal reports whether err is a local resource failure, and which.
func ClassifyLocal(err error) LocalReason {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return NotLocal
	}
	switch errno {
	case syscall.EADDRINUSE:
		return LocalAddrInUse
	case syscall.EADDRNOTAVAIL:
		return LocalNoSourcePort
	case syscall.EMFILE, syscall.ENFILE:
		return LocalFDLimit
	case syscall.ENOBUFS, syscall.ENOMEM, syscall.ENOSPC:
		return LocalNoBuffers
	}
	return NotLocal
}
