package balancer

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"

	proxyproto "github.com/pires/go-proxyproto"
)

func v2Header(t testing.TB, tlvs []proxyproto.TLV) []byte {
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 51000}, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 443})
	if err := h.SetTLVs(tlvs); err != nil {
		t.Fatal(err)
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A header followed by a ClientHello in one segment, or split anywhere,
// reads the same header and hands back the same following bytes.
func TestReadProxyHeader(t *testing.T) {
	hello := []byte("\x16\x03\x01\x00\x05hello")
	v1 := []byte("PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n")
	v2 := v2Header(t, []proxyproto.TLV{{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("game.example.com")}})
	local := []byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
	for _, tc := range []struct {
		name   string
		header []byte
		client string // "" for LOCAL
	}{
		{"v1", v1, "203.0.113.7:51000"},
		{"v2 with a TLV", v2, "203.0.113.7:51000"},
		{"v2 LOCAL", local, ""},
	} {
		in := append(append([]byte(nil), tc.header...), hello...)
		for _, r := range []struct {
			name string
			r    io.Reader
		}{
			{"one segment", bytes.NewReader(in)},
			{"byte by byte", iotest.OneByteReader(bytes.NewReader(in))},
			{"halves", iotest.HalfReader(bytes.NewReader(in))},
		} {
			t.Run(tc.name+"/"+r.name, func(t *testing.T) {
				h, rest, err := ReadProxyHeader(r.r)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(io.MultiReader(bytes.NewReader(rest), r.r))
				if !bytes.Equal(got, hello) {
					t.Fatalf("after the header: %q, want the hello", got)
				}
				if tc.client == "" {
					if h.Command != proxyproto.LOCAL {
						t.Fatalf("command %v, want LOCAL", h.Command)
					}
					return
				}
				if h.SourceAddr.String() != tc.client {
					t.Fatalf("source %v, want %s", h.SourceAddr, tc.client)
				}
				if tc.name == "v2 with a TLV" {
					tlvs, _ := h.TLVs()
					if len(tlvs) != 1 || string(tlvs[0].Value) != "game.example.com" {
						t.Fatalf("TLVs %v", tlvs)
					}
				}
			})
		}
	}
}

// What is not a header is refused: a ClientHello, HTTP, a v1 line without
// its CRLF within 107 bytes, a v2 header over 4 KiB, a truncated header.
func TestReadProxyHeaderRefuses(t *testing.T) {
	big := v2Header(t, []proxyproto.TLV{{Type: proxyproto.PP2_TYPE_NOOP, Value: bytes.Repeat([]byte{0}, 5000)}})
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"a ClientHello", []byte("\x16\x03\x01\x02\x00\x01"), ErrNoProxyHeader},
		{"HTTP", []byte("GET / HTTP/1.1\r\n"), ErrNoProxyHeader},
		{"PROX then junk", []byte("PROXZ TCP4"), ErrNoProxyHeader},
		{"bad v2 signature", []byte("\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c"), ErrNoProxyHeader},
		{"long v1", []byte("PROXY TCP4 " + strings.Repeat("1", 200)), ErrProxyHeaderTooLarge},
		{"v2 over 4 KiB", big, ErrProxyHeaderTooLarge},
		{"truncated v2", v2Header(t, nil)[:20], io.ErrUnexpectedEOF},
		{"empty", nil, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ReadProxyHeader(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	if _, _, err := ReadProxyHeader(strings.NewReader("PROXY TCP4 nonsense\r\n")); err == nil {
		t.Fatal("a malformed v1 line was accepted")
	}
}

// Invariants on any input: no panic; the bytes consumed never exceed the
// header plus what was read; a header read at once and byte by byte gives
// the same result; an accepted header formats back to an equal header.
func FuzzReadProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n\x16\x03\x01"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"))
	f.Add(v2Header(f, nil))
	f.Add(v2Header(f, []proxyproto.TLV{{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("x.test")}}))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r1 := bytes.NewReader(in)
		h1, rest1, err1 := ReadProxyHeader(r1)
		r2 := bytes.NewReader(in)
		h2, rest2, err2 := ReadProxyHeader(iotest.OneByteReader(r2))
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("at once: %v; byte by byte: %v", err1, err2)
		}
		if err1 != nil {
			return
		}
		// What follows the header: the returned bytes, then the reader's.
		after1, _ := io.ReadAll(io.MultiReader(bytes.NewReader(rest1), r1))
		after2, _ := io.ReadAll(io.MultiReader(bytes.NewReader(rest2), r2))
		if !h1.EqualsTo(h2) || !bytes.Equal(after1, after2) {
			t.Fatalf("byte by byte differs: %v / %v, after %q / %q", h1, h2, after1, after2)
		}
		if !bytes.HasSuffix(in, after1) {
			t.Fatalf("%q is not the input's tail", after1)
		}
		if n := len(in) - len(after1); n > MaxProxyHeaderV2 {
			t.Fatalf("a header of %d bytes", n)
		}
		b, err := h1.Format()
		if err != nil {
			return // go-proxyproto reads some headers it will not write
		}
		h3, _, err := ReadProxyHeader(bytes.NewReader(b))
		if err != nil || !h3.EqualsTo(h1) {
			t.Fatalf("formatted header %q reads back as %v, %v", b, h3, err)
		}
	})
}
