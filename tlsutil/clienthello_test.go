package tlsutil

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"sluice/tlsutil/tlstest"
)

type goHello struct {
	name     string
	cfg      *tls.Config
	sni      string
	alpn     []string
	versions []uint16
}

var goHelloSpecs = []goHello{
	{name: "default", cfg: &tls.Config{ServerName: "example.com"}, sni: "example.com", versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
	{name: "x25519", cfg: &tls.Config{ServerName: "game.example.com", CurvePreferences: []tls.CurveID{tls.X25519}}, sni: "game.example.com", versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
	{name: "alpn", cfg: &tls.Config{ServerName: "ws.example.com", NextProtos: []string{"h2", "http/1.1"}}, sni: "ws.example.com", alpn: []string{"h2", "http/1.1"}, versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
	{name: "nosni", cfg: &tls.Config{}, versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
	{name: "tls12", cfg: &tls.Config{ServerName: "old.example.com", MaxVersion: tls.VersionTLS12}, sni: "old.example.com", versions: []uint16{tls.VersionTLS12}},
}

// capture returns the named Go hello.
func capture(t testing.TB, name string) []byte {
	t.Helper()
	for _, s := range goHelloSpecs {
		if s.name == name {
			return tlstest.CaptureClientHello(t, s.cfg)
		}
	}
	t.Fatalf("no hello spec %q", name)
	return nil
}

func mustRead(t *testing.T, r io.Reader, max int) *ClientHello {
	t.Helper()
	h, err := ReadClientHello(r, max)
	if err != nil {
		t.Fatalf("ReadClientHello: %v", err)
	}
	return h
}

// checkHello pins the parsed fields and that Raw is exactly the input.
func checkHello(t *testing.T, h *ClientHello, in []byte, sni string, alpn []string, versions []uint16) {
	t.Helper()
	if h.ServerName != sni || h.RawServerName != sni || h.SNIInvalid {
		t.Errorf("ServerName %q, RawServerName %q, SNIInvalid %v; want %q", h.ServerName, h.RawServerName, h.SNIInvalid, sni)
	}
	if !slices.Equal(h.ALPN, alpn) {
		t.Errorf("ALPN %q, want %q", h.ALPN, alpn)
	}
	if !slices.Equal(h.Versions, versions) {
		t.Errorf("Versions %x, want %x", h.Versions, versions)
	}
	if !bytes.Equal(h.Raw, in) {
		t.Errorf("Raw (%d bytes) differs from the %d input bytes", len(h.Raw), len(in))
	}
}

// TestGoHellos pins the fields of real crypto/tls client hellos, delivered
// whole, one byte per Read, in halves, and with the data/EOF in one Read.
func TestGoHellos(t *testing.T) {
	for _, s := range goHelloSpecs {
		hello := tlstest.CaptureClientHello(t, s.cfg)
		readers := []struct {
			name string
			r    func() io.Reader
		}{
			{"whole", func() io.Reader { return bytes.NewReader(hello) }},
			{"onebyte", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(hello)) }},
			{"half", func() io.Reader { return iotest.HalfReader(bytes.NewReader(hello)) }},
			{"dataerr", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(hello)) }},
			{"split1460", func() io.Reader { return &chunkReader{data: hello, chunk: 1460} }},
		}
		for _, rd := range readers {
			t.Run(s.name+"/"+rd.name, func(t *testing.T) {
				h := mustRead(t, rd.r(), 0)
				checkHello(t, h, hello, s.sni, s.alpn, s.versions)
			})
		}
	}
}

// TestChromeLikeHello pins the hand-built Chrome-like hello: GREASE values,
// X25519MLKEM768 and a well-formed GREASE ECH extension all pass.
func TestChromeLikeHello(t *testing.T) {
	hello := tlstest.ChromeLikeHello("chrome.example.com")
	if len(hello) < 1700 || len(hello) > 1900 {
		t.Errorf("Chrome-like hello is %d bytes, want about 1815", len(hello))
	}
	h := mustRead(t, iotest.OneByteReader(bytes.NewReader(hello)), 0)
	checkHello(t, h, hello, "chrome.example.com", []string{"h2", "http/1.1"}, []uint16{0xdada, tls.VersionTLS13, tls.VersionTLS12})
}

