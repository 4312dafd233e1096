package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// The http rows (issue 10): plain HTTP/1.1 requests over TLS the proxy
// terminates, on httpConns keep-alive connections (one TLS handshake each,
// outside the measured window), one request at a time on each.
//
//	http-small   GET /hello, proxied to one backend: a 19-byte body
//	h2-small     the same over HTTP/2 (httpH2)
//	http-static  GET /static/20k.bin, a 20 KiB file the proxy serves itself
//
// bench.sh writes the file (exactly staticSize bytes) into the directory
// every proxy serves under /static/; HAProxy serves no files, so its target
// has no static address and the row is skipped for it.
const (
	httpConns  = 50
	helloSize  = 19 // "hello from backend\n"
	staticSize = 20 << 10
	httpSNI    = "http.bench"
	maxHeaders = 64 // header lines per response: a bound on the parse loop
)

// httpConn is a minimal HTTP/1.1 keep-alive client over TLS: it writes a
// request, reads the status line and headers, and discards the body
// (Content-Length or chunked), checking its length.
type httpConn struct {
	raw net.Conn
	tc  *tls.Conn
	br  *bufio.Reader
}

func dialHTTPS(addr string) (*httpConn, error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	tc := tls.Client(c, tlsClientConfig(httpSNI))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	return &httpConn{raw: c, tc: tc, br: bufio.NewReaderSize(tc, 32<<10)}, nil
}

