package l7

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
)

// MaxPeekHead bounds the request head read to find the Host on a cleartext
// listener: the 16 KiB header limit plus an 8 KiB request line. The l7 route
// then enforces the exact limits (414, 431) on the replayed bytes.
const MaxPeekHead = 24 << 10

// ErrPeekTooLarge is PeekHost's error for a head over its max bytes.
var ErrPeekTooLarge = errors.New("l7: request head larger than the limit")

// PeekHost reads the first request head (up to the blank line, at most max
// bytes) and returns its Host header and every byte read, for replay: a
// cleartext listener picks the route by it, then hands the bytes to the
// route's ServeConn as its prefix. A head
// without Host returns "" and no error: the route decides (400).
//
// Lines end in LF or CRLF, as net/http reads them, and empty lines before
// the request line are skipped, as the l7 route does.
func PeekHost(c io.Reader, max int) (host string, raw []byte, err error) {
	buf := make([]byte, 0, 2048)
	// line starts the first unfinished line, scan is where its LF is
	// looked for: each byte is searched once, so a dribbled head costs O(n).
	line, scan, started := 0, 0, false // started: a request line was seen
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, rerr := c.Read(buf[len(buf):min(cap(buf), max)])
		buf = buf[:len(buf)+n]
		for {
			i := bytes.IndexByte(buf[scan:], '\n')
			if i < 0 {
				scan = len(buf)
				break
			}
			end := scan + i + 1
			l := buf[line : end-1]
			empty := len(l) == 0 || len(l) == 1 && l[0] == '\r'
			line, scan = end, end
			if empty && started {
				return hostOf(buf[:end]), buf, nil
			}
			started = started || !empty
		}
		if rerr != nil {
			if rerr == io.EOF && len(buf) > 0 {
				rerr = io.ErrUnexpectedEOF
			}
			return "", buf, rerr
		}
		if len(buf) >= max {
			return "", buf, ErrPeekTooLarge
		}
	}
}

// hostOf returns the Host of a request head as net/http reads it (the
// authority of an absolute-form request target, RFC 9112, Section 3.2.2,
// else the first Host header), port stripped.
func hostOf(head []byte) string {
	var host string
	reqLine := true
	for line := range bytes.Lines(head) {
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if reqLine {
			if len(line) == 0 {
				continue // empty lines before the request line
			}
			reqLine = false
			if host = targetHost(string(line)); host != "" {
				break
			}
			continue
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(name, []byte("host")) {
			host = string(bytes.Trim(value, " \t")) // OWS, as textproto trims
			break
		}
	}
	if hh, _, err := net.SplitHostPort(host); err == nil {
		return hh
	}
	return host
}

// targetHost returns the authority of the request line's target, as
// net/http's readRequest sets URL.Host: "" for origin-form.
func targetHost(line string) string {
	method, rest, _ := strings.Cut(line, " ")
	target, _, _ := strings.Cut(rest, " ")
	if method == "CONNECT" && !strings.HasPrefix(target, "/") {
		target = "http://" + target
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return ""
	}
	return u.Host
}