// TestReframed pins reassembly across TLS records (RELIABILITY T5, A10):
// 2, 3 and 8 records, splits inside the 4-byte handshake header and inside
// the SNI (nginx's "foo" case), each also read one byte at a time.
func TestReframed(t *testing.T) {
	for _, name := range []string{"default", "x25519", "alpn"} {
		var spec goHello
		for _, s := range goHelloSpecs {
			if s.name == name {
				spec = s
			}
		}
		hello := capture(t, name)
		msgLen := len(hello) - 5
		sni := tlstest.ServerNameOffset(hello, spec.sni)
		if sni < 0 {
			t.Fatalf("%s: SNI not found", name)
		}
		cases := map[string][]int{
			"2/header1":  {1},
			"2/header3":  {3},
			"2/sni":      {sni + 2},
			"2/mid":      {msgLen / 2},
			"2/last":     {msgLen - 1},
			"3/header":   {2, sni + 1},
			"3/sni":      {sni + 1, sni + 3},
			"8/mixed":    {1, 2, 3, 4, sni, sni + 1, sni + 4},
			"8/spread":   {msgLen / 8, 2 * msgLen / 8, 3 * msgLen / 8, 4 * msgLen / 8, 5 * msgLen / 8, 6 * msgLen / 8, 7 * msgLen / 8},
			"8/sniBytes": {sni, sni + 1, sni + 2, sni + 3, sni + 4, sni + 5, sni + 6},
		}
		for cname, splits := range cases {
			re := tlstest.Reframe(hello, splits...)
			if got, want := countRecords(re), len(splits)+1; got != want {
				t.Fatalf("%s/%s: %d records, want %d", name, cname, got, want)
			}
			t.Run(name+"/"+cname, func(t *testing.T) {
				checkHello(t, mustRead(t, bytes.NewReader(re), 0), re, spec.sni, spec.alpn, spec.versions)
				checkHello(t, mustRead(t, iotest.OneByteReader(bytes.NewReader(re)), 0), re, spec.sni, spec.alpn, spec.versions)
			})
		}
	}
}

func countRecords(b []byte) int {
	n := 0
	for len(b) >= 5 {
		b = b[5+int(binary.BigEndian.Uint16(b[3:])):]
		n++
	}
	return n
}