func httpRequest(path string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: " + httpSNI + "\r\nUser-Agent: sluice-bench\r\nAccept: */*\r\n\r\n")
}

// get sends req and reads one 200 response whose body must be want bytes
// long. keep is false when the server announced it closes the connection.
func (h *httpConn) get(req []byte, want int) (keep bool, err error) {
	if _, err := h.tc.Write(req); err != nil {
		return false, err
	}
	line, err := h.br.ReadSlice('\n')
	if err != nil {
		return false, fmt.Errorf("status line: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return false, fmt.Errorf("%w: %q", errWrongAnswer, bytes.TrimSpace(line))
	}
	length, chunked, keep := -1, false, true
	for i := 0; ; i++ {
		if i == maxHeaders {
			return false, fmt.Errorf("%w: more than %d header lines", errWrongAnswer, maxHeaders)
		}
		line, err := h.br.ReadSlice('\n')
		if err != nil {
			return false, fmt.Errorf("headers: %w", err)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			break
		}
		k, v, _ := bytes.Cut(line, []byte(":"))
		v = bytes.ToLower(bytes.TrimSpace(v))
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(v)); err != nil {
				return false, fmt.Errorf("%w: Content-Length %q", errWrongAnswer, v)
			}
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			chunked = bytes.Contains(v, []byte("chunked"))
		case bytes.EqualFold(k, []byte("Connection")):
			keep = !bytes.Contains(v, []byte("close"))
		}
	}
	n := 0
	switch {
	case chunked:
		if n, err = h.chunked(want); err != nil {
			return false, err
		}
	case length >= 0:
		if length != want {
			return false, fmt.Errorf("%w: Content-Length %d, want %d", errWrongAnswer, length, want)
		}
		if n, err = h.br.Discard(length); err != nil {
			return false, fmt.Errorf("body: %w", err)
		}
	default:
		return false, fmt.Errorf("%w: no Content-Length, not chunked", errWrongAnswer)
	}
	if n != want {
		return false, fmt.Errorf("%w: %d body bytes, want %d", errWrongAnswer, n, want)
	}
	return keep, nil
}

// chunked discards a chunked body of at most want bytes (and no trailers).
func (h *httpConn) chunked(want int) (int, error) {
	n := 0
	for i := 0; i <= want+1; i++ { // each chunk but the last carries a byte at least
		line, err := h.br.ReadSlice('\n')
		if err != nil {
			return n, fmt.Errorf("chunk size: %w", err)
		}
		hex, _, _ := bytes.Cut(bytes.TrimSpace(line), []byte(";"))
		size, err := strconv.ParseUint(string(hex), 16, 32)
		if err != nil || n+int(size) > want {
			return n, fmt.Errorf("%w: chunk size %q", errWrongAnswer, hex)
		}
		if _, err := h.br.Discard(int(size)); err != nil {
			return n, fmt.Errorf("chunk: %w", err)
		}
		n += int(size)
		if crlf, err := h.br.ReadSlice('\n'); err != nil || len(bytes.TrimSpace(crlf)) != 0 {
			return n, fmt.Errorf("%w: chunk end %q, %v", errWrongAnswer, crlf, err)
		}
		if size == 0 {
			return n, nil
		}
	}
	return n, fmt.Errorf("%w: too many chunks", errWrongAnswer)
}

// httpKeepAlive runs httpConns workers, each on its own keep-alive
// connection, one GET path after another; a connection the server closes
// (Connection: close) is replaced and counted in Reconnects.
func httpKeepAlive(cfg config, t *target, s *scenario, addr, path string, want int) result {
	if addr == "" {
		why := "the target spec has no http= address"
		if want == staticSize {
			why = "the target serves no files (its spec has no static= address)"
		}
		return result{Skip: why}
	}
	req := httpRequest(path)
	return measure(cfg, t, s, httpConns, func(l *load, lats *[]time.Duration) {
		var hc *httpConn
		defer func() {
			if hc != nil {
				abort(hc.raw)
			}
		}()
		for !l.stop.Load() {
			if hc == nil {
				c, err := dialHTTPS(addr)
				if err != nil {
					l.fail(err)
					continue
				}
				hc = c
				_ = hc.raw.SetDeadline(cfg.deadline())
			}
			start := time.Now()
			keep, err := hc.get(req, want)
			if err != nil {
				l.fail(err)
				abort(hc.raw)
				hc = nil
				continue
			}
			l.ops.Add(1)
			l.record(lats, start)
			if !keep {
				hc.raw.Close()
				hc = nil
				l.reconns.Add(1)
			}
		}
	})
}

// httpH2 is httpKeepAlive over HTTP/2, as a browser on an h2 route talks:
// httpConns connections (ALPN h2), one GET at a time on each, with
// net/http's ClientConn. The backends speak HTTP/1.1 only, so direct has
// no row.
func httpH2(cfg config, t *target, s *scenario, addr, path string, want int) result {
	if t.name == "direct" {
		return result{Skip: "the backends speak HTTP/1.1 only"}
	}
	if addr == "" {
		return result{Skip: "the target spec has no http= address"}
	}
	protos := new(http.Protocols)
	protos.SetHTTP2(true)
	tr := &http.Transport{
		Protocols:       protos,
		TLSClientConfig: tlsClientConfig(httpSNI),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err == nil {
				_ = c.SetDeadline(cfg.deadline())
			}
			return c, err
		},
	}
	tr.TLSClientConfig.NextProtos = nil // the Transport offers h2
	return measure(cfg, t, s, httpConns, func(l *load, lats *[]time.Duration) {
		var cc *http.ClientConn
		defer func() {
			if cc != nil {
				cc.Close()
			}
		}()
		for !l.stop.Load() {
			if cc == nil {
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				c, err := tr.NewClientConn(ctx, "https", httpSNI+":443")
				cancel()
				if err != nil {
					l.fail(err)
					continue
				}
				cc = c
			}
			start := time.Now()
			req, _ := http.NewRequest("GET", "https://"+httpSNI+path, nil)
			resp, err := cc.RoundTrip(req)
			if err == nil {
				var n int64
				n, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch {
				case err != nil:
				case resp.ProtoMajor != 2:
					err = fmt.Errorf("%w: %s, not HTTP/2", errWrongAnswer, resp.Proto)
				case resp.StatusCode != 200 || n != int64(want):
					err = fmt.Errorf("%w: %d, %d body bytes, want %d", errWrongAnswer, resp.StatusCode, n, want)
				}
			}
			if err != nil {
				l.fail(err)
				cc.Close()
				cc = nil
				continue
			}
			l.ops.Add(1)
			l.record(lats, start)
		}
	})
}
