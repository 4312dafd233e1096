package l7

import (
	"context"
	"io"
	"net"
	"net/netip"
	"time"

	"sluice/balancer"
	"sluice/l4"
)

// upstream is an upgrade's backend connection until its tunnel starts:
// Go's *net.TCPConn, or the raw dial's descriptor (fdUpstream, Linux) when
// the tunnel will run on the epoll engine, which takes the descriptor as
// it is (l4.StartSockets). The raw dial costs none of Go's netFD work
// (issue 11: getsockname, getpeername, getsockopt, the runtime poller's
// epoll_ctl ADD and DEL, a pollDesc, timers), as on the l4 path.
type upstream interface {
	io.Reader
	Write([]byte) (int, error)
	Close() error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// rawUpgrade reports whether an upgrade's backend may be dialled raw: the
// route's tunnels run on the epoll engine, which takes a client that is
// the raw socket (cleartext) or a *tls.Conn over the route's recordWriter
// (TLS) with the descriptor as it is (l4.StartSockets). What could still
// keep the engine from driving the client (a collection or a probe of the
// recordWriter) is over once the conn is hijacked, before the tunnel.
func (rt *Route) rawUpgrade() bool {
	return rt.relay.Engine == l4.EngineEpoll && l4.FDWaiter() != nil && !rt.goDialUpgrades
}

// upstreamOf is the lease's connection as an upstream. A descriptor's
// waits end at their deadlines, not at the connection's end: as with Go's
// conn, a drain that comes while the backend's answer is awaited is seen
// by the tunnel that answer starts (ReasonDrain), not as a failed answer.
func upstreamOf(lease *balancer.Lease) upstream {
	if lease.Conn != nil {
		return lease.Conn
	}
	var raddr net.Addr
	if ap, err := netip.ParseAddrPort(lease.Backend.Addr()); err == nil {
		raddr = net.TCPAddrFromAddrPort(ap) // an IP literal: the raw dial's only kind
	}
	return newFDUpstream(context.Background(), lease.FD, raddr)
}
