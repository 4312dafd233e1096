package tlsutil

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"sluice/tlsutil/tlstest"
)

// fuzzCaps are the byte limits FuzzReadClientHello cycles through.
var fuzzCaps = [...]int{DefaultMaxHelloBytes, 4096, MaxHelloBytesLimit, 512}

// fuzzParams maps the fuzzer's int to a Read size (1..4096) and a cap.
func fuzzParams(arg int) (chunk, maxBytes int) {
	u := uint(arg)
	return 1 + int(u%4096), fuzzCaps[(u/4096)%uint(len(fuzzCaps))]
}

// fuzzSeeds are the hellos every fuzz run starts from; the same set is
// committed under testdata/fuzz/FuzzReadClientHello (see
// TestWriteFuzzSeeds). The categories follow Envoy's corpus: valid_sni,
// no_extensions, not_ssl, too_large, multiple_reads.
func fuzzSeeds(t testing.TB) []struct {
	name string
	data []byte
	arg  int
} {
	def := tlstest.CaptureClientHello(t, &tls.Config{ServerName: "example.com"})
	x := tlstest.CaptureClientHello(t, &tls.Config{ServerName: "game.example.com", CurvePreferences: []tls.CurveID{tls.X25519}})
	alpn := tlstest.CaptureClientHello(t, &tls.Config{ServerName: "ws.example.com", NextProtos: []string{"h2", "http/1.1"}, CurvePreferences: []tls.CurveID{tls.X25519}})
	nosni := tlstest.CaptureClientHello(t, &tls.Config{CurvePreferences: []tls.CurveID{tls.X25519}})
	tls12 := tlstest.CaptureClientHello(t, &tls.Config{ServerName: "old.example.com", MaxVersion: tls.VersionTLS12})
	sni := tlstest.ServerNameOffset(x, "game.example.com")
	noExt := editExt(x, func(h *tlstest.Hello) { h.Extensions, h.NoExtensions = nil, true })
	alert := []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x5a}
	cap4k := 4096           // arg selecting chunk 1 and the 4 KiB cap
	cap64k := 2*4096 + 1459 // chunk 1460, 64 KiB cap
	return []struct {
		name string
		data []byte
		arg  int
	}{
		{"valid_sni_go_default", def, 4095},
		{"valid_sni_go_default_1460", def, 1459},
		{"valid_sni_x25519", x, 4095},
		{"valid_sni_alpn", alpn, 4095},
		{"valid_sni_tls12", tls12, 4095},
		{"valid_sni_chrome_like", tlstest.ChromeLikeHello("chrome.example.com"), 4095},
		{"no_sni", nosni, 4095},
		{"no_extensions", noExt, 4095},
		{"multiple_reads_1byte", x, cap4k},
		{"multiple_records_2", tlstest.Reframe(x, sni+2), 4095},
		{"multiple_records_3_header", tlstest.Reframe(x, 2, sni+1), 100},
		{"multiple_records_8", tlstest.Reframe(alpn, 1, 2, 3, 4, sni, sni+1, sni+4), 0},
		{"padded_16k", tlstest.Pad(x, maxPlaintext-5), 4095},
		{"padded_20k_two_records", tlstest.Pad(x, 20<<10), cap64k},
		{"too_large_record_header", []byte{0x16, 0x03, 0x01, 0x48, 0x01}, 4095},
		{"too_large_declared", []byte{0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0xff, 0xff, 0xff, 0x03, 0x03}, 4095},
		{"too_large_for_4k_cap", def, cap4k + 4095},
		{"not_ssl_http", []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), 4095},
		{"not_ssl_sslv2", []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10}, 4095},
		{"not_ssl_proxy", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n"), 4095},
		{"alerts_then_hello", concat(alert, alert, alert, x), 4095},
		{"zero_length_record", concat([]byte{0x16, 0x03, 0x01, 0x00, 0x00}, x), 4095},
		{"trailing_dot", tlstest.WithServerName(x, "example.com."), 4095},
		{"ip_literal", tlstest.WithServerName(x, "127.0.0.1"), 4095},
		{"u_label", tlstest.WithServerName(x, "jeu-\xc3\xa9.example"), 4095},
		{"two_host_names", editExt(x, func(h *tlstest.Hello) {
			h.Set(tlstest.ExtServerName, tlstest.ServerNameData(tlstest.ServerNameEntry{Name: "a.example"}, tlstest.ServerNameEntry{Name: "b.example"}))
		}), 4095},
		{"ech_random", editExt(x, func(h *tlstest.Hello) {
			h.Insert(tlstest.Extension{Type: tlstest.ExtEncryptedClientHello, Data: []byte{0, 0x9c, 0x41, 0x07, 0xe3}})
		}), 4095},
		{"duplicate_extension", editExt(x, func(h *tlstest.Hello) { h.Insert(h.Extensions[0]) }), 4095},
	}
}

