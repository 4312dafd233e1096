package balancer

import (
	"errors"
	"fmt"
	"net"

	proxyproto "github.com/pires/go-proxyproto"
)

// ProxyProtocol selects the PROXY protocol header a pool sends to its
// backends before any client byte (HAProxy's send-proxy / send-proxy-v2).
type ProxyProtocol uint8

const (
	// ProxyNone sends no header: the backend sees sluice as the client.
	ProxyNone ProxyProtocol = iota
	// ProxyV1 sends the human-readable v1 header ("PROXY TCP4 ...\r\n").
	ProxyV1
	// ProxyV2 sends the binary v2 header; a non-empty SNI travels as a
	// PP2_TYPE_AUTHORITY TLV.
	ProxyV2
)

// ErrProxyProtocol reports an unknown proxy_protocol value.
var ErrProxyProtocol = errors.New("balancer: unknown proxy protocol")

// ParseProxyProtocol parses the config value of proxy_protocol: "" (none),
// "v1" or "v2".
func ParseProxyProtocol(s string) (ProxyProtocol, error) {
	switch s {
	case "":
		return ProxyNone, nil
	case "v1":
		return ProxyV1, nil
	case "v2":
		return ProxyV2, nil
	}
	return ProxyNone, fmt.Errorf("%w %q (want \"\", \"v1\" or \"v2\")", ErrProxyProtocol, s)
}

// String returns the config spelling: "", "v1" or "v2".
func (v ProxyProtocol) String() string {
	switch v {
	case ProxyNone:
		return ""
	case ProxyV1:
		return "v1"
	case ProxyV2:
		return "v2"
	}
	return fmt.Sprintf("ProxyProtocol(%d)", uint8(v))
}

// Upper bounds of a formatted header, used to size the one buffer that holds
// header and prefix. v1: 107 bytes is the spec's worst case (TCP6, full
// addresses and ports). v2: 16-byte fixed part, 216 bytes of AF_UNIX
// addresses (the largest family), then the authority TLV (3 + len(SNI)).
const (
	maxHeaderV1    = 107
	maxHeaderV2    = 16 + 216
	tlvOverheadLen = 3
)

// maxHeaderLen returns an upper bound on the size of the header
// AppendProxyHeader produces for v and sni.
func maxHeaderLen(v ProxyProtocol, sni string) int {
	switch v {
	case ProxyV1:
		return maxHeaderV1
	case ProxyV2:
		n := maxHeaderV2
		if sni != "" {
			n += tlvOverheadLen + len(sni)
		}
		return n
	}
	return 0
}

// AppendProxyHeader appends to dst the PROXY protocol header of version v
// announcing a connection from client to local (the sluice listener address),
// and returns the extended buffer. With ProxyNone it returns dst unchanged.
//
// When client and local are not both TCP addresses of a family the header can
// carry (for example net.Pipe addresses in tests), v1 produces
// "PROXY UNKNOWN\r\n" and v2 a LOCAL command with no addresses, as
// go-proxyproto's HeaderProxyFromAddrs decides; receivers then use the real
// connection's addresses. A v4 and a v6 address together are sent as TCP6
// with the v4 side v4-mapped.
//
// For v2, a non-empty sni is sent as a PP2_TYPE_AUTHORITY TLV; v1 has no
// place for it and ignores it. The TLV is length-prefixed binary, so a hostile
// SNI cannot inject header fields (T20).
func AppendProxyHeader(dst []byte, v ProxyProtocol, client, local net.Addr, sni string) ([]byte, error) {
	var version byte
	switch v {
	case ProxyNone:
		return dst, nil
	case ProxyV1:
		version = 1
	case ProxyV2:
		version = 2
	default:
		return dst, fmt.Errorf("%w: %d", ErrProxyProtocol, uint8(v))
	}
	h := proxyproto.HeaderProxyFromAddrs(version, client, local)
	if v == ProxyV2 && sni != "" {
		err := h.SetTLVs([]proxyproto.TLV{{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(sni)}})
		if err != nil {
			return dst, fmt.Errorf("balancer: proxy header authority TLV: %w", err)
		}
	}
	b, err := h.Format()
	if err != nil {
		return dst, fmt.Errorf("balancer: format proxy header %s: %w", v, err)
	}
	return append(dst, b...), nil
}

// buildPayload returns the bytes every connect attempt of one Dial writes:
// the PROXY header followed by prefix, in one buffer allocated once (so they
// go out in one Write, RELIABILITY rule 4). It returns nil when there is
// nothing to write.
func buildPayload(v ProxyProtocol, req *DialRequest) ([]byte, error) {
	n := maxHeaderLen(v, req.SNI) + len(req.Prefix)
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, 0, n)
	buf, err := AppendProxyHeader(buf, v, req.Client, req.Local, req.SNI)
	if err != nil {
		return nil, err
	}
	return append(buf, req.Prefix...), nil
}
