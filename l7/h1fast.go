package l7

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"sluice/balancer"
	"sluice/l4"
)

// The fast path for plain HTTP/1.1 (issue 10, part 6). A connection that
// is not HTTP/2 starts on serveH1, sluice's own request loop, not on
// net/http. The common proxied request (GET, HEAD, POST, PUT, PATCH, DELETE
// or OPTIONS; no body, or a Content-Length body of at most 64 KiB that came
// with the head; a keep-alive HTTP/1.1 client; a location with a
// keep-alive pool and neither gzip nor its own headers) is served with no
// http.Request, header map, context or goroutine per request: the request
// head is written from the client's bytes, the backend's response head is
// read by h1res and the body relayed as it comes. A WebSocket upgrade is
// served here too, by the route's handler (h1upgrade.go). The first other
// request it does not take is left in the buffer and the connection goes to
// net/http for the rest of its life (handOff), where everything else is
// served as before: other bodies, static files, redirects, gzip, refusals
// by Host or path.
//
// What reaches the backend and the client is what the net/http path sends
// (serveFast; TestFastPathSendsWhatNetHTTPSends and
// TestFastPathAnswersWhatNetHTTPAnswers compare them), but for these:
//   - request fields keep the client's order and spelling (net/http sorts
//     them by canonical name);
//   - a response without a Content-Type gets none (net/http sniffs one);
//   - a client that goes away while its request waits for the backend is
//     seen once the backend has taken fastProbe (slow starts a watch of the
//     client then, as net/http's background read), not at once.

// fastLocation reports whether the fast path may serve l's requests.
func fastLocation(l *location) bool {
	return l != nil && l.proxy != nil && l.proxy.conns != nil && !l.gzip && !l.slowHeaders
}

// addHeaders is what of l's headers goes on a response of code: all of
// them on a 2xx or 3xx, none else (headerWriter's rule).
func (l *location) addHeaders(code int) *location {
	if l.headers == nil || code < 200 || code >= 400 {
		return nil
	}
	return l
}

// replaces reports whether the location's headers replace a backend's
// field name (all but Vary, which they add to).
func (l *location) replaces(name []byte) bool {
	for _, k := range l.headerKeys {
		if k != "Vary" && asciiEqualFold(name, k) {
			return true
		}
	}
	return false
}

// appendHeaders appends the location's headers, sorted by name.
func (l *location) appendHeaders(out []byte) []byte {
	for _, k := range l.headerKeys {
		for _, v := range l.headers[k] {
			out = append(out, k...)
			out = append(out, ": "...)
			out = append(out, v...)
			out = append(out, "\r\n"...)
		}
	}
	return out
}

type hfield struct{ name, value []byte }

// maxFastBody bounds the request body the fast path takes (with its head,
// already read).
const maxFastBody = 64 << 10

// fastMethod returns the method m names if the fast path takes it.
func fastMethod(m []byte) (string, bool) {
	for _, k := range [...]string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
		if string(m) == k {
			return k, true
		}
	}
	return "", false
}

// h1req is a request the fast path serves; its slices point into the
// vconn's buffer, which is not read into again before the response is done.
type h1req struct {
	head     bool // HEAD: a response without body
	method   string
	body     []byte // Content-Length bytes, all read with the head; nil if none
	replay   bool   // may be sent again on a new conn (isReplayable)
	path     string // the origin-form target before "?", no '%' in it
	rawQuery []byte // after "?"
	hasQuery bool
	host     string
	fields   []hfield
}

func (r *h1req) field(name string) ([]byte, bool) {
	for _, f := range r.fields {
		if asciiEqualFold(f.name, name) {
			return f.value, true
		}
	}
	return nil, false
}

// reqView (hashkey.go).
func (r *h1req) query(name string) string {
	q, _ := url.ParseQuery(string(r.rawQuery))
	return q.Get(name)
}
func (r *h1req) header(name string) string {
	v, _ := r.field(name)
	return string(v)
}
func (r *h1req) urlPath() string { return r.path }
func (r *h1req) cookie(name string) (string, bool) {
	var h http.Header
	for _, f := range r.fields {
		if asciiEqualFold(f.name, "Cookie") {
			if h == nil {
				h = http.Header{}
			}
			h["Cookie"] = append(h["Cookie"], string(f.value))
		}
	}
	if h == nil {
		return "", false
	}
	return httpView{&http.Request{Header: h}}.cookie(name)
}

