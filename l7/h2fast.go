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
	"golang.org/x/net/http2/hpack"

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
	req  h1req
	res  h1res
	head fastHead
	dr   balancer.DialRequest
	lr   io.LimitedReader
}

var h2fastScratches = sync.Pool{New: func() any { return new(h2fastScratch) }}

// serveFast is the stream's handler on the fast path.
func (st *h2stream) serveFast(rw *h2rw, in *http.Request, loc *location, fs *h2fastScratch) {
	defer func() {
		rw.fast = nil // its fields are fs's
		if cap(fs.res.head) <= maxKeptScratch {
			fs.req.fields, fs.req.rawQuery, fs.req.body = fs.req.fields[:0], nil, nil
			fs.head, fs.dr, fs.lr = fastHead{}, balancer.DialRequest{}, io.LimitedReader{}
			h2fastScratches.Put(fs)
		}
	}()
	fastStreams.Add(1)
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
	st.proxyFast(rw, in, loc, fs)
}

// proxyFast is serveFast for a fast stream. The response's HEADERS are
// made from the backend's head as it was read (fastHead), and sent before
// it returns: fs goes back to its pool then.
func (st *h2stream) proxyFast(w *h2rw, in *http.Request, loc *location, fs *h2fastScratch) {
	p := loc.proxy
	cs := st.s.h.cs
	r, res := &fs.req, &fs.res
	fs.dr = dialRequestFor(p.pool, r, cs)
	bc, claim, err := tryBackends(st.ctx, p.pool.NewChooser(&fs.dr), func(b *balancer.Backend) (*backendConn, error) {
		return st.roundTripFast(w, p.conns, b, &fs.dr, r, res)
	})
	if err != nil {
		p.rt.proxyError(w, in, err)
		return
	}
	cs.mu.Lock()
	cs.res.Backend = claim.Backend.ID()
	cs.mu.Unlock()

	fs.head = fastHead{res: res, loc: loc.addHeaders(res.code),
		cookie: stickySetCookie(p.pool, fs.dr.Sticky, claim.Backend, cs.tls),
		cl:     res.frame == bodyLength || res.frame == bodyNone && res.cl >= 0 && res.code != http.StatusNoContent}
	res.endToEnd(func(name, value []byte) {
		if asciiEqualFold(name, "Trailer") { // declared trailers: sent as such (h2rw)
			h := w.Header()
			h["Trailer"] = append(h["Trailer"], string(value))
		}
	})
	if p.rt.retired.Load() {
		fs.head.close = true // GOAWAY after it (encodeFast)
	}
	fs.head.scan()
	w.fast = &fs.head
	w.WriteHeader(res.code)
	if fs.head.cl {
		w.clen = res.cl
	}
	ok := st.bodyFast(w, bc, fs)
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
	if err := w.finish(); err != nil {
		panic(http.ErrAbortHandler)
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
		h := w.Header()
		res.copyFields(h)
		w.WriteHeader(res.code)
		clear(h)
		return w.err
	})
}

// fastHead is a fast stream's response head: the backend's (res) with
// what sluice adds. encodeFast makes it into HPACK fields when the HEADERS
// go out, by the rules encodeHead applies to an http.Header holding the
// same fields (what copyFields, the location's headers and setSticky would
// put there), without copying them into one.
type fastHead struct {
	res    *h1res
	loc    *location // the location's headers for this status (addHeaders), or nil
	cookie string    // the sticky Set-Cookie, or ""
	cl     bool      // res's framing gives the Content-Length
	close  bool      // Connection: close (the route is retired)

	// Of the response as it goes out (scan): the first Content-Type and
	// Content-Encoding values, and whether it has a Date.
	ctype, cenc    []byte
	hasCT, hasDate bool
}

// scan sets ctype, cenc, hasCT and hasDate in one pass over the backend's
// fields; the location's headers replace the backend's.
func (f *fastHead) scan() {
	hasCE := false
	f.res.endToEnd(func(n, v []byte) {
		switch {
		case asciiEqualFold(n, "Content-Type"):
			if !f.hasCT {
				f.ctype, f.hasCT = v, true
			}
		case asciiEqualFold(n, "Content-Encoding"):
			if !hasCE {
				f.cenc, hasCE = v, true
			}
		case asciiEqualFold(n, "Date"):
			f.hasDate = true
		}
	})
	if f.loc != nil {
		if vv := f.loc.headers["Content-Type"]; len(vv) > 0 {
			f.ctype, f.hasCT = bytesOf(vv[0]), true
		}
		if vv := f.loc.headers["Content-Encoding"]; len(vv) > 0 {
			f.cenc = bytesOf(vv[0])
		}
		f.hasDate = f.hasDate || len(f.loc.headers["Date"]) > 0
	}
}

