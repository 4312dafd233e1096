package tlsutil

import "net"

// PrefixConn is a net.Conn whose Read serves a prefix (typically
// ClientHello.Raw) before reading from the wrapped Conn. It hands a peeked
// hello to tls.Server. All other methods are the wrapped Conn's.
//
// A PrefixConn hides the *net.TCPConn from io.Copy, which disables splice:
// relay code unwraps it with NetConn after writing the prefix itself.
type PrefixConn struct {
	net.Conn
	prefix []byte
}

var _ net.Conn = (*PrefixConn)(nil)

// NewPrefixConn returns a conn that reads prefix, then c. It does not copy
// prefix; the caller must not modify it afterwards.
func NewPrefixConn(c net.Conn, prefix []byte) *PrefixConn {
	return &PrefixConn{Conn: c, prefix: prefix}
}

// Read serves the unread prefix first; once it is drained, Read reads from
// the wrapped Conn. A Read never mixes prefix bytes and new bytes.
func (p *PrefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		if len(p.prefix) == 0 {
			p.prefix = nil
		}
		return n, nil
	}
	return p.Conn.Read(b)
}

// Buffered returns how many prefix bytes are still unread.
func (p *PrefixConn) Buffered() int { return len(p.prefix) }

// NetConn returns the wrapped Conn, like tls.Conn.NetConn.
func (p *PrefixConn) NetConn() net.Conn { return p.Conn }
