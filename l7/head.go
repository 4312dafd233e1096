package l7

import (
	"bytes"
	"net/http"
	"strconv"

	"sluice/l4"
)

// Request head limits (RELIABILITY T10).
const (
	maxHeadBytes   = 16 << 10 // whole head, request line and final CRLF included: 431 over it
	maxRequestLine = 8 << 10  // request line without its CRLF: 414 over it
	maxFields      = 100      // header fields (and trailer fields): 431 over it
	maxEmptyLines  = 4        // empty lines tolerated before a request line (RFC 9112, Section 2.2)
	maxChunkLine   = 4 << 10  // chunk-size line with extensions and CRLF (net/http's own limit)
)

// violation is a request the validating reader refuses: the status it
// answers and the reason recorded for the access log.
type violation struct {
	code   int
	reason l4.Reason
	msg    string
}

func (v *violation) Error() string { return "l7: " + strconv.Itoa(v.code) + " " + v.msg }

func badRequest(msg string) *violation {
	return &violation{code: http.StatusBadRequest, reason: ReasonBadRequest, msg: msg}
}

func smuggling(msg string) *violation {
	return &violation{code: http.StatusBadRequest, reason: ReasonSmuggling, msg: msg}
}

// framing says how the bytes after a validated head are to be read.
type framing uint8

const (
	frameNone        framing = iota // no body: the next head follows
	frameLength                     // Content-Length bytes
	frameChunked                    // Transfer-Encoding: chunked
	framePassthrough                // an upgrade request: what follows is not HTTP
)

// headScanner validates one raw request head incrementally, a line at a
// time, so that a head dribbled byte by byte costs O(n) in total. The rules
// are stricter than net/http's parser and decided before it sees any byte
// (RELIABILITY rule 6, T10, T11).
type headScanner struct {
	scan     int // bytes of the head already examined
	empties  int
	gotLine  bool
	http10   bool
	fields   int
	clCount  int
	cl       int64
	te       bool
	teElems  int // Transfer-Encoding fields
	teOther  bool
	upgrade  bool
	hostSeen int
}

// feed examines head, the bytes of the current head so far (starting at its
// first byte). It returns:
//   - skip > 0: that many leading bytes are an empty line before the request
//     line, to be dropped; call again;
//   - n > 0: the head is complete and n bytes long;
//   - vi != nil: the head is refused;
//   - all zero: more bytes are needed.
func (h *headScanner) feed(head []byte) (n, skip int, vi *violation) {
	for {
		rest := head[h.scan:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			// +1: a CR may already wait for its LF.
			if !h.gotLine && len(rest) > maxRequestLine+1 {
				return 0, 0, &violation{code: http.StatusRequestURITooLong, reason: ReasonHeaderTooLarge, msg: "request line too long"}
			}
			if len(head) > maxHeadBytes {
				return 0, 0, &violation{code: http.StatusRequestHeaderFieldsTooLarge, reason: ReasonHeaderTooLarge, msg: "request header too large"}
			}
			return 0, 0, nil
		}
		end := h.scan + i + 1
		line := rest[:i]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		// The limits come first: a line over them is refused for its
		// length before its end arrives (above), so it must be alike
		// once whole, whatever its bytes.
		if !h.gotLine && len(line) > maxRequestLine {
			return 0, 0, &violation{code: http.StatusRequestURITooLong, reason: ReasonHeaderTooLarge, msg: "request line too long"}
		}
		if end > maxHeadBytes {
			return 0, 0, &violation{code: http.StatusRequestHeaderFieldsTooLarge, reason: ReasonHeaderTooLarge, msg: "request header too large"}
		}
		// RFC 9112, Section 2.2: a bare CR must be rejected or replaced.
		if bytes.IndexByte(line, '\r') >= 0 {
			return 0, 0, smuggling("bare CR in request head")
		}
		if !h.gotLine {
			if len(line) == 0 {
				if h.empties++; h.empties > maxEmptyLines {
					return 0, 0, badRequest("empty lines before the request line")
				}
				return 0, end, nil
			}
			if vi := h.requestLine(line); vi != nil {
				return 0, 0, vi
			}
			h.gotLine = true
		}
		first := h.scan == 0
		h.scan = end
		if first {
			continue
		}
		if len(line) == 0 {
			return end, 0, h.finish()
		}
		if vi := h.field(line); vi != nil {
			return 0, 0, vi
		}
	}
}