// TestPadded pins large hellos (RELIABILITY T4, A7, A8): 16 KiB passes the
// default cap; 20 KiB is rejected under a 16 KiB cap without reading past
// it; 60 KiB passes with the cap raised to 64 KiB.
func TestPadded(t *testing.T) {
	base := capture(t, "x25519")

	t.Run("16KiB", func(t *testing.T) {
		// Records of exactly 16 KiB (one full record) pass the default
		// cap; one byte more is rejected.
		p := tlstest.Pad(base, maxPlaintext-5)
		if len(p) != 16<<10 || countRecords(p) != 1 {
			t.Fatalf("padded to %d bytes", len(p))
		}
		if stdHello(p) == nil {
			t.Fatal("crypto/tls rejects the padded hello")
		}
		h := mustRead(t, bytes.NewReader(p), DefaultMaxHelloBytes)
		checkHello(t, h, p, "game.example.com", nil, []uint16{tls.VersionTLS13, tls.VersionTLS12})
		r := &chunkReader{data: tlstest.Pad(base, maxPlaintext-4), chunk: 1 << 20}
		if _, err := ReadClientHello(r, DefaultMaxHelloBytes); !errors.Is(err, ErrHelloTooLarge) || r.n > DefaultMaxHelloBytes {
			t.Fatalf("err %v after %d bytes, want ErrHelloTooLarge", err, r.n)
		}
	})

	t.Run("20KiB under 16KiB cap", func(t *testing.T) {
		p := tlstest.Pad(base, 20<<10)
		if countRecords(p) != 2 || stdHello(p) == nil {
			t.Fatalf("bad 20 KiB fixture")
		}
		for _, chunk := range []int{1, 1460, 1 << 20} {
			r := &chunkReader{data: p, chunk: chunk}
			h, err := ReadClientHello(r, 16<<10)
			if !errors.Is(err, ErrHelloTooLarge) {
				t.Fatalf("chunk %d: err %v, want ErrHelloTooLarge", chunk, err)
			}
			if r.n > 16<<10 || !bytes.Equal(h.Raw, p[:r.n]) {
				t.Fatalf("chunk %d: read %d bytes, Raw %d", chunk, r.n, len(h.Raw))
			}
			if chunk == 1 && r.n != 5 {
				// The first record (16384 bytes) cannot fit after its
				// 5-byte header: nothing more is read.
				t.Fatalf("one-byte reads: consumed %d bytes, want 5", r.n)
			}
		}
	})

	t.Run("60KiB under 64KiB cap", func(t *testing.T) {
		p := tlstest.Pad(base, 60<<10)
		if countRecords(p) != 4 {
			t.Fatalf("%d records", countRecords(p))
		}
		h := mustRead(t, &chunkReader{data: p, chunk: 1460}, MaxHelloBytesLimit)
		checkHello(t, h, p, "game.example.com", nil, []uint16{tls.VersionTLS13, tls.VersionTLS12})
		h = mustRead(t, bytes.NewReader(p), 1<<30) // clamped to 64 KiB
		checkHello(t, h, p, "game.example.com", nil, []uint16{tls.VersionTLS13, tls.VersionTLS12})
		if _, err := ReadClientHello(bytes.NewReader(p), 0); !errors.Is(err, ErrHelloTooLarge) {
			t.Fatalf("default cap: err %v, want ErrHelloTooLarge", err)
		}
	})

	t.Run("exact cap", func(t *testing.T) {
		// A hello of exactly maxBytes passes; one byte less of cap fails.
		p := tlstest.Pad(base, 3000)
		mustRead(t, bytes.NewReader(p), len(p))
		r := &chunkReader{data: p, chunk: 7}
		if _, err := ReadClientHello(r, len(p)-1); !errors.Is(err, ErrHelloTooLarge) || r.n > len(p)-1 {
			t.Fatalf("err %v after %d bytes, want ErrHelloTooLarge", err, r.n)
		}
	})
}

// TestOversizedRecordHeader pins RELIABILITY A6: a record length of 18433
// is rejected right after the 5th byte.
func TestOversizedRecordHeader(t *testing.T) {
	for _, hdr := range [][]byte{
		{0x16, 0x03, 0x01, 0x48, 0x01}, // 18433 > 2^14+2048
		{0x16, 0x03, 0x01, 0x40, 0x01}, // 16385 > 2^14: record_overflow
		{0x16, 0x03, 0x01, 0xff, 0xff},
	} {
		in := append(slices.Clone(hdr), make([]byte, 100)...)
		r := &chunkReader{data: in, chunk: 1}
		h, err := ReadClientHello(r, MaxHelloBytesLimit)
		if !errors.Is(err, ErrHelloTooLarge) {
			t.Errorf("% x: err %v, want ErrHelloTooLarge", hdr, err)
		}
		if r.n != 5 || !bytes.Equal(h.Raw, hdr) {
			t.Errorf("% x: read %d bytes, Raw % x", hdr, r.n, h.Raw)
		}
	}
	// A declared handshake length of 16 MiB is refused after 9 bytes.
	in := []byte{0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0xff, 0xff, 0xff, 0x03, 0x03}
	r := &chunkReader{data: in, chunk: 1}
	if _, err := ReadClientHello(r, 0); !errors.Is(err, ErrHelloTooLarge) || r.n != 9 {
		t.Errorf("16 MiB declared: err %v after %d bytes", err, r.n)
	}
}

