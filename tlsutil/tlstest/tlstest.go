// Package tlstest builds ClientHello byte streams for tests: real crypto/tls
// client hellos captured off the wire, re-framed into several records,
// padded, edited extension by extension, or hand-built Chrome-like.
//
// Functions that take hello bytes expect well-formed TLS handshake records
// carrying exactly one handshake message (what CaptureClientHello returns);
// they panic otherwise, as these are test fixtures.
package tlstest

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

const (
	recordHeaderLen     = 5
	maxRecordPayload    = 16384 // RFC 8446, Section 5.1
	recordTypeHandshake = 22

	// ExtServerName and the other Ext constants are extension code points
	// used by the helpers and by tests that edit hellos.
	ExtServerName           = 0      // RFC 6066, Section 3
	ExtSupportedVersions    = 43     // RFC 8446, Section 4.2.1
	ExtALPN                 = 16     // RFC 7301
	ExtPadding              = 21     // RFC 7685
	ExtPreSharedKey         = 41     // RFC 8446, Section 4.2.11; must be last
	ExtEncryptedClientHello = 0xfe0d // draft-ietf-tls-esni
)

// CaptureClientHello runs a real crypto/tls client handshake over net.Pipe
// and returns its first flight exactly as written: the ClientHello record(s).
// cfg nil means ServerName "example.com". cfg is cloned and
// InsecureSkipVerify set, so an empty ServerName yields a hello without SNI.
// Set NextProtos, CurvePreferences (X25519 only gives about 300 bytes; the
// default with X25519MLKEM768 about 1.5 KB), MaxVersion and so on as needed.
func CaptureClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	if cfg == nil {
		cfg = &tls.Config{ServerName: "example.com"}
	}
	cfg = cfg.Clone()
	cfg.InsecureSkipVerify = true
	cc, sc := net.Pipe()
	done := make(chan struct{})
	go runClient(cc, cfg, done)
	_ = sc.SetDeadline(time.Now().Add(10 * time.Second))
	hello, err := readFirstFlight(sc)
	sc.Close()
	<-done
	if err != nil {
		t.Fatalf("tlstest: capturing ClientHello: %v", err)
	}
	return hello
}

// runClient runs the client side of CaptureClientHello; its handshake fails
// once the capturing side closes the pipe.
func runClient(c net.Conn, cfg *tls.Config, done chan<- struct{}) {
	defer close(done)
	defer c.Close()
	_ = tls.Client(c, cfg).Handshake()
}

// readFirstFlight reads handshake records until one handshake message is
// complete and returns the record bytes.
func readFirstFlight(r io.Reader) ([]byte, error) {
	var out []byte
	hs := 0
	for {
		var hdr [recordHeaderLen]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, err
		}
		if hdr[0] != recordTypeHandshake {
			return nil, fmt.Errorf("record type %d", hdr[0])
		}
		n := int(binary.BigEndian.Uint16(hdr[3:]))
		out = append(out, hdr[:]...)
		start := len(out)
		out = append(out, make([]byte, n)...)
		if _, err := io.ReadFull(r, out[start:]); err != nil {
			return nil, err
		}
		hs += n
		if hs >= 4 {
			msg, _ := Message(out)
			if len(msg) >= 4+int(uint32(msg[1])<<16|uint32(msg[2])<<8|uint32(msg[3])) {
				return out, nil
			}
		}
	}
}

// Message returns the handshake bytes carried by the records in hello
// (their concatenated bodies; a fresh slice) and the first record's
// legacy_record_version.
func Message(hello []byte) (msg []byte, recordVersion uint16) {
	for b := hello; len(b) > 0; {
		if len(b) < recordHeaderLen {
			panic("tlstest: truncated record header")
		}
		n := int(binary.BigEndian.Uint16(b[3:]))
		if b[0] != recordTypeHandshake || len(b) < recordHeaderLen+n {
			panic("tlstest: not a complete handshake record")
		}
		if msg == nil {
			recordVersion = binary.BigEndian.Uint16(b[1:])
			msg = make([]byte, 0, len(hello))
		}
		msg = append(msg, b[recordHeaderLen:recordHeaderLen+n]...)
		b = b[recordHeaderLen+n:]
	}
	return msg, recordVersion
}

// Records wraps a handshake message into handshake records of at most 16384
// bytes with the given record version.
func Records(msg []byte, recordVersion uint16) []byte {
	return frame(msg, recordVersion, nil)
}

