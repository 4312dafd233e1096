package main

import (
	"bytes"
	"errors"
	"io"
	"net"
)

// maxHTTPHead bounds the request head read to find the Host on a cleartext
// listener: the 16 KiB header limit plus an 8 KiB request line. The l7 route
// then enforces the exact limits (414, 431) on the replayed bytes.
const maxHTTPHead = 24 << 10

var errHeadTooLarge = errors.New("request head larger than the limit")

// peekHost reads the first request head (up to the blank line, at most max
// bytes) and returns its Host header and every byte read, for replay. A head
// without Host returns "" and no error: the route decides (400).
func peekHost(c net.Conn, max int) (host string, raw []byte, err error) {
	buf := make([]byte, 0, 2048)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, rerr := c.Read(buf[len(buf):min(cap(buf), max)])
		buf = buf[:len(buf)+n]
		if end := bytes.Index(buf, []byte("\r\n\r\n")); end >= 0 {
			return hostOf(buf[:end]), buf, nil
		}
		if rerr != nil {
			if rerr == io.EOF && len(buf) > 0 {
				rerr = io.ErrUnexpectedEOF
			}
			return "", buf, rerr
		}
		if len(buf) >= max {
			return "", buf, errHeadTooLarge
		}
	}
}

// hostOf returns the first Host header of a request head, port included.
func hostOf(head []byte) string {
	for _, line := range bytes.Split(head, []byte("\r\n"))[1:] {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(name, []byte("host")) {
			h := string(bytes.TrimSpace(value))
			if hh, _, err := net.SplitHostPort(h); err == nil {
				return hh
			}
			return h
		}
	}
	return ""
}
