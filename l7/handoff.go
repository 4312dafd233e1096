package l7

import (
	"net"
	"sync"
)

// handoff is the net.Listener the route's http.Server serves: ServeConn hands
// it accepted, already-terminated connections (tcpproxy's TargetListener).
type handoff struct {
	c      chan net.Conn
	closed chan struct{}
	once   sync.Once
}

var _ net.Listener = (*handoff)(nil)

func newHandoff() *handoff {
	return &handoff{c: make(chan net.Conn), closed: make(chan struct{})}
}

// Accept returns the next handed-off conn, or net.ErrClosed once closed.
func (ln *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-ln.c:
		return c, nil
	case <-ln.closed:
		return nil, net.ErrClosed
	}
}

// Close makes Accept return net.ErrClosed; senders stop blocking.
func (ln *handoff) Close() error {
	ln.once.Do(func() { close(ln.closed) })
	return nil
}

// Addr is a placeholder: the real addresses are per conn.
func (ln *handoff) Addr() net.Addr { return handoffAddr{} }

type handoffAddr struct{}

func (handoffAddr) Network() string { return "handoff" }
func (handoffAddr) String() string  { return "l7-handoff" }
