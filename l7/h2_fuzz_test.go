package l7

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Seed frames a client would send after its preface and SETTINGS.
func h2Seed(build func(fr *http2.Framer, enc *hpack.Encoder, block *bytes.Buffer)) []byte {
	var out, block bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	enc := hpack.NewEncoder(&block)
	_ = fr.WriteSettings()
	build(fr, enc, &block)
	return out.Bytes()
}

func h2Get(enc *hpack.Encoder, block *bytes.Buffer, method, path string, extra ...string) []byte {
	block.Reset()
	for _, f := range [][2]string{{":method", method}, {":scheme", "https"}, {":authority", testHost}, {":path", path}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := 0; i+1 < len(extra); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return bytes.Clone(block.Bytes())
}

// FuzzH2Conn sends arbitrary bytes as a client's frames (after its preface)
// to an h2 route over TLS, then closes its side. Whatever they are, the
// server answers only with well-formed frames and HPACK blocks, and ends
// the connection (it does not hang or crash: a panic in a server goroutine
// ends the fuzzing process).
func FuzzH2Conn(f *testing.F) {
	seeds := [][]byte{
		h2Seed(func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2Get(enc, b, "GET", "/api/a"), EndStream: true, EndHeaders: true})
		}),
		h2Seed(func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2Get(enc, b, "POST", "/api/p", "content-length", "5"), EndHeaders: true})
			_ = fr.WriteData(1, false, []byte("he"))
			_ = fr.WriteWindowUpdate(0, 1000)
			_ = fr.WriteData(1, true, []byte("llo"))
		}),
		h2Seed(func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) {
			blk := h2Get(enc, b, "GET", "/static/app.js", "cookie", "a=1", "cookie", "b=2", "te", "trailers")
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk[:4], EndStream: true})
			_ = fr.WriteContinuation(3, true, blk[4:])
			_ = fr.WritePing(false, [8]byte{1})
			_ = fr.WriteRSTStream(3, http2.ErrCodeCancel)
		}),
		h2Seed(func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) {
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 14})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2Get(enc, b, "GET", "/api/slow"), EndStream: true, EndHeaders: true})
			_ = fr.WriteWindowUpdate(1, 10)
			_ = fr.WritePriority(1, http2.PriorityParam{StreamDep: 1})
			_ = fr.WriteGoAway(1, http2.ErrCodeNo, nil)
		}),
		h2Seed(func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2Get(enc, b, "POST", "/api/t", "trailer", "x-sum"), EndHeaders: true})
			_ = fr.WriteData(1, false, []byte("body"))
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2Get(enc, b, "", "")[:0], EndStream: true, EndHeaders: true})
		}),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	be := startWSBackend(f, nil)
	l := h2LB(f, RouteConfig{HeaderTimeout: 2 * time.Second}, be.addr)
	cfg := clientTLS(testHost)
	cfg.NextProtos = []string{"h2"}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := tls.Dial("tcp", l.addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A hang detector, not a timing assertion: every path of the
		// server ends a conn whose client has closed its side well
		// within it (HeaderTimeout 2 s, or at once).
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		go func() {
			_, _ = io.WriteString(c, http2.ClientPreface)
			_, _ = c.Write(data)
			_ = c.CloseWrite()
		}()
		fr := http2.NewFramer(io.Discard, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.SetMaxReadFrameSize(1 << 14)
		for {
			_, err := fr.ReadFrame()
			if err == nil {
				continue
			}
			var ne net.Error
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			case errors.As(err, &ne) && ne.Timeout():
				t.Fatal("the server did not end the connection")
			case errors.As(err, new(tls.AlertError)), errors.Is(err, io.ErrUnexpectedEOF):
				// a close cut short by the peer's own close
			default:
				var opErr *net.OpError
				if errors.As(err, &opErr) {
					return // reset: the server closed with unread input
				}
				t.Fatalf("the server sent a malformed frame: %v", err)
			}
			return
		}
	})
}