func frame(msg []byte, vers uint16, cuts []int) []byte {
	out := make([]byte, 0, len(msg)+recordHeaderLen*(len(cuts)+1+len(msg)/maxRecordPayload))
	prev := 0
	for _, c := range append(cuts, len(msg)) {
		for prev < c {
			n := min(c-prev, maxRecordPayload)
			out = append(out, recordTypeHandshake, byte(vers>>8), byte(vers), byte(n>>8), byte(n))
			out = append(out, msg[prev:prev+n]...)
			prev += n
		}
	}
	return out
}

// Reframe re-wraps the handshake message carried by hello into several
// records, cutting at the given offsets into the handshake message (0 is
// the msg_type byte, so splits 1..3 land inside the 4-byte handshake
// header). Offsets outside (0, len) and duplicates are ignored; pieces
// longer than 16384 bytes are cut further. The first record's version is
// kept.
func Reframe(hello []byte, splits ...int) []byte {
	msg, vers := Message(hello)
	var cuts []int
	for _, s := range splits {
		if s > 0 && s < len(msg) {
			cuts = append(cuts, s)
		}
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	return frame(msg, vers, cuts)
}

// ServerNameOffset returns the offset of name inside hello's handshake
// message, for use as a Reframe split (offset+1 cuts after the first byte of
// the name), or -1 if absent.
func ServerNameOffset(hello []byte, name string) int {
	msg, _ := Message(hello)
	return bytes.Index(msg, []byte(name))
}

// Extension is one ClientHello extension.
type Extension struct {
	Type uint16
	Data []byte
}

// Hello is a ClientHello split into the parts tests edit.
type Hello struct {
	RecordVersion uint16
	// Body holds legacy_version through compression_methods: everything
	// between the handshake header and the extensions block.
	Body       []byte
	Extensions []Extension
	// NoExtensions marks a hello without an extensions block (as opposed to
	// an empty one).
	NoExtensions bool
}

// ParseHello splits hello (records holding one ClientHello) into its parts.
// RFC 8446, Section 4.1.2.
func ParseHello(hello []byte) (*Hello, error) {
	msg, vers := Message(hello)
	if len(msg) < 4 || msg[0] != 1 {
		return nil, errors.New("tlstest: not a ClientHello")
	}
	n := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
	if len(msg) != 4+n {
		return nil, errors.New("tlstest: handshake length mismatch")
	}
	b := msg[4:]
	p := 2 + 32 // legacy_version, random
	if len(b) < p+1 {
		return nil, errors.New("tlstest: short hello")
	}
	p += 1 + int(b[p]) // legacy_session_id
	if len(b) < p+2 {
		return nil, errors.New("tlstest: short hello")
	}
	p += 2 + int(binary.BigEndian.Uint16(b[p:])) // cipher_suites
	if len(b) < p+1 {
		return nil, errors.New("tlstest: short hello")
	}
	p += 1 + int(b[p]) // legacy_compression_methods
	if len(b) < p {
		return nil, errors.New("tlstest: short hello")
	}
	h := &Hello{RecordVersion: vers, Body: slices.Clone(b[:p])}
	if len(b) == p {
		h.NoExtensions = true
		return h, nil
	}
	if len(b) < p+2 || int(binary.BigEndian.Uint16(b[p:])) != len(b)-p-2 {
		return nil, errors.New("tlstest: bad extensions length")
	}
	for e := b[p+2:]; len(e) > 0; {
		if len(e) < 4 || len(e) < 4+int(binary.BigEndian.Uint16(e[2:])) {
			return nil, errors.New("tlstest: bad extension")
		}
		l := int(binary.BigEndian.Uint16(e[2:]))
		h.Extensions = append(h.Extensions, Extension{Type: binary.BigEndian.Uint16(e), Data: slices.Clone(e[4 : 4+l])})
		e = e[4+l:]
	}
	return h, nil
}

// MustParseHello is ParseHello that panics on error.
func MustParseHello(hello []byte) *Hello {
	h, err := ParseHello(hello)
	if err != nil {
		panic(err)
	}
	return h
}

// Message encodes the ClientHello handshake message (header included).
func (h *Hello) Message() []byte {
	var exts []byte
	for _, e := range h.Extensions {
		exts = binary.BigEndian.AppendUint16(exts, e.Type)
		exts = binary.BigEndian.AppendUint16(exts, uint16(len(e.Data)))
		exts = append(exts, e.Data...)
	}
	n := len(h.Body)
	if !h.NoExtensions || len(h.Extensions) > 0 {
		if len(exts) > 0xffff {
			panic("tlstest: extensions block too long")
		}
		n += 2 + len(exts)
	}
	msg := make([]byte, 0, 4+n)
	msg = append(msg, 1, byte(n>>16), byte(n>>8), byte(n))
	msg = append(msg, h.Body...)
	if !h.NoExtensions || len(h.Extensions) > 0 {
		msg = binary.BigEndian.AppendUint16(msg, uint16(len(exts)))
		msg = append(msg, exts...)
	}
	return msg
}

// Marshal encodes the hello as handshake records of at most 16384 bytes.
func (h *Hello) Marshal() []byte {
	return Records(h.Message(), h.RecordVersion)
}

// Index returns the position of the first extension of type typ, or -1.
func (h *Hello) Index(typ uint16) int {
	return slices.IndexFunc(h.Extensions, func(e Extension) bool { return e.Type == typ })
}

// Set replaces the data of the first extension of type typ, or appends the
// extension (before a trailing pre_shared_key) if absent.
func (h *Hello) Set(typ uint16, data []byte) {
	if i := h.Index(typ); i >= 0 {
		h.Extensions[i].Data = data
		return
	}
	h.Insert(Extension{Type: typ, Data: data})
}

// Insert adds e at the end, or before a trailing pre_shared_key, which must
// stay last (RFC 8446, Section 4.2.11).
func (h *Hello) Insert(e Extension) {
	i := len(h.Extensions)
	if i > 0 && h.Extensions[i-1].Type == ExtPreSharedKey {
		i--
	}
	h.Extensions = slices.Insert(h.Extensions, i, e)
}

// Remove deletes every extension of type typ.
func (h *Hello) Remove(typ uint16) {
	h.Extensions = slices.DeleteFunc(h.Extensions, func(e Extension) bool { return e.Type == typ })
}

// ServerNameEntry is one entry of a server_name list.
type ServerNameEntry struct {
	Type uint8 // 0 is host_name
	Name string
}

// ServerNameData encodes a server_name extension body (RFC 6066, Section 3)
// with arbitrary entries, valid or not.
func ServerNameData(entries ...ServerNameEntry) []byte {
	var list []byte
	for _, e := range entries {
		list = append(list, e.Type)
		list = binary.BigEndian.AppendUint16(list, uint16(len(e.Name)))
		list = append(list, e.Name...)
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(list))), list...)
}