// FuzzReadClientHello checks RELIABILITY-TESTS H (FuzzClientHelloPeek):
// no panic; never more than maxBytes read; Raw is exactly the bytes
// consumed; differential against crypto/tls in both directions; every
// strict prefix of an accepted hello fails as a truncation.
func FuzzReadClientHello(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s.data, s.arg)
	}
	f.Fuzz(func(t *testing.T, data []byte, arg int) {
		chunk, maxBytes := fuzzParams(arg)
		r := &chunkReader{data: data, chunk: chunk}
		h, err := ReadClientHello(r, maxBytes)
		if h == nil {
			t.Fatal("nil *ClientHello")
		}
		if r.n > maxBytes {
			t.Fatalf("read %d bytes, cap %d", r.n, maxBytes)
		}
		if !bytes.Equal(h.Raw, data[:r.n]) {
			t.Fatalf("Raw (%d bytes) is not the %d bytes consumed", len(h.Raw), r.n)
		}
		if errors.Is(err, ErrNotTLS) && r.reads != 1 {
			t.Fatalf("ErrNotTLS after %d reads", r.reads)
		}

		std := stdHello(data)
		if err != nil {
			// crypto/tls accepts the bytes only if they exceed our cap.
			if std != nil && !errors.Is(err, ErrHelloTooLarge) {
				t.Fatalf("crypto/tls accepts, we fail: %v", err)
			}
			return
		}
		if std == nil {
			t.Fatal("we accept, crypto/tls does not")
		}
		if h.RawServerName != std.ServerName || !slices.Equal(h.ALPN, std.SupportedProtos) {
			t.Fatalf("SNI %q ALPN %q; crypto/tls %q %q", h.RawServerName, h.ALPN, std.ServerName, std.SupportedProtos)
		}
		norm, ok := NormalizeSNI(std.ServerName)
		if h.ServerName != norm || h.SNIInvalid != (std.ServerName != "" && !ok) {
			t.Fatalf("ServerName %q SNIInvalid %v for raw %q", h.ServerName, h.SNIInvalid, std.ServerName)
		}
		if len(h.Versions) == 0 {
			t.Fatal("no Versions")
		}

		end := helloEnd(data)
		if end < 0 || end > len(h.Raw) {
			t.Fatalf("hello ends at %d, Raw has %d bytes", end, len(h.Raw))
		}
		// Every field, Versions included, equals the crypto/tls path's.
		var oracle ClientHello
		if err := parseWithCryptoTLS(&oracle, data[:end]); err != nil || !sameHello(h, &oracle) {
			t.Fatalf("crypto/tls path: %v; fields %q %q %x, oracle %q %q %x", err,
				h.RawServerName, h.ALPN, h.Versions, oracle.RawServerName, oracle.ALPN, oracle.Versions)
		}
		for _, k := range []int{0, 1, 4, 5, 8, 9, end / 2, end - 5, end - 1} {
			if k < 0 || k >= end {
				continue
			}
			_, err := ReadClientHello(bytes.NewReader(data[:k]), maxBytes)
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("strict prefix %d/%d: err %v", k, end, err)
			}
		}
		h2, err := ReadClientHello(bytes.NewReader(data[:end]), maxBytes)
		if err != nil || h2.RawServerName != h.RawServerName || !slices.Equal(h2.ALPN, h.ALPN) || !slices.Equal(h2.Versions, h.Versions) {
			t.Fatalf("hello alone (%d bytes): %v", end, err)
		}
	})
}

// helloEnd walks the records of data independently of the parser and
// returns the offset past the record that completes the first handshake
// message, or -1.
func helloEnd(data []byte) int {
	var hs []byte
	for p := 0; p+5 <= len(data); {
		n := int(data[p+3])<<8 | int(data[p+4])
		if p+5+n > len(data) {
			return -1
		}
		if data[p] == recordTypeHandshake {
			hs = append(hs, data[p+5:p+5+n]...)
		}
		p += 5 + n
		if len(hs) >= 4 && len(hs) >= 4+(int(hs[1])<<16|int(hs[2])<<8|int(hs[3])) {
			return p
		}
	}
	return -1
}

// TestFuzzSeedsFile keeps the committed seed corpus in step with
// fuzzSeeds. Run with SLUICE_WRITE_FUZZ_SEEDS=1 to rewrite it (crasher
// files found by the fuzzer are left alone).
func TestFuzzSeedsFile(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzReadClientHello")
	write := os.Getenv("SLUICE_WRITE_FUZZ_SEEDS") != ""
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range fuzzSeeds(t) {
		path := filepath.Join(dir, "seed_"+s.name)
		if write {
			if err := os.WriteFile(path, corpusFile(s.data, s.arg), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("missing seed %s (run with SLUICE_WRITE_FUZZ_SEEDS=1): %v", path, err)
			continue
		}
		if !bytes.HasPrefix(b, []byte("go test fuzz v1\n[]byte(")) || !bytes.HasSuffix(b, fmt.Appendf(nil, "int(%d)\n", s.arg)) {
			t.Errorf("%s: not a corpus file for this seed", path)
		}
	}
}

// corpusFile encodes one input in the format of testing's fuzz corpus
// (internal/fuzz marshalCorpusFile: %q for []byte).
func corpusFile(data []byte, arg int) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\nint(%d)\n", data, arg)
}
