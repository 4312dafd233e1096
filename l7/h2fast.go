package l7

import (
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"sluice/balancer"
)

// The HTTP/2 fast path: what the HTTP/1.1 loop (h1fast.go) does for a
// plain proxied request, for an h2 stream. A stream whose request has no
// body and whose location the HTTP/1.1 fast path would take (fastLocation;
// the same Host, path and method rules: h2Fast) skips net/http's types:
// its fields go to the backend as they came (writeFastRequest), the
// backend's answer is read by the fast path's parser (h1res), and its
// fields go into the stream's response as they are. Everything else about
// the request (balancing, sticky cookie, retries, errors, the access
// line) is what the route's handler does (serveHTTP, serveFast): the tests
// of the h2 path run through both.
//
// Differences from the handler's path, as on HTTP/1.1: the backend gets
// the request's fields in the client's order, under their canonical names;
// a response without Content-Type gets none (sniffed on the other path).

// h2Fast reports whether the stream of f can take the fast path, and if so
// fills r and returns the location and the body's declared length (0 for
// none). A stream with a body takes it when its content-length is at most
// what the HTTP/1.1 loop takes with a head (maxFastBody) and what the route
// buffers whole (readBody, which the fast handler reads it with).
func (s *h2server) h2Fast(f *http2.MetaHeadersFrame, r *h1req) (*location, int64, bool) {
	rt := s.h.rt
	if !rt.fast || f.Truncated {
		return nil, 0, false
	}
	var declLen int64 = -1
	var method, scheme, authority, path string
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":authority":
			authority = hf.Value
		case ":path":
			path = hf.Value
		default:
			return nil, 0, false
		}
	}
	m, ok := fastMethod(bytesOf(method))
	if !ok || scheme != "https" && scheme != "http" || len(path) == 0 || path[0] != '/' || authority == "" {
		return nil, 0, false
	}
	p, q, hasQ := strings.Cut(path, "?")
	if !plainPath(bytesOf(p)) || hasQ && !plainQuery(bytesOf(q)) {
		return nil, 0, false
	}
	r.method, r.head, r.body = m, m == http.MethodHead, nil
	r.path, r.rawQuery, r.hasQuery, r.host = p, bytesOf(q), hasQ, authority
	r.fields = r.fields[:0]
	cookies := 0
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade", "host",
			"expect", "trailer":
			return nil, 0, false // checked, refused or framed by the handler's path
		case "content-length":
			// One value (a repeated one is the handler's path's to check),
			// "0" with END_STREAM (else malformed: the handler's path
			// resets it).
			n, err := strconv.ParseUint(hf.Value, 10, 63)
			if err != nil || declLen >= 0 || f.StreamEnded() && n != 0 {
				return nil, 0, false
			}
			declLen = int64(n)
		case "te":
			if hf.Value != "trailers" {
				return nil, 0, false
			}
		case "cookie":
			cookies++
		}
		r.fields = append(r.fields, hfield{bytesOf(canonicalKey(hf.Name)), bytesOf(hf.Value)})
	}
	if cookies > 1 {
		r.joinCookies()
	}
	if strings.IndexByte(authority, '@') >= 0 || !httpguts.ValidHostHeader(authority) {
		return nil, 0, false
	}
	if !f.StreamEnded() && (declLen <= 0 || declLen > min(rt.requestBuffer, rt.maxBody, maxFastBody)) {
		return nil, 0, false // no length, or more than readBody buffers: the handler's path
	}
	loc, ok := rt.fastRoute(r)
	return loc, max(declLen, 0), ok
}

// joinCookies makes the request's Cookie fields one, as HTTP/1.1 backends
// expect (RFC 9113 8.2.3), in the place of the first.
func (r *h1req) joinCookies() {
	var b []byte
	first := -1
	out := r.fields[:0]
	for _, f := range r.fields {
		if string(f.name) != "Cookie" {
			out = append(out, f)
			continue
		}
		if first < 0 {
			first = len(out)
			out = append(out, f)
		} else {
			b = append(b, "; "...)
		}
		b = append(b, f.value...)
	}
	out[first].value = b
	r.fields = out
}

// bytesOf is s's bytes, not copied: for reading only.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// fastStreams counts the streams the fast path took (for tests).
var fastStreams atomic.Int64

// h2fastScratch is a fast stream's request and response scratch.
type h2fastScratch struct {
	req h1req
	res h1res
}

var h2fastScratches = sync.Pool{New: func() any { return new(h2fastScratch) }}

// fastHandler is the stream's handler on the fast path.
func (st *h2stream) fastHandler(loc *location, fs *h2fastScratch) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, in *http.Request) {
		defer func() {
			if cap(fs.res.head) <= maxKeptScratch {
				fs.req.fields, fs.req.rawQuery, fs.req.body = fs.req.fields[:0], nil, nil
				h2fastScratches.Put(fs)
			}
		}()
		fastStreams.Add(1)
		rw := w.(*h2rw)
		defer func() {
			// As serveHTTP counts, a response cut short included.
			cs := st.s.h.cs
			cs.mu.Lock()
			cs.res.Requests++
			if rw.status != 0 {
				cs.res.Status = rw.status
			}
			cs.mu.Unlock()
		}()
		if in.Body != http.NoBody {
			// Read whole first, as the handler's path does: its errors
			// (408, 413, a client gone mid-body) are answered there.
			if !st.s.h.rt.readBody(rw, in, st.s.h.cs) {
				return
			}
			bb, ok := in.Body.(*bufferedBody)
			if !ok {
				panic("l7: a fast stream's body was not buffered") // h2Fast bounds it
			}
			fs.req.body = bb.data
		}
		st.proxyFast(rw, in, loc, &fs.req, &fs.res)
	}
}