// WithServerName returns hello with its server_name extension replaced by a
// single host_name entry holding name verbatim (crypto/tls clients refuse to
// send IP literals, trailing dots or U-labels). An empty name removes the
// extension.
func WithServerName(hello []byte, name string) []byte {
	h := MustParseHello(hello)
	if name == "" {
		h.Remove(ExtServerName)
	} else if i := h.Index(ExtServerName); i >= 0 {
		h.Extensions[i].Data = ServerNameData(ServerNameEntry{Name: name})
	} else {
		h.Extensions = slices.Insert(h.Extensions, 0, Extension{Type: ExtServerName, Data: ServerNameData(ServerNameEntry{Name: name})})
	}
	return h.Marshal()
}

// Pad adds a padding extension (RFC 7685) to hello, or grows an existing
// one, so that the handshake message (4-byte header included) is total
// bytes; all length fields are fixed and the result is split into records
// of at most 16384 bytes. If total is too small to add padding, hello is
// returned re-framed but otherwise unchanged. total may be at most about
// 64 KiB (the extensions block has a 16-bit length).
func Pad(hello []byte, total int) []byte {
	h := MustParseHello(hello)
	cur := len(h.Message())
	if i := h.Index(ExtPadding); i >= 0 {
		if total > cur {
			h.Extensions[i].Data = make([]byte, len(h.Extensions[i].Data)+total-cur)
		}
		return h.Marshal()
	}
	grow := total - cur - 4
	if h.NoExtensions {
		grow -= 2
	}
	if grow < 0 {
		return h.Marshal()
	}
	h.NoExtensions = false
	h.Insert(Extension{Type: ExtPadding, Data: make([]byte, grow)})
	return h.Marshal()
}
