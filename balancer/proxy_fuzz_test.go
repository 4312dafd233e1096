package balancer

import (
	"bufio"
	"bytes"
	"net"
	"net/netip"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// FuzzProxyHeader (RELIABILITY H): for any client and listener addresses
// and any SNI as sluice passes it (normalized, at most 253 bytes), the
// header we write parses with go-proxyproto to the same addresses and
// authority, is at most 4096 bytes, and is followed by nothing it did not
// account for (the hello that comes next reads back intact).
func FuzzProxyHeader(f *testing.F) {
	f.Add(true, []byte{203, 0, 113, 7}, uint16(54321), []byte{198, 51, 100, 1}, uint16(443), "game.example.com")
	f.Add(false, []byte{203, 0, 113, 7}, uint16(1), []byte{198, 51, 100, 1}, uint16(443), "")
	f.Add(true, []byte(net.ParseIP("2001:db8::1").To16()), uint16(65535), []byte{127, 0, 0, 1}, uint16(8443), "a.b")
	f.Add(true, []byte(net.ParseIP("::ffff:10.0.0.1").To16()), uint16(0), []byte(net.ParseIP("fe80::1").To16()), uint16(443), "x\r\nPROXY TCP4 1.2.3.4")
	f.Fuzz(func(t *testing.T, v2 bool, src []byte, sport uint16, dst []byte, dport uint16, sni string) {
		sa, ok1 := netip.AddrFromSlice(src)
		da, ok2 := netip.AddrFromSlice(dst)
		if !ok1 || !ok2 || len(sni) > 253 {
			return
		}
		client := net.TCPAddrFromAddrPort(netip.AddrPortFrom(sa, sport))
		local := net.TCPAddrFromAddrPort(netip.AddrPortFrom(da, dport))
		v := ProxyV1
		if v2 {
			v = ProxyV2
		}
		const hello = "\x16\x03\x01 the hello follows"
		b, err := AppendProxyHeader(nil, v, client, local, sni)
		if err != nil {
			t.Fatalf("%v %v→%v %q: %v", v, client, local, sni, err)
		}
		if len(b) > 4096 || len(b) > maxHeaderLen(v, sni) {
			t.Fatalf("header of %d bytes (bound %d)", len(b), maxHeaderLen(v, sni))
		}
		br := bufio.NewReaderSize(bytes.NewReader(append(b, hello...)), 8192)
		h, err := proxyproto.Read(br)
		if err != nil {
			t.Fatalf("go-proxyproto cannot read our %v header %q: %v", v, b, err)
		}
		rest := make([]byte, len(hello)+1)
		n, _ := br.Read(rest)
		if string(rest[:n]) != hello {
			t.Fatalf("bytes after the header: %q, want the hello", rest[:n])
		}
		s, d, ok := h.TCPAddrs()
		if !ok {
			t.Fatalf("no TCP addresses in %+v", h)
		}
		// A v4 and a v6 address together go as TCP6, the v4 one v4-mapped.
		if s.AddrPort().Addr().Unmap() != sa.Unmap() || s.Port != int(sport) || d.AddrPort().Addr().Unmap() != da.Unmap() || d.Port != int(dport) {
			t.Fatalf("addresses %v→%v read back as %v→%v", client, local, s, d)
		}
		if v2 {
			var authority string
			tlvs, err := h.TLVs()
			if err != nil {
				t.Fatal(err)
			}
			for _, tlv := range tlvs {
				if tlv.Type == proxyproto.PP2_TYPE_AUTHORITY {
					authority = string(tlv.Value)
				}
			}
			if authority != sni {
				t.Fatalf("authority %q, want %q", authority, sni)
			}
		}
	})
}