// h1fast is one connection's fast path: scratch reused by its requests.
type h1fast struct {
	rt  *Route
	v   *vconn
	cs  *connState
	req h1req
	res h1res
	out []byte               // the response head (and the start of its body) to the client
	dr  balancer.DialRequest // the request's, for the chooser (serve)

	slowFn func() bool // slow, made once: each request's backend conn gets it

	mu      sync.Mutex
	cur     *backendConn  // the backend conn of the request in flight
	stopped bool          // cur's wait was ended (stopBackend): its deadline stays past
	dl      time.Time     // the request's cap: its start + the relay's idle timeout
	watch   chan struct{} // closed when the client watch (slow) has returned; nil if none
}

// maxKeptScratch bounds what a connection keeps of its scratch buffers
// between requests.
const maxKeptScratch = 8 << 10

// fastProbe is how long the backend may take before the fast path watches
// the client for going away (slow).
const fastProbe = bgProbe

// stopBackend ends the wait for the backend of the request in flight: the
// client went away or the connection is ending.
func (f *h1fast) stopBackend() {
	f.mu.Lock()
	f.stopped = true
	if f.cur != nil {
		_ = f.cur.c.SetDeadline(aLongTimeAgo)
	}
	f.mu.Unlock()
}

// slow is the backend conn's hook when it has not answered (or sent more
// of a body) within fastProbe: from now on the request waits until its cap,
// and the client is watched as net/http's background read does (a read
// for the next request: a client that closes or resets ends the wait).
func (f *h1fast) slow() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped || f.cur == nil {
		return false
	}
	_ = f.cur.c.SetDeadline(f.dl)
	if f.watch == nil && f.v.r == f.v.w {
		done := make(chan struct{})
		f.watch = done
		go func() {
			defer close(done)
			if err := f.v.fill(); err != nil && !f.v.wasAborted() {
				f.stopBackend()
			}
		}()
	}
	return true
}

// unwatch ends the client watch, if any: its read is aborted as net/http
// aborts its background read, and what it read stays in the buffer.
func (f *h1fast) unwatch() {
	f.mu.Lock()
	done := f.watch
	f.watch = nil
	f.mu.Unlock()
	if done == nil {
		return
	}
	_ = f.v.SetReadDeadline(aLongTimeAgo)
	<-done
	_ = f.v.SetReadDeadline(time.Time{})
}

// serveH1 serves the connection's requests until one the fast path does
// not take (then net/http serves the rest) or the connection ends.
func (rt *Route) serveH1(v *vconn, hc net.Conn) {
	f := &h1fast{rt: rt, v: v, cs: v.cs}
	// The connection's end (drain, route close) ends a wait for the
	// backend too; the client side is closed by Serve's own AfterFunc.
	stop := context.AfterFunc(f.cs.ctx, f.stopBackend)
	defer stop()
	for {
		n, err := v.peekHead()
		if err != nil {
			_ = v.Close() // the reason is fill's or the refusal's
			return
		}
		if v.head.framing() == framePassthrough {
			// An upgrade: served here or by net/http (h1upgrade.go),
			// and the conn's last request either way.
			req, ok := f.upgradeRequest(v.buf[v.r : v.r+n])
			stop()
			if !ok {
				v.handHead()
				rt.handOff(v, hc)
				return
			}
			v.takeHead(n)
			if !f.serveUpgrade(req, hc) {
				_ = v.Close()
			}
			return
		}
		loc, ok := f.parse(v.buf[v.r : v.r+n])
		if !ok {
			stop()
			v.handHead()
			rt.handOff(v, hc)
			return
		}
		v.takeHead(n + len(f.req.body))
		keep := f.serve(loc)
		f.unwatch()
		v.responseDone()
		// A large response's scratch is not kept for an idle connection.
		if cap(f.out) > maxKeptScratch {
			f.out = nil
		}
		if cap(f.res.head) > maxKeptScratch {
			f.res.head = nil
		}
		if !keep {
			_ = v.Close()
			return
		}
	}
}

