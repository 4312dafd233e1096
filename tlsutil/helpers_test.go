package tlsutil

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// stdHello is the reference the parser is compared with: crypto/tls's own
// view of data, through a conn and Config independent of the ones in
// clienthello.go. It returns nil if crypto/tls does not reach
// GetConfigForClient.
func stdHello(data []byte) *tls.ClientHelloInfo {
	var got *tls.ClientHelloInfo
	stop := errors.New("stop")
	cfg := &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		got = chi
		return nil, stop
	}}
	_ = tls.Server(&bytesConn{r: bytes.NewReader(data)}, cfg).HandshakeContext(context.Background())
	return got
}

type bytesConn struct {
	r *bytes.Reader
}

func (c *bytesConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *bytesConn) Close() error                     { return nil }
func (c *bytesConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *bytesConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }

// chunkReader returns data at most chunk bytes per Read and counts what it
// handed out.
type chunkReader struct {
	data  []byte
	chunk int
	n     int // bytes returned so far
	reads int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.reads++
	if r.n >= len(r.data) {
		return 0, io.EOF
	}
	k := min(len(p), r.chunk, len(r.data)-r.n)
	copy(p, r.data[r.n:r.n+k])
	r.n += k
	return k, nil
}

// concat joins byte slices into a fresh one.
func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