// requestLine checks method SP request-target SP HTTP-version (RFC 9112,
// Section 3).
func (h *headScanner) requestLine(line []byte) *violation {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return badRequest("malformed request line")
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return badRequest("malformed request line")
	}
	method, target, proto := line[:sp1], rest[:sp2], rest[sp2+1:]
	if bytes.IndexByte(proto, ' ') >= 0 {
		return badRequest("malformed request line")
	}
	if !isToken(method) {
		return badRequest("malformed method")
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return badRequest("malformed request target")
		}
	}
	switch string(proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		h.http10 = true
	default:
		if bytes.HasPrefix(proto, []byte("HTTP/")) {
			return &violation{code: http.StatusHTTPVersionNotSupported, reason: ReasonBadRequest, msg: "HTTP version not supported"}
		}
		return badRequest("malformed HTTP version")
	}
	return nil
}

var (
	hdrContentLength    = []byte("content-length")
	hdrTransferEncoding = []byte("transfer-encoding")
	hdrUpgrade          = []byte("upgrade")
	hdrHost             = []byte("host")
)

// field checks one header field line (RFC 9112, Section 5).
func (h *headScanner) field(line []byte) *violation {
	if line[0] == ' ' || line[0] == '\t' {
		// RFC 9112, Section 5.2: obs-fold. net/http would fold it into the
		// previous value; a backend may not.
		return smuggling("obs-fold in request head")
	}
	if h.fields++; h.fields > maxFields {
		return &violation{code: http.StatusRequestHeaderFieldsTooLarge, reason: ReasonHeaderTooLarge, msg: "too many header fields"}
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return badRequest("malformed header field")
	}
	name := line[:colon]
	if !isToken(name) { // also whitespace before the colon (RFC 9112, Section 5.1)
		return badRequest("malformed header field name")
	}
	value := trimOWS(line[colon+1:])
	if !validValue(value) {
		return badRequest("malformed header field value")
	}
	switch {
	case bytes.EqualFold(name, hdrContentLength):
		h.clCount++
		n, ok := parseLength(value)
		if !ok {
			return smuggling("malformed Content-Length")
		}
		h.cl = n
	case bytes.EqualFold(name, hdrTransferEncoding):
		// Exactly one field whose whole value is "chunked", as net/http
		// reads it: an empty list element (", chunked") or a second, empty
		// field would pass a list parse but not net/http (RFC 9112,
		// Section 6.1: 501).
		h.te = true
		h.teElems++
		if !bytes.EqualFold(value, []byte("chunked")) {
			h.teOther = true
		}
	case bytes.EqualFold(name, hdrUpgrade):
		h.upgrade = true
	case bytes.EqualFold(name, hdrHost):
		h.hostSeen++
	}
	return nil
}

// finish applies the rules that need the whole head and says how its body
// is framed.
func (h *headScanner) finish() *violation {
	switch {
	case h.clCount > 1:
		return smuggling("duplicate Content-Length")
	case h.te && h.clCount > 0:
		return smuggling("Content-Length with Transfer-Encoding")
	case h.te && h.http10:
		return smuggling("Transfer-Encoding on HTTP/1.0")
	case h.te && (h.teOther || h.teElems != 1):
		// RFC 9112, Section 6.1: an unknown transfer coding gets 501.
		return &violation{code: http.StatusNotImplemented, reason: ReasonSmuggling, msg: "unsupported Transfer-Encoding"}
	case h.hostSeen > 1:
		return badRequest("duplicate Host")
	case h.hostSeen == 0 && !h.http10:
		return badRequest("missing Host")
	case h.upgrade && (h.te || h.cl > 0):
		return smuggling("body on an upgrade request")
	}
	return nil
}

func (h *headScanner) framing() framing {
	switch {
	case h.upgrade:
		return framePassthrough
	case h.te:
		return frameChunked
	case h.cl > 0:
		return frameLength
	}
	return frameNone
}