// TestNotTLS pins RELIABILITY T3/A12: non-TLS first bytes give ErrNotTLS
// after the first Read, with Raw holding what it returned.
func TestNotTLS(t *testing.T) {
	random := make([]byte, 64)
	for i := range random {
		random[i] = byte(i*37 + 11) // starts 0x0b
	}
	cases := []struct {
		name string
		in   []byte
		http bool
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), true},
		{"http2 preface", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), true},
		{"ssh", []byte("SSH-2.0-OpenSSH_9.6\r\n"), false},
		{"random", random, false},
		{"sslv2", []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15}, false},
		{"proxy", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n"), false},
		{"ccs", []byte{0x14, 0x03, 0x03, 0x00, 0x01, 0x01}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &chunkReader{data: c.in, chunk: 10}
			h, err := ReadClientHello(r, 0)
			if !errors.Is(err, ErrNotTLS) {
				t.Fatalf("err %v, want ErrNotTLS", err)
			}
			if r.reads != 1 || !bytes.Equal(h.Raw, c.in[:min(10, len(c.in))]) {
				t.Fatalf("%d reads, Raw %q", r.reads, h.Raw)
			}
			if got := LooksLikeHTTP(h.Raw); got != c.http {
				t.Fatalf("LooksLikeHTTP = %v", got)
			}
			if stdHello(c.in) != nil {
				t.Fatal("crypto/tls accepts it")
			}
		})
	}
}

func TestLooksLikeHTTP(t *testing.T) {
	for in, want := range map[string]bool{
		"G": true, "GE": true, "GET": true, "GET ": true, "GET /": true, "POST /x HTTP/1.1": true,
		"OPTIONS * HTTP/1.1": true, "CONNECT a:443 HTTP/1.1": true, "PRI * HTTP/2.0": true, "P": true, "PA": true,
		"": false, "GETX": false, "get /": false, "GET\t/": false, "SSH-2.0": false, "\x16\x03\x01": false, "X": false,
	} {
		if got := LooksLikeHTTP([]byte(in)); got != want {
			t.Errorf("LooksLikeHTTP(%q) = %v, want %v", in, got, want)
		}
	}
}

// TestReadErrors pins error wrapping: EOF, truncation, a deadline, and
// that Raw keeps every byte read.
func TestReadErrors(t *testing.T) {
	hello := capture(t, "x25519")

	h, err := ReadClientHello(bytes.NewReader(nil), 0)
	if !errors.Is(err, io.EOF) || h == nil || len(h.Raw) != 0 {
		t.Errorf("empty: err %v", err)
	}
	h, err = ReadClientHello(bytes.NewReader(hello[:100]), 0)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !bytes.Equal(h.Raw, hello[:100]) {
		t.Errorf("truncated: err %v", err)
	}
	boom := errors.New("boom")
	h, err = ReadClientHello(io.MultiReader(bytes.NewReader(hello[:7]), iotest.ErrReader(boom)), 0)
	if !errors.Is(err, boom) || !bytes.Equal(h.Raw, hello[:7]) {
		t.Errorf("read error: err %v", err)
	}

	// A deadline on a real conn, with 3 bytes of a record header sent.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := c.Write(hello[:3]); err != nil {
		t.Fatal(err)
	}
	if err := s.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	h, err = ReadClientHello(s, 0)
	if !errors.Is(err, os.ErrDeadlineExceeded) || !bytes.Equal(h.Raw, hello[:3]) {
		t.Errorf("deadline: err %v, Raw % x", err, h.Raw)
	}

	// Reads returning (0, nil) forever end with io.ErrNoProgress.
	if _, err := ReadClientHello(zeroReader{}, 0); !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("zero reads: err %v", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

// TestStrictPrefixes pins that every strict prefix of a hello fails as a
// truncation, never as a success or a different verdict.
func TestStrictPrefixes(t *testing.T) {
	for _, hello := range [][]byte{capture(t, "x25519"), tlstest.Reframe(capture(t, "alpn"), 2, 50, 51)} {
		for k := range len(hello) {
			_, err := ReadClientHello(bytes.NewReader(hello[:k]), 0)
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("prefix %d/%d: err %v", k, len(hello), err)
			}
		}
	}
}

