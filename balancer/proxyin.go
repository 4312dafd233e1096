package balancer

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	proxyproto "github.com/pires/go-proxyproto"
)

// PROXY protocol in: a listener behind a network load balancer that speaks
// PROXY (HAProxy's accept-proxy) reads a v1 or v2 header before the
// ClientHello. The framing is found here, byte-exact and bounded; the
// header itself is parsed by go-proxyproto.

// MaxProxyHeaderV2 bounds a v2 header, its TLVs included (16-byte fixed
// part + address block + TLVs). AWS, GCP and Azure balancers send well
// under 1 KiB.
const MaxProxyHeaderV2 = 4096

// maxProxyHeaderV1 is the v1 specification's longest line, CRLF included
// (haproxy.org/download/2.0/doc/proxy-protocol.txt, section 2.1).
const maxProxyHeaderV1 = 107

// v2Signature starts every v2 header (section 2.2).
var v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// ErrNoProxyHeader is returned when the first bytes are not a PROXY
// header: a connection that must start with one is refused, never guessed.
var ErrNoProxyHeader = errors.New("balancer: no PROXY protocol header")

// ErrProxyHeaderTooLarge is returned for a v2 header over MaxProxyHeaderV2
// or a v1 line over 107 bytes.
var ErrProxyHeaderTooLarge = errors.New("balancer: PROXY protocol header too large")

// ReadProxyHeader reads one PROXY v1 or v2 header from r, which delivers
// the first bytes of a connection. It returns the header and the bytes read
// past it (the start of the ClientHello, when both came in one segment),
// which the caller must replay. It reads no more than it needs to find the
// header's end, plus what one read returned past it. Errors: a read error
// (wrapped, so a deadline is seen by errors.Is), ErrNoProxyHeader,
// ErrProxyHeaderTooLarge, or go-proxyproto's parse error.
func ReadProxyHeader(r io.Reader) (*proxyproto.Header, []byte, error) {
	buf := make([]byte, 0, 256)
	for {
		n, done, err := proxyHeaderLen(buf)
		if err != nil {
			return nil, nil, err
		}
		if done {
			h, perr := proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(buf[:n]), max(n, 16)))
			if perr != nil {
				return nil, nil, fmt.Errorf("balancer: PROXY protocol header: %w", perr)
			}
			return h, buf[n:], nil
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		// Never ask for more than the longest possible header, so that a
		// slow client's ClientHello mostly stays in its socket.
		want := min(cap(buf), max(n, len(buf)+1))
		m, rerr := r.Read(buf[len(buf):want])
		buf = buf[:len(buf)+m]
		if rerr != nil && m == 0 {
			if rerr == io.EOF && len(buf) > 0 {
				rerr = io.ErrUnexpectedEOF
			}
			return nil, nil, fmt.Errorf("balancer: reading PROXY protocol header: %w", rerr)
		}
	}
}

// proxyHeaderLen looks at the first bytes of a connection: done with n the
// header's length when it is all in b; else n is how many bytes to have
// before looking again (at least len(b)+1).
func proxyHeaderLen(b []byte) (n int, done bool, err error) {
	switch {
	case len(b) >= 1 && b[0] == '\r':
		if !bytes.HasPrefix(v2Signature, b[:min(len(b), len(v2Signature))]) {
			return 0, false, ErrNoProxyHeader
		}
		if len(b) < 16 {
			return 16, false, nil
		}
		n = 16 + int(binary.BigEndian.Uint16(b[14:16]))
		if n > MaxProxyHeaderV2 {
			return 0, false, ErrProxyHeaderTooLarge
		}
		return n, len(b) >= n, nil
	case len(b) >= 1 && b[0] == 'P':
		if !bytes.HasPrefix([]byte("PROXY "), b[:min(len(b), 6)]) {
			return 0, false, ErrNoProxyHeader
		}
		if i := bytes.Index(b, []byte("\r\n")); i >= 0 {
			if i+2 > maxProxyHeaderV1 {
				return 0, false, ErrProxyHeaderTooLarge
			}
			return i + 2, true, nil
		}
		if len(b) >= maxProxyHeaderV1 {
			return 0, false, ErrProxyHeaderTooLarge
		}
		return maxProxyHeaderV1, false, nil
	case len(b) == 0:
		return 16, false, nil
	}
	return 0, false, ErrNoProxyHeader
}
