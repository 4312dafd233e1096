package l7

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"sluice/balancer"
)

// serveFast proxies a request that backendConns takes (fastPath) without
// httputil.ReverseProxy: the request head is written from the client's
// request straight into the backend conn's buffer, where ReverseProxy
// cloned the request and its header, put an httptrace in its context,
// rewrote it, and had Request.Write sort the header again (issue 10's
// http-small profile: ReverseProxy.ServeHTTP and below allocated 3/4 of
// the objects per request). What reaches the backend and the client is
// what ReverseProxy with rewrite sends (proxy.go): hop-by-hop headers and
// those named by Connection dropped both ways, the client's forwarding
// headers replaced by sluice's, Te: trailers kept, no User-Agent added,
// Content-Length as Request.Write sends it, 1xx responses forwarded,
// trailers passed on, the body flushed as it comes for a response of
// unknown length or an event stream, and a body that fails half-way
// aborts the client's response (http.ErrAbortHandler).
func (p *proxy) serveFast(w http.ResponseWriter, in *http.Request) {
	ctx := in.Context()
	cs := stateFrom(ctx)
	req := dialRequest(p.pool, in, cs)
	// The body is in memory: a next backend gets it too.
	resp, claim, err := tryBackends(ctx, p.pool.NewChooser(&req), func(b *balancer.Backend) (*http.Response, error) {
		return p.conns.roundTrip(in, cs, b, &req, w)
	})
	if err != nil {
		p.rt.proxyError(w, in, err)
		return
	}
	defer claim.Release()
	if cs != nil {
		cs.mu.Lock()
		cs.res.Backend = claim.Backend.ID()
		cs.mu.Unlock()
	}

	removeHopByHopHeaders(resp.Header)
	h := w.Header()
	for k, vv := range resp.Header {
		if h[k] == nil {
			h[k] = vv // resp.Header is not used again
		} else {
			h[k] = append(h[k], vv...)
		}
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	setSticky(h, p.pool, req.Sticky, claim.Backend, cs != nil && cs.tls)
	w.WriteHeader(resp.StatusCode)

	if err := p.copyBody(w, resp); err != nil {
		_ = resp.Body.Close()
		panic(http.ErrAbortHandler) // as ReverseProxy: the response is cut, not completed
	}
	_ = resp.Body.Close()
	if len(resp.Trailer) > 0 {
		// Chunked, so that the trailers can follow (ReverseProxy does the same).
		_ = http.NewResponseController(w).Flush()
	}
	if len(resp.Trailer) == announced {
		for k, vv := range resp.Trailer {
			h[k] = append(h[k], vv...)
		}
		return
	}
	for k, vv := range resp.Trailer {
		for _, v := range vv {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
}

// tryBackends claims the chooser's backends in turn and runs try on each
// until one answers: a backend that could not be connected to (an
// AttemptError) is given up for the next, any other error ends the tries.
// The claim of the backend that answered is the caller's to release.
func tryBackends[T any](ctx context.Context, ch *balancer.Chooser, try func(*balancer.Backend) (T, error)) (T, *balancer.Claim, error) {
	for {
		c, err := ch.Next(ctx)
		if err != nil {
			var zero T
			return zero, nil, err
		}
		v, err := try(c.Backend)
		if err == nil {
			return v, c, nil
		}
		if _, dialFailed := errors.AsType[*balancer.AttemptError](err); dialFailed {
			ch.Failed(c, err)
			continue
		}
		c.Release()
		return v, nil, err
	}
}

// copyBody copies the response body to w with a pooled buffer; a stream
// (unknown length, or text/event-stream) is flushed at once and after each
// write, like ReverseProxy's flushInterval -1.
func (p *proxy) copyBody(w http.ResponseWriter, resp *http.Response) error {
	var flush func() error
	if resp.ContentLength == -1 || isEventStream(resp.Header.Get("Content-Type")) {
		flush = http.NewResponseController(w).Flush
		_ = flush()
	}
	bp := copyBuffers.get()
	defer copyBuffers.put(bp)
	buf := *bp
	for {
		nr, rerr := resp.Body.Read(buf)
		if rerr != nil && rerr != io.EOF && p.rp.ErrorLog != nil {
			p.rp.ErrorLog.Printf("l7: proxy read error during body copy: %v", rerr)
		}
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			if werr != nil {
				return werr
			}
			if nw != nr {
				return io.ErrShortWrite
			}
			if flush != nil {
				_ = flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// isEventStream reports whether a Content-Type is text/event-stream (with
// or without parameters), as mime.ParseMediaType would see it.
func isEventStream(ct string) bool {
	const es = "text/event-stream"
	ct = strings.TrimLeft(ct, " \t")
	if len(ct) < len(es) || !strings.EqualFold(ct[:len(es)], es) {
		return false
	}
	rest := strings.TrimLeft(ct[len(es):], " \t")
	return rest == "" || rest[0] == ';'
}

// requestSkips are the request headers writeRequest does not copy: the
// hop-by-hop ones, the forwarding ones sluice replaces, and those it writes
// itself (Host, User-Agent, Content-Length).
var requestSkips = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Forwarded": true, "X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true,
	"X-Real-Ip": true, "Host": true, "User-Agent": true, "Content-Length": true,
}

// writeRequest writes the request for in to the backend: what
// ReverseProxy with rewrite (proxy.go) and Request.Write sent.
func writeRequest(bw *bufio.Writer, in *http.Request, cs *connState) error {
	bw.WriteString(in.Method)
	bw.WriteByte(' ')
	bw.WriteString(requestURI(in.URL))
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(in.Host)
	bw.WriteString("\r\n")
	if ua := in.Header.Get("User-Agent"); ua != "" {
		writeField(bw, "User-Agent", ua)
	}
	if sendContentLength(in) {
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(in.ContentLength, 10))
		bw.WriteString("\r\n")
	}
	conn := in.Header["Connection"]
	var stack [24]string
	keys := stack[:0]
	for k := range in.Header {
		if !requestSkips[k] && !namedBy(conn, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range in.Header[k] {
			writeField(bw, k, v)
		}
	}
	if headerHasToken(in.Header["Te"], "trailers") {
		bw.WriteString("Te: trailers\r\n")
	}
	ip, proto := "", "http"
	if cs != nil {
		ip = cs.ip
		if cs.tls {
			proto = "https"
		}
	}
	writeField(bw, "X-Forwarded-For", forwardedFor(in.Header, ip))
	writeField(bw, "X-Forwarded-Host", in.Host)
	writeField(bw, "X-Forwarded-Proto", proto)
	writeField(bw, "X-Real-Ip", ip)
	bw.WriteString("\r\n")
	if in.ContentLength <= 0 || in.Body == nil || in.Body == http.NoBody {
		return nil
	}
	body, err := in.GetBody()
	if err != nil {
		return err
	}
	n, err := io.Copy(bw, body)
	if err == nil && n != in.ContentLength {
		err = fmt.Errorf("l7: request body %d bytes, Content-Length %d", n, in.ContentLength)
	}
	return err
}

// sendContentLength is net/http's transferWriter.shouldSendContentLength
// for a body in memory: a length, or 0 for the methods servers expect one
// for.
func sendContentLength(in *http.Request) bool {
	if in.ContentLength > 0 {
		return true
	}
	switch in.Method {
	case "POST", "PUT", "PATCH":
		return true
	}
	return false
}

// writeField writes one header line; a CR or LF in v (net/http's parser
// lets none through) would become a space, as in Header.Write.
func writeField(bw *bufio.Writer, k, v string) {
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// requestURI is the origin-form target ReverseProxy sent: the client's
// path and its query, with unparsable query parameters removed.
func requestURI(u *url.URL) string {
	if u.RawQuery == "" || queryClean(u.RawQuery) {
		return u.RequestURI()
	}
	v := *u
	q, _ := url.ParseQuery(u.RawQuery)
	v.RawQuery = q.Encode()
	return v.RequestURI()
}

// queryClean reports whether httputil's cleanQueryParams keeps a query
// as it is: no ';', every '%' followed by two hex digits, at most 10,000
// parameters.
func queryClean(s string) bool {
	if strings.Count(s, "&") >= 10000 {
		return false
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return false
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
			i += 3
		default:
			i++
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// namedBy reports whether the Connection header values conn name the
// (canonical) header k as hop-by-hop.
func namedBy(conn []string, k string) bool {
	for _, v := range conn {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), k) {
				return true
			}
		}
	}
	return false
}

func headerHasToken(vs []string, token string) bool {
	for _, v := range vs {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// removeHopByHopHeaders is httputil's: the headers Connection names, then
// the hop-by-hop ones (RFC 9110, Section 7.6.1).
func removeHopByHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"} {
		delete(h, f)
	}
}
