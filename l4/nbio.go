package l4

import "net"

// A terminated wss:// tunnel is a *tls.Conn on the client side and a raw
// socket on the backend side. crypto/tls reads ahead and writes each record
// with a blocking Write, so the goroutine engine keeps a goroutine parked in
// the *tls.Conn's Read and a 2 KiB buffer per idle tunnel. The epoll engine
// can drive the *tls.Conn instead when the conn under it lets it: while the
// engine works on the relay (and only then), the transport's Read and Write
// go to an NBIO, nonblocking on the socket. A Read that finds nothing
// returns ErrWouldBlock (crypto/tls keeps a partial record and reads on
// later); a Write takes everything and queues what the socket did not, for
// the engine to send when the socket is writable (crypto/tls's record state
// never sees a short write).

// NonblockingTransport is implemented by a conn under a *tls.Conn that the
// epoll engine may drive without a goroutine (l7's recordWriter). Its Read
// and Write must go to the NBIO while NBIO.On reports true, and the NBIO
// must be the only reader and writer of the socket then.
type NonblockingTransport interface {
	// Nonblocking returns the transport's NBIO, or nil when it cannot be
	// driven that way (bytes buffered above the socket).
	Nonblocking() *NBIO
}

// ErrWouldBlock is what an NBIO's Read returns when the socket has nothing.
// It is a temporary net.Error: crypto/tls keeps what it read of a record
// and does not fail the connection.
var ErrWouldBlock net.Error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "l4: read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// NBIO is nonblocking I/O on the socket under a *tls.Conn, switched on by
// the epoll engine around its work on the relay (with the socket's fd held).
// The zero value is off.
type NBIO struct {
	fd   int32
	on   bool
	out  *[]byte // bytes written that the socket has not taken yet
	off  int     // (*out)[off:] is still to be sent
	sent int64   // bytes the socket took
}

// On reports whether Read and Write must go to the NBIO.
func (n *NBIO) On() bool { return n != nil && n.on }

// pending returns how many written bytes the socket has not taken.
func (n *NBIO) pending() int {
	if n.out == nil {
		return 0
	}
	return len(*n.out) - n.off
}