// TestTrailingBytes pins that bytes after the hello (early data, a second
// record) stay in Raw for replay and do not disturb the parse.
func TestTrailingBytes(t *testing.T) {
	hello := capture(t, "alpn")
	extra := []byte{0x17, 0x03, 0x03, 0x00, 0x03, 'a', 'b', 'c'}
	in := concat(hello, extra)
	h := mustRead(t, bytes.NewReader(in), 0)
	checkHello(t, h, in, "ws.example.com", []string{"h2", "http/1.1"}, []uint16{tls.VersionTLS13, tls.VersionTLS12})

	// The hello's last record also carries the start of another handshake
	// message: crypto/tls takes the hello and leaves the rest.
	msg, _ := tlstest.Message(hello)
	rec := tlstest.Records(concat(msg, []byte{20, 0, 0}), 0x0301)
	checkHello(t, mustRead(t, bytes.NewReader(rec), 0), rec, "ws.example.com", []string{"h2", "http/1.1"}, []uint16{tls.VersionTLS13, tls.VersionTLS12})
}

// TestAlertsBeforeHello pins RELIABILITY-TESTS A11: crypto/tls drops up to
// 16 consecutive warning alerts, so do we; a zero-length handshake record,
// 17 alerts, a fatal alert or close_notify are malformed.
func TestAlertsBeforeHello(t *testing.T) {
	hello := capture(t, "x25519")
	userCanceled := []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x5a}
	alerts := func(n int) []byte { return bytes.Repeat(userCanceled, n) }
	split := tlstest.Reframe(hello, 40)
	cases := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"3 warnings", concat(alerts(3), hello), true},
		{"16 warnings", concat(alerts(16), hello), true},
		{"17 warnings", concat(alerts(17), hello), false},
		{"16 warnings between records", concat(alerts(16), split[:45], alerts(16), split[45:]), true},
		{"zero-length handshake record", concat([]byte{0x16, 0x03, 0x01, 0x00, 0x00}, hello), false},
		{"fatal alert", concat([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28}, hello), false},
		{"close_notify", concat([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00}, hello), false},
		{"long alert", concat([]byte{0x15, 0x03, 0x03, 0x00, 0x03, 0x01, 0x5a, 0x00}, hello), false},
		{"ccs before hello", concat([]byte{0x14, 0x03, 0x03, 0x00, 0x01, 0x01}, hello), false},
		{"application data in hello", concat(split[:45], []byte{0x17, 0x03, 0x03, 0x00, 0x01, 0x00}, split[45:]), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if std := stdHello(c.in) != nil; std != c.ok {
				t.Fatalf("crypto/tls accepts: %v, want %v", std, c.ok)
			}
			h, err := ReadClientHello(iotest.OneByteReader(bytes.NewReader(c.in)), 0)
			if c.ok {
				if err != nil {
					t.Fatalf("err %v", err)
				}
				checkHello(t, h, c.in, "game.example.com", nil, []uint16{tls.VersionTLS13, tls.VersionTLS12})
				return
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrNotTLS) {
				t.Fatalf("err %v, want ErrMalformed", err)
			}
		})
	}
}

// editExt returns hello with f applied to its parsed form.
func editExt(hello []byte, f func(h *tlstest.Hello)) []byte {
	h := tlstest.MustParseHello(hello)
	f(h)
	return h.Marshal()
}