// chunkScanner validates a chunked body (RFC 9112, Section 7.1) as it
// streams, strictly: CRLF line ends only, 1-15 hex digits, extensions
// without control bytes, bounded trailers.
type chunkScanner struct {
	state        chunkState
	left         int64
	trailerBytes int
	trailers     int
	excess       int64 // chunk lines beyond what their data allows (net/http's rule)
}

type chunkState uint8

const (
	chunkSize chunkState = iota
	chunkData
	chunkDataEnd
	chunkTrailer
)

// step examines buf, the unread body bytes, and returns how many leading
// bytes are validated and may be released, and whether they end the body.
// n == 0 with no violation and !done means more bytes are needed.
func (c *chunkScanner) step(buf []byte) (n int, done bool, vi *violation) {
	switch c.state {
	case chunkData:
		k := min(int64(len(buf)), c.left)
		c.left -= k
		if c.left == 0 {
			c.state = chunkDataEnd
		}
		return int(k), false, nil
	case chunkDataEnd:
		if len(buf) == 0 || (len(buf) == 1 && buf[0] == '\r') {
			return 0, false, nil
		}
		if buf[0] != '\r' || buf[1] != '\n' {
			return 0, false, smuggling("malformed chunk end")
		}
		c.state = chunkSize
		return 2, false, nil
	}
	i := bytes.IndexByte(buf, '\n')
	// The limits come first, on the line's length with its LF (at least
	// len(buf)+1 while unfinished), so that a line is judged alike whether
	// its end has arrived or not.
	lineLen := i + 1
	if i < 0 {
		lineLen = len(buf) + 1
	}
	if c.state == chunkSize && lineLen > maxChunkLine {
		return 0, false, smuggling("chunk line too long")
	}
	if c.state == chunkTrailer && c.trailerBytes+lineLen > maxHeadBytes {
		return 0, false, smuggling("trailer section too large")
	}
	if i < 0 {
		return 0, false, nil
	}
	if i == 0 || buf[i-1] != '\r' {
		return 0, false, smuggling("bare LF in chunked body")
	}
	line := buf[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return 0, false, smuggling("bare CR in chunked body")
	}
	if c.state == chunkTrailer {
		c.trailerBytes += i + 1
		if len(line) == 0 {
			return i + 1, true, nil
		}
		if c.trailers++; c.trailers > maxFields || line[0] == ' ' || line[0] == '\t' {
			return 0, false, smuggling("malformed trailer")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) || !validValue(trimOWS(line[colon+1:])) {
			return 0, false, smuggling("malformed trailer")
		}
		return i + 1, false, nil
	}
	digits := line
	if semi := bytes.IndexByte(line, ';'); semi >= 0 {
		digits = line[:semi]
		if !validValue(line[semi+1:]) {
			return 0, false, smuggling("malformed chunk extension")
		}
	}
	if len(digits) == 0 || len(digits) > 15 {
		return 0, false, smuggling("malformed chunk size")
	}
	var size int64
	for _, d := range digits {
		var v byte
		switch {
		case '0' <= d && d <= '9':
			v = d - '0'
		case 'a' <= d|0x20 && d|0x20 <= 'f':
			v = d | 0x20 - 'a' + 10
		default:
			return 0, false, smuggling("malformed chunk size")
		}
		size = size<<4 | int64(v)
	}
	// net/http's chunkedReader allows 16 bytes of overhead per chunk plus
	// twice its data, and refuses a body whose excess passes 16 KiB (not
	// checked on the last chunk): what it would refuse is refused here.
	c.excess = max(c.excess+int64(i+1)-16-2*size, 0)
	if size > 0 && c.excess > 16<<10 {
		return 0, false, smuggling("too much chunk overhead")
	}
	if size == 0 {
		c.state = chunkTrailer
	} else {
		c.state, c.left = chunkData, size
	}
	return i + 1, false, nil
}

// isToken reports whether b is a non-empty RFC 9110 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !tokenChars[c] {
			return false
		}
	}
	return true
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validValue reports whether b has no control bytes other than HTAB
// (RFC 9110, Section 5.5; obs-text is allowed).
func validValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// parseLength parses a Content-Length value: digits only.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