// parse reads the head into f.req and reports the location that serves it,
// if the fast path takes it.
func (f *h1fast) parse(head []byte) (*location, bool) {
	v := f.v
	r := &f.req
	r.body = nil
	switch v.head.framing() {
	case frameNone:
	case frameLength:
		// A body only if it came with the head: reading one (its timeout,
		// its errors) is net/http's path.
		cl := v.head.cl
		if cl > min(f.rt.requestBuffer, f.rt.maxBody, maxFastBody) || int64(v.w-v.r-len(head)) < cl {
			return nil, false
		}
		r.body = v.buf[v.r+len(head) : v.r+len(head)+int(cl)]
	default:
		return nil, false
	}
	if v.head.http10 {
		return nil, false
	}
	r.fields = r.fields[:0]
	line, rest := cutLine(head)
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return nil, false
	}
	var ok bool
	if r.method, ok = fastMethod(line[:sp]); !ok {
		return nil, false
	}
	r.head = r.method == "HEAD"
	target := line[sp+1:]
	if sp = bytes.IndexByte(target, ' '); sp < 0 {
		return nil, false
	}
	target = target[:sp]
	if len(target) == 0 || target[0] != '/' {
		return nil, false
	}
	p, q, hasQ := bytes.Cut(target, []byte{'?'})
	if !plainPath(p) || hasQ && !plainQuery(q) {
		return nil, false
	}
	r.rawQuery, r.hasQuery = q, hasQ
	hosts := 0
	for {
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return nil, false
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		switch {
		case asciiEqualFold(name, "Host"):
			hosts++
			r.host = string(value)
		case asciiEqualFold(name, "Expect"): // Upgrade: framing was framePassthrough
			return nil, false
		case asciiEqualFold(name, "Connection"):
			if !onlyKeepAlive(value) {
				return nil, false
			}
		}
		r.fields = append(r.fields, hfield{name, value})
	}
	if hosts != 1 || r.host == "" || !httpguts.ValidHostHeader(r.host) {
		return nil, false // net/http answers 400
	}
	r.path = string(p)
	return f.rt.fastRoute(r)
}

// fastRoute finishes a parsed request for either fast path: whether it may
// be sent again (isReplayable's rule), and the location that serves it if
// the fast path takes its path and host.
func (rt *Route) fastRoute(r *h1req) (*location, bool) {
	switch r.method {
	case "GET", "HEAD", "OPTIONS":
		r.replay = true
	default:
		_, a := r.field("Idempotency-Key")
		_, b := r.field("X-Idempotency-Key")
		r.replay = a || b
	}
	if hasDotSegment(r.path) || rt.slashless[r.path] {
		return nil, false
	}
	if _, ok := rt.hostAllowed(r.host); !ok {
		return nil, false // 421 and its kin: the handler's
	}
	loc := rt.match(r.path)
	if !fastLocation(loc) {
		return nil, false
	}
	return loc, true
}

// cutLine returns b's first line without its line end, and the rest.
func cutLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// plainPath reports whether p is a path net/http would pass on unchanged
// and match as it is: pchar without percent-encoding (RFC 3986).
func plainPath(p []byte) bool {
	for _, c := range p {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case bytes.IndexByte([]byte("-._~!$&'()*+,;=:@/"), c) >= 0:
		default:
			return false
		}
	}
	return true
}

