package l7

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// Fuzz targets for the hand-written parsers of untrusted bytes
// (RELIABILITY rule 6, T10, T11; RELIABILITY-TESTS §3.8). Seeds come from
// the tables of head_test.go; crashers are committed under
// testdata/fuzz/<Target>/ as regression seeds.

// headSeeds are the heads of TestHeadScanner and TestHeadScannerLimits.
func headSeeds() []string {
	line := "GET /" + strings.Repeat("a", maxRequestLine-len("GET / HTTP/1.1")) + " HTTP/1.1"
	return []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"GET / HTTP/1.0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
		"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
		"GET / FOO/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n",
		"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n",
		// T11 smuggling cases not in the table above.
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
		"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nContent-Length: 1\r\n\r\nX",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nhost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
		"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n",
		"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\nX: \x80\xff\t\r\n\r\n",
		// Limits.
		line + "\r\nHost: a\r\n\r\n",
		"GET /a" + line[5:] + "\r\n",
		"GET /" + strings.Repeat("a", 9000),
		"GET /" + strings.Repeat("a", 9000) + "\rb\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X: y\r\n", 99) + "\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X: y\r\n", 100) + "\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("y", maxHeadBytes-len("GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n")) + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("y", maxHeadBytes) + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("y", maxHeadBytes) + "\rz\r\n\r\n",
	}
}

// headOutcome is what a headScanner decides about a byte stream.
type headOutcome struct {
	skipped int // empty lines dropped before the request line
	n       int // accepted head length (after the skipped bytes); 0: none
	code    int // violation status; 0: none
	reason  string
	msg     string
	fr      framing
}

// scanHead feeds data to a fresh headScanner in the segments cuts gives (each
// call returns the next segment length, > 0), the way vconn.stepHead does.
// It checks the memory bound after every "need more" answer.
func scanHead(t *testing.T, data []byte, cuts func() int) (headOutcome, *headScanner) {
	var h headScanner
	var out headOutcome
	fed := 0
	for {
		end := min(len(data), fed+cuts())
		fed = end
		for {
			n, skip, vi := h.feed(data[out.skipped:fed])
			if skip > 0 {
				if n != 0 || vi != nil {
					t.Fatalf("feed: skip %d with n %d vi %v", skip, n, vi)
				}
				out.skipped += skip
				if out.skipped > 2*maxEmptyLines {
					t.Fatalf("skipped %d bytes of empty lines", out.skipped)
				}
				continue
			}
			switch {
			case vi != nil: // n may be set (a whole head refused): vi wins, as in vconn
				out.code, out.reason, out.msg = vi.code, string(vi.reason), vi.msg
				return out, &h
			case n > 0:
				if n > fed-out.skipped {
					t.Fatalf("feed: n %d beyond the %d bytes fed", n, fed-out.skipped)
				}
				if n > maxHeadBytes {
					t.Fatalf("accepted a %d-byte head", n)
				}
				out.n, out.fr = n, h.framing()
				return out, &h
			}
			// Need more: what the caller must hold is bounded by the
			// limits (vconn's buffer never grows past maxBuf).
			held := fed - out.skipped
			if held > maxHeadBytes || !h.gotLine && held > maxRequestLine+1 || h.scan > held {
				t.Fatalf("need more while holding %d bytes (gotLine %v, scan %d)", held, h.gotLine, h.scan)
			}
			break
		}
		if fed == len(data) {
			return out, &h
		}
	}
}

// segmenters returns the segmentations a fuzz input is fed in: whole, a
// fixed step, a pseudo-random sequence derived from split and, for short
// inputs, byte by byte.
func segmenters(n, split int) map[string]func() int {
	u := uint64(split)
	segs := map[string]func() int{
		"whole": func() int { return n + 1 },
		"step":  func() int { return 1 + int(u%uint64(n+1)) },
		"var": func() func() int {
			x := u | 1
			return func() int {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				if x%4 == 0 {
					return 1 + int(x>>8%4096)
				}
				return 1 + int(x>>8%16)
			}
		}(),
	}
	if n <= 2048 {
		segs["bytewise"] = func() int { return 1 }
	}
	return segs
}

func FuzzHeadScanner(f *testing.F) {
	for _, s := range headSeeds() {
		for _, split := range []int{0, 1, 3, 1000} {
			f.Add([]byte(s), split)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		if len(data) > 64<<10 {
			return
		}
		var ref headOutcome
		var h *headScanner
		first := true
		for name, cuts := range segmenters(len(data), split) {
			out, hs := scanHead(t, data, cuts)
			if first {
				ref, h, first = out, hs, false
				continue
			}
			if out != ref {
				t.Fatalf("segmentation %q decides %+v, another %+v", name, out, ref)
			}
		}
		if ref.n == 0 {
			return
		}
		checkAcceptedHead(t, data[ref.skipped:ref.skipped+ref.n], h)
	})
}

