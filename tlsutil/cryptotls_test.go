package tlsutil

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

// errHelloCaptured stops the crypto/tls handshake once the hello is parsed.
var errHelloCaptured = errors.New("tlsutil: ClientHello captured")

// helloConfig is shared by every parse: GetConfigForClient finds its
// per-call state through ClientHelloInfo.Conn, so no Config is allocated
// per connection. crypto/tls only reads a Config.
var helloConfig = &tls.Config{
	GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		if rc, ok := chi.Conn.(*replayConn); ok {
			rc.chi = chi
		}
		return nil, errHelloCaptured
	},
}

// parseWithCryptoTLS runs the crypto/tls server handshake over records (as
// returned by framer.frame) until GetConfigForClient, as Traefik does after
// GHSA-wvvq-wgcr-9q48, and fills h's parsed fields from the
// ClientHelloInfo. crypto/tls parses the ECH extension before
// GetConfigForClient, so a malformed one is rejected here too.
//
// ReadClientHello used it until the allocation-light parseMessage replaced
// it; it remains, in this test file, the reference parseMessage is tested
// and fuzzed against (FuzzClientHelloDifferential).
func parseWithCryptoTLS(h *ClientHello, records []byte) error {
	rc := &replayConn{data: records}
	err := tls.Server(rc, helloConfig).HandshakeContext(context.Background())
	chi := rc.chi
	if chi == nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	h.RawServerName = chi.ServerName
	if chi.ServerName != "" {
		name, ok := NormalizeSNI(chi.ServerName)
		h.ServerName = name
		h.SNIInvalid = !ok
	}
	h.ALPN = chi.SupportedProtos
	// ClientHelloInfo expands a missing supported_versions into every
	// version up to legacy_version; report what the client sent instead.
	// crypto/tls rejects an empty supported_versions list, so the extension
	// is present exactly when it is listed.
	if slices.Contains(chi.Extensions, extSupportedVersions) {
		h.Versions = chi.SupportedVersions
	} else {
		// crypto/tls accepted the message, so it holds legacy_version.
		// helloMessage with a length no message reaches returns every
		// handshake byte of records.
		msg := helloMessage(records, len(records))
		h.Versions = []uint16{uint16(msg[4])<<8 | uint16(msg[5])}
	}
	return nil
}

// replayConn serves data to crypto/tls, then io.EOF; writes (alerts) are
// discarded.
type replayConn struct {
	data []byte
	chi  *tls.ClientHelloInfo
}

var _ net.Conn = (*replayConn)(nil)

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return replayAddr{} }
func (c *replayConn) RemoteAddr() net.Addr             { return replayAddr{} }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }

type replayAddr struct{}

func (replayAddr) Network() string { return "replay" }
func (replayAddr) String() string  { return "replay" }
