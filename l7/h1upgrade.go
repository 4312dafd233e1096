package l7

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// A WebSocket upgrade on the HTTP/1.1 loop (issue 11: the wss:// handshake
// row). An upgrade that is a connection's first request used to take the
// connection to net/http (handOff): a goroutine handoff to the route's
// http.Server, its conn state, 8 KiB of buffers and a Hijack: about 10 KB
// of allocation per wss:// player before the tunnel started
// (BenchmarkWSSConnection: 118.2 -> 108.7 KB per connection). serveH1 now
// serves it itself: the request is parsed with http.ReadRequest and the
// checks net/http's server makes, then handed to serveHTTP, the same
// handler net/http calls, with upgradeRW as its ResponseWriter. Every
// check, refusal, balancing rule, second chance and the tunnel are
// serveHTTP's; upgradeRW writes an answer that is not a tunnel as
// net/http writes it (Date, Content-Length, a sniffed Content-Type), and
// its Hijack hands over the connection. A request net/http would answer
// itself (a bad field, Expect, HTTP/1.0, a target that is not a plain
// path) still goes to net/http, untouched.

// upgradeRequest parses head, an upgrade request (framePassthrough), as
// net/http's server would, if the loop serves it: a GET in origin form
// with one valid Host on a location with a pool.
func (f *h1fast) upgradeRequest(head []byte) (*http.Request, bool) {
	rt := f.rt
	if !rt.fastUpgrade || f.v.head.http10 || !bytes.HasPrefix(head, []byte("GET /")) {
		return nil, false
	}
	line, _ := cutLine(head)
	target, _, _ := bytes.Cut(line[len("GET "):], []byte{' '})
	p, q, hasQ := bytes.Cut(target, []byte{'?'})
	if !plainPath(p) || hasQ && !plainQuery(q) {
		return nil, false
	}
	if loc := rt.match(string(p)); loc == nil || loc.proxy == nil {
		return nil, false
	}
	rd := upgradeReaders.Get().(*upgradeReader)
	rd.r.Reset(head)
	rd.br.Reset(&rd.r)
	req, err := http.ReadRequest(&rd.br)
	rd.br.Reset(nil)
	upgradeReaders.Put(rd)
	if err != nil || req.ProtoMajor != 1 || req.ProtoMinor != 1 || len(req.Header["Expect"]) > 0 {
		return nil, false
	}
	// ReadRequest took Host out of the fields (the head scanner counted
	// them: one, or it answered 400 itself).
	if f.v.head.hostSeen != 1 || req.Host == "" || !httpguts.ValidHostHeader(req.Host) {
		return nil, false
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, false
			}
		}
	}
	req.RemoteAddr = f.cs.client.String()
	return req.WithContext(context.WithValue(f.cs.ctx, connStateKey{}, f.cs)), true
}

type upgradeReader struct {
	r  bytes.Reader
	br bufio.Reader
}

var upgradeReaders = sync.Pool{New: func() any {
	rd := new(upgradeReader)
	rd.br = *bufio.NewReaderSize(nil, 4<<10) // textproto joins longer lines
	return rd
}}

// serveUpgrade serves the upgrade req with serveHTTP and reports whether
// the connection became a tunnel; if not, the answer is out (or failed)
// and the connection is to be closed.
func (f *h1fast) serveUpgrade(req *http.Request, hc net.Conn) (tunneled bool) {
	w := &upgradeRW{v: f.v, hc: hc, h: http.Header{}}
	defer func() {
		// As net/http: a panic ends the conn, not the process; a conn the
		// tunnel took is its own.
		if e := recover(); e != nil {
			if e != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				f.rt.log.Error("panic serving an upgrade", zap.Any("panic", e), zap.ByteString("stack", buf))
			}
			tunneled = w.hijacked
		}
	}()
	f.rt.serveHTTP(w, req)
	if w.hijacked {
		return true
	}
	_ = w.finish()
	return false
}

// upgradeRW is serveHTTP's ResponseWriter for an upgrade the loop serves.
// An answer other than a tunnel always closes the connection (serveHTTP
// sets Connection: close for every upgrade), so it is written whole at
// the end.
type upgradeRW struct {
	v        *vconn
	hc       net.Conn // what Hijack returns
	h        http.Header
	code     int
	body     []byte
	hijacked bool
}

func (w *upgradeRW) Header() http.Header { return w.h }

func (w *upgradeRW) WriteHeader(code int) {
	if w.code == 0 && code >= 200 { // serveHTTP sends no 1xx
		w.code = code
	}
}

func (w *upgradeRW) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if !bodyAllowed(w.code) {
		return 0, http.ErrBodyNotAllowed
	}
	w.body = append(w.body, p...)
	return len(p), nil
}

var errHijacked = errors.New("l7: the upgrade's conn was hijacked already")

// Hijack is http.Hijacker's: the tunnel takes the connection. Nothing was
// read past the request but what the vconn holds (serveUpgrade takes it
// with takeBuffered), so the reader is empty.
func (w *upgradeRW) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked || w.code != 0 {
		return nil, nil, errHijacked
	}
	w.hijacked = true
	return w.hc, bufio.NewReadWriter(emptyReader, nil), nil
}

var emptyReader = bufio.NewReaderSize(bytes.NewReader(nil), 16)

// finish writes the answer as net/http's server does for a handler that
// has returned: what the handler did not set of Date, Content-Length and
// Content-Type (sniffed) is added.
func (w *upgradeRW) finish() error {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	h := w.h
	if len(h["Date"]) == 0 {
		h.Set("Date", httpDate())
	}
	if bodyAllowed(w.code) {
		if len(h["Content-Type"]) == 0 && len(h["Content-Encoding"]) == 0 && len(w.body) > 0 {
			h.Set("Content-Type", http.DetectContentType(w.body))
		}
		if len(h["Content-Length"]) == 0 && len(h["Transfer-Encoding"]) == 0 {
			h.Set("Content-Length", strconv.Itoa(len(w.body)))
		}
	}
	var b bytes.Buffer
	text := http.StatusText(w.code)
	if text == "" {
		text = "status code " + strconv.Itoa(w.code) // net/http's
	}
	b.WriteString("HTTP/1.1 " + strconv.Itoa(w.code) + " " + text + "\r\n")
	_ = h.Write(&b)
	b.WriteString("\r\n")
	b.Write(w.body)
	_, err := w.v.Write(b.Bytes())
	return err
}