// Verdicts of malformedTable rows.
const (
	verdictOK = iota
	verdictMalformed
	verdictTruncated
)

type malformedCase struct {
	name    string
	in      []byte
	verdict int
	sni     string // when ok
}

// malformedTable is the RELIABILITY-TESTS A13 table of TestMalformedTable,
// also used to seed FuzzClientHelloDifferential.
func malformedTable(t testing.TB) []malformedCase {
	base := capture(t, "alpn")
	sniData := func(e ...tlstest.ServerNameEntry) []byte { return tlstest.ServerNameData(e...) }
	return []malformedCase{
		{"baseline", base, verdictOK, "ws.example.com"},
		{"duplicate extension", editExt(base, func(h *tlstest.Hello) {
			h.Insert(tlstest.Extension{Type: tlstest.ExtALPN, Data: h.Extensions[h.Index(tlstest.ExtALPN)].Data})
		}), verdictMalformed, ""},
		{"duplicate unknown extension", editExt(base, func(h *tlstest.Hello) {
			h.Insert(tlstest.Extension{Type: 0xeeee})
			h.Insert(tlstest.Extension{Type: 0xeeee})
		}), verdictMalformed, ""},
		{"extension length overflow", func() []byte {
			b := editExt(base, func(h *tlstest.Hello) { h.Insert(tlstest.Extension{Type: 0xeeee, Data: []byte{1, 2, 3}}) })
			b[len(b)-4] = 0xff // the last extension claims 0xff03 bytes
			return b
		}(), verdictMalformed, ""},
		{"extensions block length overflow", func() []byte {
			h := tlstest.MustParseHello(base)
			b := h.Marshal()
			off := 5 + 4 + len(h.Body)
			binary.BigEndian.PutUint16(b[off:], binary.BigEndian.Uint16(b[off:])+1)
			return b
		}(), verdictMalformed, ""},
		{"two host_names", editExt(base, func(h *tlstest.Hello) {
			h.Set(tlstest.ExtServerName, sniData(tlstest.ServerNameEntry{Name: "a.example.com"}, tlstest.ServerNameEntry{Name: "b.example.com"}))
		}), verdictMalformed, ""},
		{"empty host_name", editExt(base, func(h *tlstest.Hello) {
			h.Set(tlstest.ExtServerName, sniData(tlstest.ServerNameEntry{Name: ""}))
		}), verdictMalformed, ""},
		{"empty server_name list", editExt(base, func(h *tlstest.Hello) {
			h.Set(tlstest.ExtServerName, sniData())
		}), verdictMalformed, ""},
		{"name_type 1 only", editExt(base, func(h *tlstest.Hello) {
			h.Set(tlstest.ExtServerName, sniData(tlstest.ServerNameEntry{Type: 1, Name: "ws.example.com"}))
		}), verdictOK, ""},
		{"name_type 1 then host_name", editExt(base, func(h *tlstest.Hello) {
			h.Set(tlstest.ExtServerName, sniData(tlstest.ServerNameEntry{Type: 1, Name: "x"}, tlstest.ServerNameEntry{Name: "ws.example.com"}))
		}), verdictOK, "ws.example.com"},
		{"short declared length", func() []byte {
			b := slices.Clone(base)
			b[8]-- // handshake length one short: the record holds one byte more
			return b
		}(), verdictMalformed, ""},
		{"long declared length", func() []byte {
			b := slices.Clone(base)
			b[8]++ // the hello needs one more byte than was sent
			return b
		}(), verdictTruncated, ""},
		{"record version 0x0300", func() []byte {
			b := slices.Clone(base)
			b[1], b[2] = 3, 0
			return b
		}(), verdictOK, "ws.example.com"},
		{"record version 0x1000", func() []byte {
			b := slices.Clone(base)
			b[1], b[2] = 0x10, 0
			return b
		}(), verdictMalformed, ""},
		{"GREASE extension", editExt(base, func(h *tlstest.Hello) {
			h.Extensions = slices.Insert(h.Extensions, 0, tlstest.Extension{Type: 0x1a1a})
			h.Insert(tlstest.Extension{Type: 0xfafa, Data: []byte{0}})
		}), verdictOK, "ws.example.com"},
		{"unknown extension 0xeeee", editExt(base, func(h *tlstest.Hello) {
			h.Insert(tlstest.Extension{Type: 0xeeee, Data: []byte("hello")})
		}), verdictOK, "ws.example.com"},
		{"GREASE ECH", editExt(base, func(h *tlstest.Hello) {
			ech := tlstest.MustParseHello(tlstest.ChromeLikeHello("x.example"))
			h.Insert(ech.Extensions[ech.Index(tlstest.ExtEncryptedClientHello)])
		}), verdictOK, "ws.example.com"},
		{"ECH 5 random bytes", editExt(base, func(h *tlstest.Hello) {
			h.Insert(tlstest.Extension{Type: tlstest.ExtEncryptedClientHello, Data: []byte{0x00, 0x9c, 0x41, 0x07, 0xe3}})
		}), verdictMalformed, ""},
		{"ECH unknown type", editExt(base, func(h *tlstest.Hello) {
			h.Insert(tlstest.Extension{Type: tlstest.ExtEncryptedClientHello, Data: []byte{0x07, 0x9c, 0x41, 0x07, 0xe3}})
		}), verdictMalformed, ""},
		{"ECH inner type", editExt(base, func(h *tlstest.Hello) {
			h.Insert(tlstest.Extension{Type: tlstest.ExtEncryptedClientHello, Data: []byte{0x01}})
		}), verdictOK, "ws.example.com"},
		{"trailing dot", tlstest.WithServerName(base, "ws.example.com."), verdictMalformed, ""},
		{"not a client_hello", func() []byte {
			b := slices.Clone(base)
			b[5] = 2 // server_hello
			return b
		}(), verdictMalformed, ""},
		{"session id too long", func() []byte {
			b := slices.Clone(base)
			b[5+4+2+32] = 33
			return b
		}(), verdictMalformed, ""},
		{"no extensions", editExt(base, func(h *tlstest.Hello) {
			h.Extensions = nil
			h.NoExtensions = true
		}), verdictOK, ""},
		{"trailing byte in message", func() []byte {
			msg, _ := tlstest.Message(base)
			msg = append(msg, 0)
			binary.BigEndian.PutUint16(msg[2:], binary.BigEndian.Uint16(msg[2:])+1)
			return tlstest.Records(msg, 0x0301)
		}(), verdictMalformed, ""},
	}
}