// plainQuery reports whether q is a query net/http passes on unchanged:
// visible ASCII and clean by httputil's rule (queryClean).
func plainQuery(q []byte) bool {
	for _, c := range q {
		if c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	return queryClean(string(q))
}

// onlyKeepAlive reports whether a Connection value names nothing but
// keep-alive.
func onlyKeepAlive(v []byte) bool {
	for t := range bytes.SplitSeq(v, []byte{','}) {
		if t = trimOWS(t); len(t) > 0 && !asciiEqualFold(t, "keep-alive") {
			return false
		}
	}
	return true
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if c == d {
			continue
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// fastSkips are requestSkips as a list for byte-wise matching, but for
// User-Agent: writeRequest writes it first, the fast path where it stands.
var fastSkips = keysBut(requestSkips, "User-Agent")

// keysBut returns m's keys but except.
func keysBut(m map[string]bool, except string) []string {
	var l []string
	for k := range m {
		if k != except {
			l = append(l, k)
		}
	}
	return l
}

func skipField(name []byte) bool {
	for _, s := range fastSkips {
		if asciiEqualFold(name, s) {
			return true
		}
	}
	return false
}

// writeFastRequest writes r's head (and body) to the backend, for the
// HTTP/1.1 fast path and HTTP/2's (h2fast.go): writeRequest's
// (fastproxy.go).
func writeFastRequest(bw *bufio.Writer, r *h1req, cs *connState) {
	bw.WriteString(r.method)
	bw.WriteByte(' ')
	bw.WriteString(r.path)
	if r.hasQuery {
		bw.WriteByte('?')
		bw.Write(r.rawQuery)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.host)
	bw.WriteString("\r\n")
	switch {
	case len(r.body) > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.Itoa(len(r.body)))
		bw.WriteString("\r\n")
	case r.method == "POST" || r.method == "PUT" || r.method == "PATCH":
		bw.WriteString("Content-Length: 0\r\n") // sendContentLength
	}
	te, xff := false, false
	for _, fl := range r.fields {
		switch {
		case asciiEqualFold(fl.name, "Te"):
			te = te || headerHasToken([]string{string(fl.value)}, "trailers")
		case asciiEqualFold(fl.name, "X-Forwarded-For"):
			xff = true
		}
		if skipField(fl.name) {
			continue
		}
		bw.Write(fl.name)
		bw.WriteString(": ")
		bw.Write(fl.value)
		bw.WriteString("\r\n")
	}
	if te {
		bw.WriteString("Te: trailers\r\n")
	}
	ip, proto := cs.ip, "http"
	if cs.tls {
		proto = "https"
	}
	bw.WriteString("X-Forwarded-For: ")
	if xff {
		first := true
		for _, fl := range r.fields {
			if asciiEqualFold(fl.name, "X-Forwarded-For") {
				if !first {
					bw.WriteString(", ")
				}
				first = false
				bw.Write(fl.value)
			}
		}
		bw.WriteString(", ")
	}
	bw.WriteString(ip)
	bw.WriteString("\r\nX-Forwarded-Host: ")
	bw.WriteString(r.host)
	bw.WriteString("\r\nX-Forwarded-Proto: ")
	bw.WriteString(proto)
	bw.WriteString("\r\nX-Real-Ip: ")
	bw.WriteString(ip)
	bw.WriteString("\r\n\r\n")
	bw.Write(r.body)
}

// serve proxies f.req through p and reports whether the connection may
// take another request.
func (f *h1fast) serve(loc *location) (keep bool) {
	p := loc.proxy
	cs := f.cs
	f.dr = dialRequestFor(p.pool, &f.req, cs)
	dr := &f.dr
	bc, claim, err := tryBackends(cs.ctx, p.pool.NewChooser(dr), func(b *balancer.Backend) (*backendConn, error) {
		return f.roundTrip(p.conns, b, dr)
	})
	sticky := dr.Sticky
	f.dr = balancer.DialRequest{}
	if err != nil {
		return f.fail(err)
	}
	cs.mu.Lock()
	cs.res.Backend = claim.Backend.ID()
	cs.mu.Unlock()
	return f.respond(loc, bc, claim, sticky)
}

// roundTrip writes the request to an idle or new conn to b and reads the
// response head into f.res; a reused conn found closed before it answered
// is replaced once if the request is replayable (h1req.replay, as
// isReplayable).
func (f *h1fast) roundTrip(bcs *backendConns, b *balancer.Backend, dr *balancer.DialRequest) (*backendConn, error) {
	return bcs.fastRoundTrip(f.cs.ctx, b, dr, f.exchange, func() { f.setCur(nil) }, func() bool {
		// Not once the client is watched: the watch reads into the buffer
		// the request's fields point into.
		return f.req.replay && !f.watched()
	})
}

// fastRoundTrip is both fast paths' round trip: exchange on an idle or new
// conn to b. A failed conn is closed (after unset, which forgets it as the
// one waited on); a reused one found closed before it answered
// (errStaleConn) is replaced once if replay says the request may go again
// (isReplayable's rule).
func (bcs *backendConns) fastRoundTrip(ctx context.Context, b *balancer.Backend, dr *balancer.DialRequest,
	exchange func(*backendConn) error, unset func(), replay func() bool) (*backendConn, error) {
	for retried := false; ; retried = true {
		bc, reused, err := bcs.get(ctx, b, dr)
		if err != nil {
			return nil, err
		}
		err = exchange(bc)
		if err == nil {
			return bc, nil
		}
		unset()
		_ = bc.c.Close()
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		if reused && !retried && errors.Is(err, errStaleConn) && replay() {
			bcs.dropIdle(b)
			continue
		}
		return nil, err
	}
}

func (f *h1fast) watched() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.watch != nil
}

func (f *h1fast) setCur(bc *backendConn) {
	f.mu.Lock()
	f.cur = bc
	f.mu.Unlock()
}

// errClientGone ends a request whose client went away (or whose
// connection is ending) before a backend answered.
var errClientGone = errors.New("l7: the client went away before the backend answered")

// exchange is backendConns.exchange for the fast path.
func (f *h1fast) exchange(bc *backendConn) error {
	f.v.dmu.Lock()
	dl := f.v.reqStart.Add(f.rt.requestCap)
	f.v.dmu.Unlock()
	f.mu.Lock()
	f.cur, f.dl = bc, dl
	stopped := f.stopped
	f.mu.Unlock()
	if stopped || f.cs.ctx.Err() != nil {
		return errClientGone
	}
	probe := time.Now().Add(fastProbe)
	if dl.Before(probe) {
		probe = dl
	}
	_ = bc.c.SetDeadline(probe)
	bc.deadline = true
	if f.slowFn == nil {
		f.slowFn = f.slow
	}
	bc.slow = f.slowFn
	return fastExchange(bc, &f.req, f.cs, &f.res, func() error {
		// An interim response goes to the client as it is.
		f.out = f.res.appendHead(f.out[:0], nil, nil)
		f.out = append(f.out, "\r\n"...)
		_, err := f.v.Write(f.out)
		return err
	})
}

// fastExchange writes r to bc and reads the response head into res, for
// the fast paths of both protocols: interim (1xx) responses go to interim
// (101 is refused); a failure before any byte of the first head is marked
// errStaleConn (headError).
func fastExchange(bc *backendConn, r *h1req, cs *connState, res *h1res, interim func() error) error {
	bc.werr = nil
	writeFastRequest(bc.bw, r, cs)
	bc.holdNext = true // sent by the response's first Read
	werr := bc.bw.Flush()
	bc.holdNext = false
	if werr != nil {
		bc.held = nil
		bc.bw.Reset(bc)
		if _, perr := bc.br.Peek(1); perr != nil {
			return fmt.Errorf("%w: %w", errStaleConn, werr)
		}
	}
	for first := true; ; first = false {
		bc.limit = maxProxyResponseHead
		err := res.read(bc.br, r.head)
		if werr == nil {
			werr = bc.werr
		}
		if err != nil {
			return bc.headError(err, first)
		}
		code := res.code
		if code == http.StatusSwitchingProtocols {
			return errUnaskedSwitch
		}
		if code >= 200 {
			break
		}
		if err := interim(); err != nil {
			return err
		}
	}
	bc.limit = 1<<63 - 1
	res.reuse = res.reuse && werr == nil
	return nil
}

// respond writes the response f.res from bc to the client. The backend's
// part ends before the response's last bytes go out (done): bc back in the
// pool or closed, the claim released, so that a client that sends its next
// request as soon as it has the response finds both free, as on the
// net/http path (its handler returns before net/http's final flush).
func (f *h1fast) respond(loc *location, bc *backendConn, claim *balancer.Claim, sentCookie string) (keep bool) {
	p := loc.proxy
	res := &f.res
	keep = !f.rt.retired.Load()
	out := res.appendHead(f.out[:0], loc.addHeaders(res.code), func(out []byte) []byte {
		if c := stickySetCookie(p.pool, sentCookie, claim.Backend, f.cs.tls); c != "" {
			out = append(out, "Set-Cookie: "...)
			out = append(out, c...)
			out = append(out, "\r\n"...)
		}
		if !keep {
			out = append(out, "Connection: close\r\n"...)
		}
		return out
	})
	out = append(out, "\r\n"...)
	f.cs.mu.Lock()
	f.cs.res.Requests++
	f.cs.res.Status = res.code
	f.cs.mu.Unlock()

	finished := false
	done := func(ok bool) {
		if finished {
			return
		}
		finished = true
		f.setCur(nil)
		bc.slow = nil
		if ok && res.reuse {
			p.conns.put(bc) // its deadline stays: the next request sets its own
		} else {
			_ = bc.c.Close()
		}
		claim.Release()
	}
	ok := f.body(bc, out, done)
	done(false) // if body failed before the backend's end
	return keep && ok
}

// body writes out (the response head) and the body to the client; false if
// either side failed, which ends the connection (the response is cut).
// done(true) runs once the backend's body has been read to its end, before
// the last write to the client; bc is not touched after it.
func (f *h1fast) body(bc *backendConn, out []byte, done func(ok bool)) bool {
	res := &f.res
	br := bc.br
	bp := copyBuffers.get()
	defer copyBuffers.put(bp)
	buf := *bp
	write := func(b []byte) bool {
		_, err := f.v.Write(b)
		return err == nil
	}
	switch res.frame {
	case bodyNone:
		f.out = out
		done(true)
		return write(out)
	case bodyLength:
		left := res.cl
		// What the head's read brought along leaves with the head.
		if k := int(min(int64(br.Buffered()), left, int64(len(buf)))); k > 0 {
			b, _ := br.Peek(k)
			out = append(out, b...)
			_, _ = br.Discard(k)
			left -= int64(k)
		}
		f.out = out
		if left == 0 {
			done(true)
			return write(out)
		}
		if !write(out) {
			return false
		}
		for left > 0 {
			n, err := br.Read(buf[:min(int64(len(buf)), left)])
			left -= int64(n)
			if left == 0 {
				done(true)
			}
			if n > 0 && !write(buf[:n]) {
				return false
			}
			if err != nil && left > 0 {
				return false
			}
		}
		return true
	case bodyChunked:
		// Passed on as it is, validated as it goes (chunk sizes, line
		// ends, trailers): the end is where the scanner says.
		f.out = out
		if !write(out) {
			return false
		}
		var cs chunkScanner
		for {
			avail := br.Buffered()
			if avail == 0 {
				if _, err := br.Peek(1); err != nil {
					return false
				}
				continue
			}
			b, _ := br.Peek(avail)
			n, end, vi := cs.step(b)
			if vi != nil {
				return false
			}
			if n == 0 && !end {
				if avail == br.Size() {
					return false // a chunk line longer than the buffer
				}
				if _, err := br.Peek(avail + 1); err != nil {
					return false
				}
				continue
			}
			if end {
				last := buf[:copy(buf, b[:n])] // br's buffer goes with bc
				_, _ = br.Discard(n)
				done(true)
				return write(last)
			}
			if !write(b[:n]) {
				return false
			}
			_, _ = br.Discard(n)
		}
	default: // bodyToClose: re-chunked for the client
		f.out = out
		if !write(out) {
			return false
		}
		for {
			n, err := br.Read(buf[16 : len(buf)-2])
			if n > 0 {
				h := strconv.AppendInt(buf[:0:16], int64(n), 16)
				h = append(h, '\r', '\n')
				start := 16 - len(h)
				copy(buf[start:], h)
				buf[16+n], buf[16+n+1] = '\r', '\n'
				if !write(buf[start : 16+n+2]) {
					return false
				}
			}
			if err == io.EOF {
				done(true)
				return write([]byte("0\r\n\r\n"))
			}
			if err != nil {
				return false
			}
		}
	}
}

// fail answers a request that got no response from a backend, as
// proxyError does, and reports whether the connection may go on.
func (f *h1fast) fail(err error) bool {
	cs := f.cs
	reason := ReasonBadGateway
	code := http.StatusBadGateway
	if _, ok := errors.AsType[*balancer.DialError](err); ok || errors.Is(err, balancer.ErrNoBackend) {
		reason = l4.DialFailure(err)
	}
	retry := ""
	switch reason {
	case l4.ReasonNoBackend:
		code, retry = http.StatusServiceUnavailable, "5"
	case l4.ReasonLocalLimit:
		code, retry = http.StatusServiceUnavailable, "1"
	}
	cs.setReason(reason, err)
	cs.mu.Lock()
	cs.res.Requests++
	cs.res.Status = code
	cs.mu.Unlock()
	keep := !f.rt.retired.Load() && cs.ctx.Err() == nil
	text := http.StatusText(code) + "\n"
	out := fmt.Appendf(f.out[:0], "HTTP/1.1 %d %s\r\n", code, http.StatusText(code))
	if retry != "" {
		out = append(out, "Retry-After: "+retry+"\r\n"...)
	}
	if !keep {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "Content-Type: text/plain; charset=utf-8\r\nDate: "...)
	out = time.Now().UTC().AppendFormat(out, http.TimeFormat)
	out = fmt.Appendf(out, "\r\nContent-Length: %d\r\n\r\n%s", len(text), text)
	if f.req.head {
		out = out[:len(out)-len(text)]
	}
	f.out = out
	if _, werr := f.v.Write(out); werr != nil {
		return false
	}
	return keep
}

type bodyFrame uint8

const (
	bodyNone    bodyFrame = iota // HEAD, 1xx, 204, 304
	bodyLength                   // Content-Length
	bodyChunked                  // passed on as it is
	bodyToClose                  // until the backend closes: re-chunked for the client
)

// span is a range of h1res.head.
type span struct{ from, to int32 }

// h1res is a backend's response head as the fast path reads it: the lines
// are copied into head (the reader's buffer moves on with the body), and
// fields and named index them.
type h1res struct {
	code    int
	head    []byte
	fields  [][2]span // name, value (trimmed)
	named   []span    // the tokens of Connection: fields dropped with it
	cl      int64     // -1: none
	frame   bodyFrame
	chunked bool // Transfer-Encoding: chunked (also on a HEAD answer)
	reuse   bool
	hasDate bool
}

func (r *h1res) at(s span) []byte { return r.head[s.from:s.to] }

var errBadResponse = errors.New("l7: malformed response head from backend")

// read reads one response head from br with http.ReadResponse's rules where
// the fast path relies on them: HTTP/1.0 or 1.1, a 3-digit status, token
// names, no obs-fold, one Content-Length value, Transfer-Encoding only
// "chunked" (and then Content-Length ignored).
func (r *h1res) read(br *bufio.Reader, headReq bool) error {
	r.head, r.fields, r.named = r.head[:0], r.fields[:0], r.named[:0]
	r.cl, r.hasDate = -1, false
	status, err := r.line(br)
	if err != nil {
		return err
	}
	sl := r.at(status)
	if len(sl) < 12 || string(sl[:7]) != "HTTP/1." || sl[7] != '0' && sl[7] != '1' || sl[8] != ' ' ||
		len(sl) > 12 && sl[12] != ' ' {
		return errBadResponse
	}
	code := 0
	for _, c := range sl[9:12] {
		if c < '0' || c > '9' {
			return errBadResponse
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return errBadResponse
	}
	r.code = code
	http11 := sl[7] == '1'
	closeConn, keepAlive, chunked, te := false, false, false, 0
	var clVal span
	for {
		ln, err := r.line(br)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
		if ln.from == ln.to {
			break
		}
		line := r.at(ln)
		c := bytes.IndexByte(line, ':')
		if c <= 0 || !isToken(line[:c]) {
			return errBadResponse
		}
		name := span{ln.from, ln.from + int32(c)}
		val := trimSpan(r.head, span{name.to + 1, ln.to})
		value := r.at(val)
		if !validValue(value) {
			return errBadResponse
		}
		r.fields = append(r.fields, [2]span{name, val})
		switch n := r.at(name); {
		case asciiEqualFold(n, "Content-Length"):
			// Repeated, only with the same spelling (net/http's rule).
			cl, ok := parseLength(value)
			if !ok || r.cl >= 0 && !bytes.Equal(value, r.at(clVal)) {
				return errBadResponse
			}
			r.cl, clVal = cl, val
		case asciiEqualFold(n, "Transfer-Encoding"):
			// Only "chunked", once, and not from HTTP/1.0 (net/http
			// ignores it there; RFC 9112, Section 6.1 calls it faulty).
			te++
			chunked = asciiEqualFold(value, "chunked")
			if !chunked || te > 1 || !http11 {
				return errBadResponse
			}
		case asciiEqualFold(n, "Connection"):
			from := val.from
			for i := val.from; i <= val.to; i++ {
				if i < val.to && r.head[i] != ',' {
					continue
				}
				t := trimSpan(r.head, span{from, i})
				from = i + 1
				switch tok := r.at(t); {
				case len(tok) == 0:
				case asciiEqualFold(tok, "close"):
					closeConn = true
				case asciiEqualFold(tok, "keep-alive"):
					keepAlive = true
				default:
					r.named = append(r.named, t)
				}
			}
		case asciiEqualFold(n, "Date"):
			r.hasDate = true
		}
	}
	switch {
	case headReq || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified:
		r.frame = bodyNone
	case chunked:
		r.frame = bodyChunked
	case r.cl >= 0:
		r.frame = bodyLength
	default:
		r.frame = bodyToClose
	}
	r.chunked = chunked
	r.reuse = !closeConn && (http11 || keepAlive) && r.frame != bodyToClose
	return nil
}

// line appends the next line of br to head and returns its span without
// the line end (CRLF or LF).
func (r *h1res) line(br *bufio.Reader) (span, error) {
	from := int32(len(r.head))
	for {
		b, err := br.ReadSlice('\n')
		r.head = append(r.head, b...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return span{}, err
		}
		break
	}
	to := int32(len(r.head)) - 1
	if to > from && r.head[to-1] == '\r' {
		to--
	}
	return span{from, to}, nil
}

// trimSpan drops s's leading and trailing spaces and tabs.
func trimSpan(b []byte, s span) span {
	for s.from < s.to && (b[s.from] == ' ' || b[s.from] == '\t') {
		s.from++
	}
	for s.to > s.from && (b[s.to-1] == ' ' || b[s.to-1] == '\t') {
		s.to--
	}
	return s
}

// respSkips are the response fields appendHead does not copy: hopByHop's
// (with Content-Length, which it writes itself) but Trailer, kept with a
// chunked answer.
var respSkips = keysBut(hopByHop, "Trailer")

// endToEnd calls fn with each of the response's fields that goes on to
// the client: not hopByHop's (Content-Length is written from the framing),
// not one Connection names, Trailer only with a chunked answer (as
// net/http's client reads it, a HEAD answer's included).
func (r *h1res) endToEnd(fn func(name, value []byte)) {
fields:
	for _, fv := range r.fields {
		name := r.at(fv[0])
		for _, s := range respSkips {
			if asciiEqualFold(name, s) {
				continue fields
			}
		}
		if !r.chunked && asciiEqualFold(name, "Trailer") {
			continue
		}
		for _, t := range r.named {
			if bytes.EqualFold(name, r.at(t)) {
				continue fields
			}
		}
		fn(name, r.at(fv[1]))
	}
}

// appendHead appends the response head for the client, without its final
// empty line: status line, the backend's end-to-end fields (but those
// loc's headers replace), the framing, Date if the backend sent none, loc's
// headers, and what extra adds. loc may be nil.
func (r *h1res) appendHead(out []byte, loc *location, extra func([]byte) []byte) []byte {
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(r.code), 10)
	out = append(out, ' ')
	if t := http.StatusText(r.code); t != "" {
		out = append(out, t...)
	} else {
		out = append(out, "status code "...)
		out = strconv.AppendInt(out, int64(r.code), 10)
	}
	out = append(out, "\r\n"...)
	r.endToEnd(func(name, value []byte) {
		if loc != nil && loc.replaces(name) {
			return
		}
		out = append(out, name...)
		out = append(out, ": "...)
		out = append(out, value...)
		out = append(out, "\r\n"...)
	})
	if r.code < 200 {
		return out
	}
	switch {
	case r.frame == bodyLength, r.frame == bodyNone && r.cl >= 0 && r.code != http.StatusNoContent:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, r.cl, 10)
		out = append(out, "\r\n"...)
	case r.frame == bodyChunked, r.frame == bodyToClose:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	if !r.hasDate {
		out = append(out, "Date: "...)
		out = time.Now().UTC().AppendFormat(out, http.TimeFormat)
		out = append(out, "\r\n"...)
	}
	if loc != nil {
		out = loc.appendHeaders(out)
	}
	if extra != nil {
		out = extra(out)
	}
	return out
}
