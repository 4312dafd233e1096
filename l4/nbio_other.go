//go:build !linux

package l4

import "errors"

// Off Linux the epoll engine does not run, so an NBIO is never on.

var errNoNBIO = errors.New("l4: nonblocking I/O is Linux-only")

// Read is never called off Linux.
func (n *NBIO) Read(p []byte) (int, error) { return 0, errNoNBIO }

// Write is never called off Linux.
func (n *NBIO) Write(p []byte) (int, error) { return 0, errNoNBIO }