// TestMalformedTable pins RELIABILITY T6 / RELIABILITY-TESTS A13 against
// what crypto/tls itself decides for the same bytes.
func TestMalformedTable(t *testing.T) {
	const (
		ok        = verdictOK
		malformed = verdictMalformed
		truncated = verdictTruncated
	)
	cases := malformedTable(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			std := stdHello(c.in)
			if (std != nil) != (c.verdict == ok) {
				t.Fatalf("crypto/tls accepts: %v; the table is wrong", std != nil)
			}
			for _, r := range []io.Reader{bytes.NewReader(c.in), iotest.OneByteReader(bytes.NewReader(c.in))} {
				h, err := ReadClientHello(r, 0)
				switch c.verdict {
				case ok:
					if err != nil {
						t.Fatalf("err %v", err)
					}
					if h.ServerName != c.sni || h.RawServerName != std.ServerName || !slices.Equal(h.ALPN, std.SupportedProtos) {
						t.Fatalf("SNI %q raw %q ALPN %q; crypto/tls %q %q", h.ServerName, h.RawServerName, h.ALPN, std.ServerName, std.SupportedProtos)
					}
				case malformed:
					if !errors.Is(err, ErrMalformed) {
						t.Fatalf("err %v, want ErrMalformed", err)
					}
				case truncated:
					if !errors.Is(err, io.ErrUnexpectedEOF) {
						t.Fatalf("err %v, want io.ErrUnexpectedEOF", err)
					}
				}
				if !bytes.HasPrefix(c.in, h.Raw) || c.verdict != malformed && len(h.Raw) != len(c.in) {
					t.Fatalf("Raw is %d bytes, input %d", len(h.Raw), len(c.in))
				}
			}
		})
	}
}

