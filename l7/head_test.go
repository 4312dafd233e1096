package l7

import (
	"strings"
	"testing"
)

// feedAll runs a headScanner over head as if it arrived in chunks of size
// step, the way vconn does.
func feedAll(head string, step int) (n int, vi *violation) {
	var h headScanner
	buf := []byte{}
	off := 0
	if step == 0 {
		step = len(head)
	}
	for i := 0; i < len(head); {
		end := min(len(head), i+step)
		buf = append(buf, head[i:end]...)
		i = end
		for {
			n, skip, vi := h.feed(buf[off:])
			if skip > 0 {
				off += skip
				continue
			}
			if n > 0 || vi != nil {
				return n, vi
			}
			break
		}
		if i >= len(head) {
			break
		}
	}
	return 0, nil
}

// The scanner decides the same at any segmentation (a dribbled head costs
// no more than a whole one and is judged alike).
func TestHeadScanner(t *testing.T) {
	for _, tc := range []struct {
		head string
		code int // 0: accepted
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0},
		{"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0},
		{"GET / HTTP/1.1\nHost: a\n\n", 0}, // LF-only lines, as net/http accepts
		{"GET / HTTP/1.0\r\n\r\n", 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n", 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nUpgrade: websocket\r\n\r\n", 0},
		{"GET / HTTP/1.1\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400},
		{"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505},
		{"GET / FOO/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501},
		{"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n", 400},
	} {
		for _, step := range []int{1, 3, 0} {
			n, vi := feedAll(tc.head, step)
			code := 0
			if vi != nil {
				code = vi.code
			}
			if code != tc.code || (code == 0 && n == 0) {
				t.Errorf("%q step %d: code %d n %d (%v), want %d", tc.head, step, code, n, vi, tc.code)
			}
		}
	}
}

func TestHeadScannerLimits(t *testing.T) {
	line := "GET /" + strings.Repeat("a", maxRequestLine-len("GET / HTTP/1.1")) + " HTTP/1.1"
	if _, vi := feedAll(line+"\r\nHost: a\r\n\r\n", 1000); vi != nil {
		t.Fatalf("8 KiB request line refused: %v", vi)
	}
	if _, vi := feedAll("GET /a"+line[5:]+"\r\n", 1000); vi == nil || vi.code != 414 {
		t.Fatalf("8 KiB + 1 line: %v", vi)
	}
	// An unfinished over-long line is refused before its end arrives.
	if _, vi := feedAll("GET /"+strings.Repeat("a", 9000), 1000); vi == nil || vi.code != 414 {
		t.Fatalf("unfinished long line: %v", vi)
	}
	fields := "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X: y\r\n", 99) + "\r\n"
	if _, vi := feedAll(fields, 7); vi != nil {
		t.Fatalf("100 fields refused: %v", vi)
	}
	if _, vi := feedAll("GET / HTTP/1.1\r\nHost: a\r\n"+strings.Repeat("X: y\r\n", 100)+"\r\n", 7); vi == nil || vi.code != 431 {
		t.Fatalf("101 fields: %v", vi)
	}
}

func TestChunkScanner(t *testing.T) {
	for _, tc := range []struct {
		body string
		ok   bool
	}{
		{"5\r\nhello\r\n0\r\n\r\n", true},
		{"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: v\r\n\r\n", true},
		{"5\nhello\r\n0\r\n\r\n", false},    // bare LF in a size line
		{"5\r\nhello\n0\r\n\r\n", false},    // bare LF after data
		{"5\r\nhelloXX0\r\n\r\n", false},    // data longer than declared
		{"-5\r\nhello\r\n0\r\n\r\n", false}, //
		{" 5\r\nhello\r\n0\r\n\r\n", false}, //
		{"1000000000000000\r\n", false},     // 16 hex digits
		{"5\r\nhello\r\n0\r\n folded\r\n\r\n", false},
		{"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n", false},
	} {
		for _, step := range []int{1, len(tc.body)} {
			var c chunkScanner
			var buf []byte
			done, failed := false, false
			for i := 0; i < len(tc.body) && !done && !failed; {
				end := min(len(tc.body), i+step)
				buf = append(buf, tc.body[i:end]...)
				i = end
				for !done && !failed {
					n, d, vi := c.step(buf)
					if vi != nil {
						failed = true
						break
					}
					if n == 0 && !d {
						break
					}
					buf, done = buf[n:], d
				}
			}
			if ok := done && !failed && len(buf) == 0; ok != tc.ok {
				t.Errorf("%q step %d: ok %v, want %v", tc.body, step, ok, tc.ok)
			}
		}
	}
}