// encodeFast is encodeHead for a fast stream (w.fast): the same fields in
// the backend's order, then its Content-Length, the location's headers and
// the sticky cookie. h.wmu is held.
func (w *h2rw) encodeFast(end bool, a, b []byte) {
	s := w.st.s
	f := w.fast
	enc := s.enc
	if f.close {
		go s.shutdown() // GOAWAY after this response: it needs h.wmu
	}
	_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText(w.status)})
	bodyLen := len(a) + len(b)
	if !f.cl && end && bodyAllowed(w.status) && !w.hasTrailers() && (bodyLen > 0 || !w.head) {
		_ = enc.WriteField(hpack.HeaderField{Name: "content-length", Value: s.intString(int64(bodyLen))})
	}
	if !f.hasCT && bodyLen > 0 && bodyAllowed(w.status) {
		if len(f.cenc) == 0 {
			p := a
			if len(p) == 0 {
				p = b
			}
			_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: http.DetectContentType(p)})
		}
	}
	if !f.hasDate {
		_ = enc.WriteField(hpack.HeaderField{Name: "date", Value: httpDate()})
	}
	// The backend's names are tokens and its values valid (h1res.read).
	f.res.endToEnd(func(name, value []byte) {
		if f.loc != nil && f.loc.replaces(name) || asciiEqualFold(name, "Trailer") {
			return // Trailer: declared in w.hdr (proxyFast), not sent
		}
		_ = enc.WriteField(hpack.HeaderField{Name: s.lowerName(name), Value: s.str(value)})
	})
	if f.cl {
		_ = enc.WriteField(hpack.HeaderField{Name: "content-length", Value: s.intString(f.res.cl)})
	}
	if f.loc != nil {
		for _, k := range f.loc.headerKeys {
			l := s.lowerName(bytesOf(k))
			for _, v := range f.loc.headers[k] {
				if httpguts.ValidHeaderFieldValue(v) {
					_ = enc.WriteField(hpack.HeaderField{Name: l, Value: v})
				}
			}
		}
	}
	if f.cookie != "" {
		_ = enc.WriteField(hpack.HeaderField{Name: "set-cookie", Value: f.cookie})
	}
}

// The conn's strings for encodeFast (str): at most maxStrs, each at most
// maxStrLen bytes.
const (
	maxStrs   = 32
	maxStrLen = 64
)

// str is b as a string the HPACK encoder may keep (its dynamic table
// does, so b's bytes may not be borrowed): one of the conn's strings seen
// last if it has b, so that the values a backend repeats cost no
// allocation. h.wmu is held.
func (s *h2server) str(b []byte) string {
	if v, ok := s.strs[string(b)]; ok {
		return v
	}
	v := string(b)
	if len(v) <= maxStrLen {
		if s.strs == nil {
			s.strs = map[string]string{} // grown as needed: an idle conn keeps it
		} else if len(s.strs) >= maxStrs {
			clear(s.strs)
		}
		s.strs[v] = v
	}
	return v
}

// intString is n in decimal, by str.
func (s *h2server) intString(n int64) string {
	if n >= 0 && n < 100 {
		return strconv.FormatInt(n, 10) // Go keeps these
	}
	var b [20]byte
	return s.str(strconv.AppendInt(b[:0], n, 10))
}

// lowerName is a field name in lower case, as HTTP/2 sends it.
func (s *h2server) lowerName(name []byte) string {
	if l, ok := lowerNames[string(name)]; ok {
		return l
	}
	var b [maxStrLen]byte
	l := b[:0]
	if len(name) > len(b) {
		l = make([]byte, 0, len(name))
	}
	for _, c := range name {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		l = append(l, c)
	}
	return s.str(l)
}

// lowerNames maps the response field names backends send most, in
// canonical or lower case, to their lower case.
var lowerNames = func() map[string]string {
	m := map[string]string{}
	for k, l := range lowerKeys {
		m[k], m[l] = l, l
	}
	return m
}()

// stringOf is b as a string, not copied: for reading only, while b is.
func stringOf(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

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
func (st *h2stream) bodyFast(w *h2rw, bc *backendConn, fs *h2fastScratch) bool {
	res := &fs.res
	if res.frame == bodyNone {
		return true
	}
	var src io.Reader
	switch res.frame {
	case bodyLength:
		fs.lr = io.LimitedReader{R: bc.br, N: res.cl}
		src = &fs.lr
	case bodyChunked:
		src = httputil.NewChunkedReader(bc.br)
	default:
		src = bc.br // until the backend closes
	}
	// A body of unknown length, or an event stream, goes out as it comes,
	// its HEADERS at once (copyBody's rule).
	stream := res.frame != bodyLength || isEventStream(stringOf(w.fast.ctype))
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
		h := w.Header()
		for k, vv := range tr {
			h[http.TrailerPrefix+k] = vv
		}
		return true
	}
	res.reuse = false
	return true
}
