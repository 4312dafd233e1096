package tlsutil

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sluice/tlsutil/tlstest"
)

// oracleAndOurs parses the handshake message msg (4-byte header included)
// with parseMessage and, framed into records, with parseWithCryptoTLS.
func oracleAndOurs(msg []byte) (ours, std *ClientHello, errOurs, errStd error) {
	b := new(helloBlock)
	errOurs = b.parseMessage(msg)
	std = new(ClientHello)
	errStd = parseWithCryptoTLS(std, tlstest.Records(msg, 0x0301))
	return &b.h, std, errOurs, errStd
}

// sameHello compares every parsed field; Raw is not set by the parsers.
func sameHello(a, b *ClientHello) bool {
	return a.ServerName == b.ServerName && a.RawServerName == b.RawServerName &&
		a.SNIInvalid == b.SNIInvalid && slices.Equal(a.ALPN, b.ALPN) &&
		(a.ALPN == nil) == (b.ALPN == nil) && slices.Equal(a.Versions, b.Versions)
}

// checkDifferential fails t unless parseMessage and crypto/tls agree on msg:
// the same verdict and, on success, the same fields.
func checkDifferential(t *testing.T, msg []byte) {
	t.Helper()
	ours, std, errOurs, errStd := oracleAndOurs(msg)
	if (errOurs == nil) != (errStd == nil) {
		t.Fatalf("ours: %v; crypto/tls: %v", errOurs, errStd)
	}
	if errOurs != nil {
		if !errors.Is(errOurs, ErrMalformed) {
			t.Fatalf("err %v, want ErrMalformed", errOurs)
		}
		return
	}
	if !sameHello(ours, std) {
		t.Fatalf("ours %q/%q/%v %q %x; crypto/tls %q/%q/%v %q %x",
			ours.ServerName, ours.RawServerName, ours.SNIInvalid, ours.ALPN, ours.Versions,
			std.ServerName, std.RawServerName, std.SNIInvalid, std.ALPN, std.Versions)
	}
}

