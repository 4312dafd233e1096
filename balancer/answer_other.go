//go:build !linux

package balancer

import "net"

// sendPeek sends nothing and does not wait where MSG_PEEK through the
// netpoller is not wired up (awaitAnswer then writes the payload itself);
// sluice targets Linux, this keeps the package building elsewhere.
func sendPeek(c *net.TCPConn, payload []byte) (sent int, werr, err error) { return 0, nil, nil }