// checkAcceptedHead is the differential check of a head the scanner
// accepted: net/http must parse it alike, and it must hold none of the T11
// smuggling shapes.
func checkAcceptedHead(t *testing.T, head []byte, h *headScanner) {
	t.Helper()
	// Shapes the scanner must never accept, checked on the raw bytes.
	lines := bytes.SplitAfter(head, []byte("\n"))
	if last := lines[len(lines)-1]; len(last) != 0 {
		t.Fatalf("accepted head does not end with a line end: %s", short(head))
	}
	lines = lines[:len(lines)-1]
	if l := lines[len(lines)-1]; string(l) != "\n" && string(l) != "\r\n" {
		t.Fatalf("accepted head does not end with an empty line: %s", short(head))
	}
	for i, l := range lines {
		l = bytes.TrimSuffix(bytes.TrimSuffix(l, []byte("\n")), []byte("\r"))
		if bytes.IndexByte(l, '\r') >= 0 {
			t.Fatalf("accepted a bare CR: %s", short(head))
		}
		if i > 0 && len(l) > 0 && (l[0] == ' ' || l[0] == '\t') {
			t.Fatalf("accepted obs-fold: %s", short(head))
		}
		if i < len(lines)-1 && len(l) == 0 {
			t.Fatalf("accepted an empty line inside the head: %s", short(head))
		}
	}

	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		// Justified exception: the request-target syntax (url.ParseRequestURI)
		// is left to net/http, which parses every released head again and
		// answers 400 and closes on its own; it does not touch framing, so
		// the scanner does not duplicate it.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			return
		}
		t.Fatalf("scanner accepted a head net/http refuses (%v): %s", err, short(head))
	}
	if req.Body != nil {
		req.Body.Close()
	}

	// The request line, as net/http split it.
	reqLine, _, _ := bytes.Cut(head, []byte("\n"))
	reqLine = bytes.TrimSuffix(reqLine, []byte("\r"))
	if got := req.Method + " " + req.RequestURI + " " + req.Proto; got != string(reqLine) {
		t.Fatalf("net/http read request line %q, scanner %q", got, reqLine)
	}
	if h.http10 != (req.ProtoMinor == 0) || req.ProtoMajor != 1 {
		t.Fatalf("scanner http10 %v, net/http %s", h.http10, req.Proto)
	}

	// The fields as textproto reads them, before net/http moves some out.
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head)))
	if _, err := tp.ReadLine(); err != nil {
		t.Fatal(err)
	}
	mime, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatalf("textproto: %v: %s", err, short(head))
	}
	count := 0
	for _, vv := range mime {
		count += len(vv)
	}
	if count != h.fields {
		t.Fatalf("scanner counted %d fields, textproto %d: %s", h.fields, count, short(head))
	}
	if len(mime["Host"]) != h.hostSeen || h.hostSeen > 1 || h.hostSeen == 0 && !h.http10 {
		t.Fatalf("scanner saw %d Host, textproto %q: %s", h.hostSeen, mime["Host"], short(head))
	}
	if h.hostSeen == 1 && req.URL.Host == "" && req.Host != mime["Host"][0] {
		t.Fatalf("Host %q, textproto %q", req.Host, mime["Host"])
	}
	if _, ok := mime["Upgrade"]; ok != h.upgrade {
		t.Fatalf("scanner upgrade %v, textproto %q", h.upgrade, mime["Upgrade"])
	}
	te, hasTE := mime["Transfer-Encoding"]
	cl, hasCL := mime["Content-Length"]
	if hasTE != h.te || hasCL != (h.clCount > 0) {
		t.Fatalf("scanner te %v cl %d, textproto %q %q", h.te, h.clCount, te, cl)
	}
	if hasTE && hasCL {
		t.Fatalf("accepted Content-Length with Transfer-Encoding: %s", short(head))
	}
	if len(cl) > 1 {
		t.Fatalf("accepted duplicate Content-Length: %s", short(head))
	}
	if hasTE {
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") || h.http10 {
			t.Fatalf("accepted Transfer-Encoding %q on %s", te, req.Proto)
		}
		if len(req.TransferEncoding) != 1 || req.TransferEncoding[0] != "chunked" || req.ContentLength != -1 {
			t.Fatalf("net/http reads TE %q CL %d", req.TransferEncoding, req.ContentLength)
		}
	} else if req.ContentLength != h.cl || len(req.TransferEncoding) != 0 {
		t.Fatalf("scanner Content-Length %d, net/http %d (TE %q)", h.cl, req.ContentLength, req.TransferEncoding)
	}

	// Framing: an upgrade has no body; otherwise the body is what net/http
	// will read.
	switch fr := h.framing(); {
	case h.upgrade:
		if fr != framePassthrough || hasTE || h.cl != 0 {
			t.Fatalf("upgrade with a body: %s", short(head))
		}
	case hasTE:
		if fr != frameChunked {
			t.Fatalf("chunked head framed %d", fr)
		}
	case h.cl > 0:
		if fr != frameLength {
			t.Fatalf("Content-Length head framed %d", fr)
		}
	default:
		if fr != frameNone {
			t.Fatalf("bodiless head framed %d", fr)
		}
	}
}

// short quotes b for a failure message, eliding its middle if long.
func short(b []byte) string {
	if len(b) <= 300 {
		return strconv.Quote(string(b))
	}
	return strconv.Quote(string(b[:150])) + "..." + strconv.Quote(string(b[len(b)-150:]))
}