// TestSNITable pins RELIABILITY T7 / A14 end to end: crypto/tls passes the
// raw name through, NormalizeSNI decides.
func TestSNITable(t *testing.T) {
	base := capture(t, "x25519")
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61) // 253
	cases := []struct {
		raw     string
		want    string
		invalid bool
	}{
		{"GAME.Example.COM", "game.example.com", false},
		{"game.example.com", "game.example.com", false},
		{"jeu-\xc3\xa9.example", "", true},
		{"xn--jeu--epa.example", "xn--jeu--epa.example", false},
		{long, long, false},
		{long + "d", "", true},
		{strings.Repeat("a", 64) + ".example", "", true},
		{"127.0.0.1", "", true},
		{"::1", "", true},
		{"[::1]", "", true},
		{"a\x00b.example", "", true},
		{"a/b.example", "", true},
		{"a\nb.example", "", true},
		{"\x1b[31mred.example", "", true},
		{"_acme.example.com", "_acme.example.com", false},
		{"localhost", "localhost", false},
		{"-bad.example", "", true},
		{"a..b", "", true},
	}
	for _, c := range cases {
		t.Run(EscapeForLog(c.raw, 40), func(t *testing.T) {
			in := tlstest.WithServerName(base, c.raw)
			h := mustRead(t, bytes.NewReader(in), 0)
			if h.RawServerName != c.raw || h.ServerName != c.want || h.SNIInvalid != c.invalid {
				t.Fatalf("got %q/%q/%v, want %q/%v", h.RawServerName, h.ServerName, h.SNIInvalid, c.want, c.invalid)
			}
		})
	}
}

// TestLegacyVersion pins Versions without supported_versions: the
// legacy_version alone, not crypto/tls's expansion.
func TestLegacyVersion(t *testing.T) {
	in := editExt(capture(t, "tls12"), func(h *tlstest.Hello) { h.Remove(tlstest.ExtSupportedVersions) })
	h := mustRead(t, bytes.NewReader(in), 0)
	if !slices.Equal(h.Versions, []uint16{tls.VersionTLS12}) {
		t.Fatalf("Versions %x", h.Versions)
	}
}

// TestConcurrent pins that concurrent parses share nothing mutable (the
// tls.Config is shared; per-call state lives in the replay conn).
func TestConcurrent(t *testing.T) {
	hellos := [][]byte{capture(t, "default"), capture(t, "alpn"), capture(t, "nosni")}
	want := []string{"example.com", "ws.example.com", ""}
	errc := make(chan error, 8)
	for g := range 8 {
		go func() {
			var err error
			for i := range 50 {
				k := (g + i) % len(hellos)
				h, e := ReadClientHello(bytes.NewReader(hellos[k]), 0)
				if e != nil || h.ServerName != want[k] {
					err = fmt.Errorf("hello %d: %q, %v", k, h.ServerName, e)
					break
				}
			}
			errc <- err
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

func BenchmarkReadClientHello(b *testing.B) {
	for _, name := range []string{"default", "x25519"} {
		hello := capture(b, name)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(hello)))
			r := bytes.NewReader(hello)
			for b.Loop() {
				r.Reset(hello)
				if _, err := ReadClientHello(r, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("chrome", func(b *testing.B) {
		hello := tlstest.ChromeLikeHello("chrome.example.com")
		b.ReportAllocs()
		r := bytes.NewReader(hello)
		for b.Loop() {
			r.Reset(hello)
			if _, err := ReadClientHello(r, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