// helloMsg wraps body into a client_hello handshake message.
func helloMsg(body []byte) []byte {
	return append([]byte{typeClientHello, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

// diffSeeds returns message bodies (after the 4-byte handshake header) to
// seed FuzzClientHelloDifferential: the committed FuzzReadClientHello
// corpus, the A13 malformed table, and hellos exercising every extension
// crypto/tls parses, well-formed and not.
func diffSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	addRecords := func(records []byte) {
		if end := helloEnd(records); end >= 0 {
			msg := helloMessage(records[:end], len(records))
			if len(msg) >= 4 {
				n := min(len(msg)-4, int(msg[1])<<16|int(msg[2])<<8|int(msg[3]))
				seeds = append(seeds, msg[4:4+n])
			}
		}
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzReadClientHello", "*"))
	for _, path := range files {
		if data, ok := readCorpusBytes(path); ok {
			addRecords(data)
		}
	}
	for _, c := range malformedTable(t) {
		addRecords(c.in)
	}
	for _, s := range fuzzSeeds(t) {
		addRecords(s.data)
	}
	base := tlstest.MustParseHello(tlstest.ChromeLikeHello("seed.example"))
	for _, e := range extensionSeeds() {
		h := *base
		h.Extensions = slices.Clone(base.Extensions)
		if i := h.Index(e.Type); i >= 0 {
			h.Extensions[i] = e
		} else {
			h.Insert(e)
		}
		msg, _ := tlstest.Message(h.Marshal())
		seeds = append(seeds, msg[4:])
	}
	return seeds
}

// extensionSeeds are extension bodies on and around crypto/tls's rules.
func extensionSeeds() []tlstest.Extension {
	u16 := func(b []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...) }
	u8 := func(b []byte) []byte { return append([]byte{byte(len(b))}, b...) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	var out []tlstest.Extension
	add := func(typ uint16, bodies ...[]byte) {
		for _, b := range bodies {
			out = append(out, tlstest.Extension{Type: typ, Data: b})
		}
	}
	entry := func(typ byte, name string) []byte { return cat([]byte{typ}, u16([]byte(name))) }
	add(extServerName, u16(entry(0, "A.Example")), u16(entry(0, "a.")),
		u16(cat(entry(2, "x"), entry(0, "b.example"))), cat(u16(entry(0, "c.example")), []byte{0}))
	add(extStatusRequest, cat([]byte{1}, u16(nil), u16(nil)), cat([]byte{1}, u16(nil)), cat([]byte{1}, u16(nil), u16(nil), []byte{0}))
	add(extSupportedGroups, u16([]byte{0, 29}), u16(nil), u16([]byte{0, 29, 0}))
	add(extSupportedPoints, u8([]byte{0}), u8(nil))
	add(extSignatureAlgorithms, u16([]byte{4, 3}), u16(nil), u16([]byte{4}))
	add(extSignatureAlgorithmsCert, u16([]byte{4, 3}), u16(nil), u16([]byte{4}))
	add(extALPN, u16(cat(u8([]byte("h2")), u8([]byte("http/1.1")))), u16(nil), u16(cat(u8([]byte("h2")), u8(nil))),
		u16(cat(u8([]byte("a")), u8([]byte("b")), u8([]byte("c")), u8([]byte("d")), u8([]byte("e")))))
	add(extSCT, nil, []byte{0})
	add(extExtendedMasterSecret, nil, []byte{0})
	add(extEarlyData, nil, []byte{0})
	add(extSessionTicket, nil, []byte{1, 2, 3})
	add(extQUICTransportParameters, nil, []byte{1, 2, 3})
	add(extRenegotiationInfo, u8(nil), u8([]byte{1}), nil)
	add(extSupportedVersions, u8([]byte{3, 4}), u8(nil), u8([]byte{3}),
		u8([]byte{0x0a, 0x0a, 3, 4, 3, 3, 3, 2, 3, 1, 3, 0, 0x1a, 0x1a, 0x2a, 0x2a, 0x3a, 0x3a}))
	add(extCookie, u16([]byte{1}), u16(nil))
	add(extKeyShare, u16(nil), u16(cat([]byte{0, 29}, u16([]byte{1}))), u16(cat([]byte{0, 29}, u16(nil))))
	add(extPSKModes, u8(nil), u8([]byte{1}))
	add(extPreSharedKey, cat(u16(cat(u16([]byte{1}), []byte{0, 0, 0, 0})), u16(u8(make([]byte, 32)))),
		cat(u16(nil), u16(u8([]byte{1}))), cat(u16(cat(u16([]byte{1}), []byte{0, 0, 0, 0})), u16(nil)))
	add(extEncryptedClientHello, nil, []byte{echTypeInner}, []byte{echTypeInner, 0}, []byte{2},
		cat([]byte{echTypeOuter, 0, 1, 0, 1, 7}, u16([]byte{1, 2}), u16(nil)),
		cat([]byte{echTypeOuter, 0, 1, 0, 1, 7}, u16([]byte{1, 2}), u16([]byte{3}), []byte{9}),
		cat([]byte{echTypeOuter, 0, 1, 0, 1, 7}, u16([]byte{1, 2})))
	return out
}

// readCorpusBytes returns the []byte argument of a corpus file written in
// testing's "go test fuzz v1" format.
func readCorpusBytes(path string) ([]byte, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 2 || lines[0] != "go test fuzz v1" {
		return nil, false
	}
	arg, ok := strings.CutPrefix(lines[1], "[]byte(")
	if !ok {
		return nil, false
	}
	if arg, ok = strings.CutSuffix(arg, ")"); !ok {
		return nil, false
	}
	s, err := strconv.Unquote(arg)
	if err != nil {
		return nil, false
	}
	return []byte(s), true
}

// FuzzClientHelloDifferential checks the acceptance criterion of the
// message parser: for every ClientHello body, parseMessage accepts exactly
// when crypto/tls reaches GetConfigForClient (parseWithCryptoTLS), and then
// every field is identical. ReadClientHello over the same bytes framed into
// records agrees too, so the framer and the parser fit together.
func FuzzClientHelloDifferential(f *testing.F) {
	for _, s := range diffSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > MaxHelloBytesLimit-4-recordHeaderLen*4 {
			return
		}
		msg := helloMsg(body)
		checkDifferential(t, msg)

		records := tlstest.Records(msg, 0x0301)
		h, err := ReadClientHello(bytes.NewReader(records), MaxHelloBytesLimit)
		b := new(helloBlock)
		errOurs := b.parseMessage(msg)
		ours := &b.h
		if (err == nil) != (errOurs == nil) {
			t.Fatalf("ReadClientHello: %v; parseMessage: %v", err, errOurs)
		}
		if err == nil && !sameHello(h, ours) {
			t.Fatal("ReadClientHello and parseMessage differ")
		}
		if err == nil && h.ALPN != nil {
			// The returned strings are copies: scribbling over the input
			// changes nothing.
			want := slices.Clone(h.ALPN)
			sni := strings.Clone(h.RawServerName)
			clear(records)
			if !slices.Equal(h.ALPN, want) || h.RawServerName != sni {
				t.Fatal("parsed fields alias the input")
			}
		}
	})
}

// TestDifferentialSeeds runs every differential seed through both parsers
// (FuzzClientHelloDifferential does too, but this names the failing seed).
func TestDifferentialSeeds(t *testing.T) {
	seeds := diffSeeds(t)
	if len(seeds) < 60 {
		t.Fatalf("only %d seeds", len(seeds))
	}
	for i, body := range seeds {
		t.Run(strconv.Itoa(i), func(t *testing.T) { checkDifferential(t, helloMsg(body)) })
	}
}

// TestParseMessageAllocs pins the allocation budget: the helloBlock and
// one string for SNI and ALPN; Raw is the only other allocation.
func TestParseMessageAllocs(t *testing.T) {
	for _, hello := range [][]byte{capture(t, "default"), capture(t, "alpn"), tlstest.ChromeLikeHello("chrome.example.com")} {
		r := bytes.NewReader(hello)
		allocs := testing.AllocsPerRun(100, func() {
			r.Reset(hello)
			if _, err := ReadClientHello(r, 0); err != nil {
				t.Fatal(err)
			}
		})
		if allocs > 3 {
			t.Errorf("%v allocations per ReadClientHello, want <= 3 (Raw, helloBlock, strings)", allocs)
		}
	}
}

// TestMultiRecordMessage pins helloMessage across records and alerts, and
// that ReadClientHello agrees with the crypto/tls path on the same bytes.
func TestMultiRecordMessage(t *testing.T) {
	hello := capture(t, "alpn")
	alert := []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x5a}
	split := tlstest.Reframe(hello, 1, 3, 40, 41)
	msg, _ := tlstest.Message(hello)
	in := concat(alert, split[:6], alert, split[6:])
	if got := helloMessage(in, len(msg)); !bytes.Equal(got, msg) {
		t.Fatalf("helloMessage differs")
	}
	h := mustRead(t, bytes.NewReader(in), 0)
	std := new(ClientHello)
	if err := parseWithCryptoTLS(std, in); err != nil || !sameHello(h, std) {
		t.Fatalf("crypto/tls path: %v", err)
	}
}

// TestManyExtensions exercises seenSet past its array: 16k distinct
// extensions pass, one duplicate among them fails, as in crypto/tls.
func TestManyExtensions(t *testing.T) {
	for _, dup := range []bool{false, true} {
		h := tlstest.MustParseHello(capture(t, "x25519"))
		for i := range 12000 {
			h.Insert(tlstest.Extension{Type: uint16(0x1000 + i)})
		}
		if dup {
			h.Insert(tlstest.Extension{Type: 0x1000 + 11999})
		}
		msg, _ := tlstest.Message(h.Marshal())
		checkDifferential(t, msg)
		if _, ok := parseHelloMessage(msg); ok == dup {
			t.Fatalf("dup %v: ok %v", dup, ok)
		}
	}
}