// chunkSeeds are the bodies of TestChunkScanner, and limits.
func chunkSeeds() []string {
	return []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: v\r\n\r\n",
		"5\nhello\r\n0\r\n\r\n",
		"5\r\nhello\n0\r\n\r\n",
		"5\r\nhelloXX0\r\n\r\n",
		"-5\r\nhello\r\n0\r\n\r\n",
		" 5\r\nhello\r\n0\r\n\r\n",
		"1000000000000000\r\n",
		"5\r\nhello\r\n0\r\n folded\r\n\r\n",
		"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
		// More shapes.
		"0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"5 \r\nhello\r\n0\r\n\r\n",
		"5\r\nhel\rlo\r\n0\r\n\r\n",
		"5;a\x01\r\nhello\r\n0\r\n\r\n",
		"fffffffffffffff\r\nab",
		"0000000000000005\r\nhello\r\n0\r\n\r\n",
		"\r\n",
		"0\r\n",
		"0\r\nA: b\r\nC: d\r\n\r\n",
		// Limits: a chunk line of 4096 and 4097 bytes with its CRLF.
		"1;" + strings.Repeat("x", maxChunkLine-5) + "\r\nX\r\n0\r\n\r\n",
		"1;" + strings.Repeat("x", maxChunkLine-4) + "\r\nX\r\n0\r\n\r\n",
		// Overhead far beyond the data (net/http's excess check).
		strings.Repeat("1;"+strings.Repeat("x", 4000)+"\r\nX\r\n", 6) + "0\r\n\r\n",
		"0\r\n" + strings.Repeat("X: y\r\n", maxFields) + "\r\n",
		"0\r\n" + strings.Repeat("X: y\r\n", maxFields+1) + "\r\n",
		"0\r\nX: " + strings.Repeat("y", maxHeadBytes) + "\r\n\r\n",
	}
}

// chunkOutcome is what a chunkScanner decides about a byte stream.
type chunkOutcome struct {
	consumed int // bytes validated (through the end of the body when done)
	done     bool
	code     int
	msg      string
	data     string // the chunk data released
}

func scanChunks(t *testing.T, data []byte, cuts func() int) chunkOutcome {
	var c chunkScanner
	var out chunkOutcome
	var dechunked []byte
	fed := 0
	for {
		fed = min(len(data), fed+cuts())
		for {
			buf := data[out.consumed:fed]
			st := c.state
			n, done, vi := c.step(buf)
			if vi != nil {
				if n != 0 || done {
					t.Fatalf("step: n %d done %v with violation %v", n, done, vi)
				}
				out.code, out.msg = vi.code, vi.msg
				out.data = string(dechunked)
				return out
			}
			if n > len(buf) {
				t.Fatalf("step: n %d beyond the %d bytes given", n, len(buf))
			}
			if st == chunkData {
				dechunked = append(dechunked, buf[:n]...)
			}
			out.consumed += n
			if done {
				out.done = true
				out.data = string(dechunked)
				return out
			}
			if n > 0 {
				continue
			}
			// Need more: the bytes held are bounded.
			held := len(buf)
			switch st {
			case chunkData:
				if held != 0 {
					t.Fatalf("data state needs more holding %d bytes", held)
				}
			case chunkDataEnd:
				if held > 1 {
					t.Fatalf("chunk end needs more holding %d bytes", held)
				}
			case chunkSize:
				if held >= maxChunkLine {
					t.Fatalf("chunk size line needs more holding %d bytes", held)
				}
			case chunkTrailer:
				if c.trailerBytes+held > maxHeadBytes {
					t.Fatalf("trailer needs more holding %d+%d bytes", c.trailerBytes, held)
				}
			}
			break
		}
		if fed == len(data) {
			out.data = string(dechunked)
			return out
		}
	}
}

func FuzzChunkScanner(f *testing.F) {
	for _, s := range chunkSeeds() {
		for _, split := range []int{0, 1, 3, 1000} {
			f.Add([]byte(s), split)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		if len(data) > 64<<10 {
			return
		}
		var ref chunkOutcome
		first := true
		for name, cuts := range segmenters(len(data), split) {
			out := scanChunks(t, data, cuts)
			if first {
				ref, first = out, false
				continue
			}
			if out != ref {
				t.Fatalf("segmentation %q decides %d/%v/%d %q (%d data bytes), another %d/%v/%d %q (%d)",
					name, out.consumed, out.done, out.code, out.msg, len(out.data),
					ref.consumed, ref.done, ref.code, ref.msg, len(ref.data))
			}
		}
		// Differential: net/http's own de-chunker on the same bytes.
		got, err := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(data)))
		if !ref.done {
			return
		}
		if err != nil {
			t.Fatalf("scanner accepted a body NewChunkedReader refuses (%v): %s", err, short(data[:ref.consumed]))
		}
		if string(got) != ref.data {
			t.Fatalf("de-chunked %d bytes, NewChunkedReader %d: %s", len(ref.data), len(got), short(data[:ref.consumed]))
		}
	})
}