// proxyFast is serveFast for a fast stream.
func (st *h2stream) proxyFast(w *h2rw, in *http.Request, loc *location, r *h1req, res *h1res) {
	p := loc.proxy
	cs := st.s.h.cs
	dr := dialRequestFor(p.pool, r, cs)
	bc, claim, err := tryBackends(st.ctx, p.pool.NewChooser(&dr), func(b *balancer.Backend) (*backendConn, error) {
		return st.roundTripFast(w, p.conns, b, &dr, r, res)
	})
	if err != nil {
		p.rt.proxyError(w, in, err)
		return
	}
	cs.mu.Lock()
	cs.res.Backend = claim.Backend.ID()
	cs.mu.Unlock()

	h := w.hdr
	res.copyFields(h)
	if res.frame == bodyLength || res.frame == bodyNone && res.cl >= 0 && res.code != http.StatusNoContent {
		h["Content-Length"] = []string{strconv.FormatInt(res.cl, 10)}
	}
	if l := loc.addHeaders(res.code); l != nil {
		for k, vv := range l.headers { // headerWriter's
			if k == "Vary" {
				h[k] = append(h[k], vv...)
			} else {
				h[k] = vv
			}
		}
	}
	setSticky(h, p.pool, dr.Sticky, claim.Backend, cs.tls)
	if p.rt.retired.Load() {
		h["Connection"] = []string{"close"} // GOAWAY after it (h2rw)
	}
	w.WriteHeader(res.code)
	ok := st.bodyFast(w, bc, res)
	st.setCur(nil)
	if ok && res.reuse {
		p.conns.put(bc)
	} else {
		_ = bc.c.Close()
	}
	claim.Release()
	if !ok {
		panic(http.ErrAbortHandler) // the response is cut: the stream is reset
	}
}

// roundTripFast writes the request to an idle or new conn to b and reads
// the response head into res (h1fast.roundTrip).
func (st *h2stream) roundTripFast(w *h2rw, bcs *backendConns, b *balancer.Backend, dr *balancer.DialRequest, r *h1req, res *h1res) (*backendConn, error) {
	return bcs.fastRoundTrip(st.ctx, b, dr, func(bc *backendConn) error { return st.exchangeFast(w, bc, r, res) },
		func() { st.setCur(nil) }, func() bool { return r.replay })
}

// setCur records the backend conn the stream waits on: a reset of the
// stream (fail) ends the wait.
func (st *h2stream) setCur(bc *backendConn) {
	st.s.mu.Lock()
	st.cur = bc
	gone := st.reset || st.s.dead
	st.s.mu.Unlock()
	if gone && bc != nil {
		_ = bc.c.SetDeadline(aLongTimeAgo)
	}
}

// exchangeFast is h1fast.exchange for a stream: the wait for the backend
// lasts until the request's cap, or until the stream is reset.
func (st *h2stream) exchangeFast(w *h2rw, bc *backendConn, r *h1req, res *h1res) error {
	_ = bc.c.SetDeadline(st.start.Add(st.s.h.rt.requestCap))
	bc.deadline = true
	st.setCur(bc)
	return fastExchange(bc, r, st.s.h.cs, res, func() error {
		// An interim response goes to the client as it is.
		res.copyFields(w.hdr)
		w.WriteHeader(res.code)
		clear(w.hdr)
		return w.err
	})
}

// copyFields adds the response's end-to-end fields (endToEnd) to h, under
// their canonical names.
func (r *h1res) copyFields(h http.Header) {
	r.endToEnd(func(name, value []byte) {
		k := canonicalBytes(name)
		h[k] = append(h[k], string(value))
	})
}

// canonicalBytes is the canonical form of a field name, without an
// allocation for the usual ones.
func canonicalBytes(name []byte) string {
	if k, ok := canonicalResp[string(name)]; ok {
		return k
	}
	return textproto.CanonicalMIMEHeaderKey(string(name))
}

// canonicalResp maps the response field names backends send most, as they
// send them, to their canonical form.
var canonicalResp = func() map[string]string {
	m := map[string]string{}
	for k := range lowerKeys {
		m[k] = k
		m[strings.ToLower(k)] = k
	}
	return m
}()

// bodyFast copies the response body to w; false if either side failed.
func (st *h2stream) bodyFast(w *h2rw, bc *backendConn, res *h1res) bool {
	if res.frame == bodyNone {
		return true
	}
	var src io.Reader
	switch res.frame {
	case bodyLength:
		src = io.LimitReader(bc.br, res.cl)
	case bodyChunked:
		src = httputil.NewChunkedReader(bc.br)
	default:
		src = bc.br // until the backend closes
	}
	// A body of unknown length, or an event stream, goes out as it comes,
	// its HEADERS at once (copyBody's rule).
	stream := res.frame != bodyLength || isEventStream(w.hdr.Get("Content-Type"))
	if stream && w.FlushError() != nil {
		return false
	}
	bp := copyBuffers.get()
	defer copyBuffers.put(bp)
	buf := *bp
	var got int64
	for {
		n, err := src.Read(buf)
		got += int64(n)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return false
			}
			if stream && w.FlushError() != nil {
				return false
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return false
		}
	}
	switch res.frame {
	case bodyLength:
		return got == res.cl
	case bodyChunked:
		// The trailer section after the last chunk, passed on as trailers.
		tr, err := textproto.NewReader(bc.br).ReadMIMEHeader()
		if err != nil {
			return false
		}
		for k, vv := range tr {
			w.hdr[http.TrailerPrefix+k] = vv
		}
		return true
	}
	res.reuse = false
	return true
}
