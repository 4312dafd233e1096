package l7

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"sluice/balancer"
	"sluice/l4"
)

const (
	// maxResponseHead bounds the backend's answer to an upgrade.
	maxResponseHead = 16 << 10
	// maxRefusalBody bounds the body of a non-101 answer relayed to the
	// client (RELIABILITY T15).
	maxRefusalBody = 64 << 10
	websocketGUID  = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" // RFC 6455, Section 1.3
)

// checkUpgrade validates a WebSocket upgrade request (RFC 6455 Section 4.2.1,
// RELIABILITY T9) and returns its Sec-WebSocket-Key.
func checkUpgrade(r *http.Request) (string, int, string) {
	if r.Method != http.MethodGet {
		return "", http.StatusBadRequest, "WebSocket upgrade must be GET"
	}
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 {
		return "", http.StatusBadRequest, "WebSocket upgrade needs HTTP/1.1"
	}
	if up := r.Header.Values("Upgrade"); len(up) != 1 || !strings.EqualFold(strings.TrimSpace(up[0]), "websocket") {
		return "", http.StatusBadRequest, "Upgrade must be exactly websocket"
	}
	if !hasToken(r.Header, "Connection", "upgrade") {
		return "", http.StatusBadRequest, "Connection must contain upgrade"
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return "", http.StatusBadRequest, "missing or repeated Sec-WebSocket-Key"
	}
	key := strings.TrimSpace(keys[0])
	if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(key) != 24 || len(raw) != 16 {
		return "", http.StatusBadRequest, "Sec-WebSocket-Key must be base64 of 16 bytes"
	}
	if v := r.Header.Values("Sec-WebSocket-Version"); len(v) != 1 || strings.TrimSpace(v[0]) != "13" {
		return "", http.StatusUpgradeRequired, "Sec-WebSocket-Version must be 13"
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		return "", http.StatusBadRequest, "body on an upgrade request"
	}
	return key, 0, ""
}

// acceptKey is Sec-WebSocket-Accept for key (RFC 6455, Section 4.2.2).
func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// hasToken reports whether the comma-separated values of header name
// contain token, case-insensitively.
func hasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// hopByHop are the headers a proxy does not forward (RFC 9110, Section 7.6.1),
// plus the ones sluice sets itself.
var hopByHop = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Content-Length": true,
}

var forwardedHeaders = map[string]bool{
	"X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true, "X-Real-Ip": true, "Forwarded": true,
}

// connectionNamed returns the headers a Connection header names as
// hop-by-hop, canonicalized.
func connectionNamed(h http.Header) map[string]bool {
	var m map[string]bool
	for _, v := range h.Values("Connection") {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				if m == nil {
					m = map[string]bool{}
				}
				m[http.CanonicalHeaderKey(t)] = true
			}
		}
	}
	return m
}

func clientIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	if a == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}

// forwardedFor appends ip to the X-Forwarded-For values of h.
func forwardedFor(h http.Header, ip string) string {
	if prior := strings.Join(h.Values("X-Forwarded-For"), ", "); prior != "" {
		return prior + ", " + ip
	}
	return ip
}

// upgradeRequest serializes the request sent to the backend: request line,
// Host, the client's end-to-end headers, Upgrade/Connection and the
// forwarding headers. Net/http rejected header names and values with control
// bytes, so they are safe to write back.
func upgradeRequest(r *http.Request, cs *connState) []byte {
	target := r.RequestURI
	if !strings.HasPrefix(target, "/") {
		target = r.URL.RequestURI()
	}
	ip := clientIP(cs.client)
	proto := "http"
	if cs.tls {
		proto = "https"
	}
	var b bytes.Buffer
	b.Grow(1024)
	b.WriteString("GET " + target + " HTTP/1.1\r\nHost: " + r.Host + "\r\n")
	named := connectionNamed(r.Header)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		if !hopByHop[k] && !forwardedHeaders[k] && !named[k] {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range r.Header[k] {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("Upgrade: websocket\r\nConnection: Upgrade\r\n")
	b.WriteString("X-Forwarded-For: " + forwardedFor(r.Header, ip) + "\r\n")
	b.WriteString("X-Forwarded-Proto: " + proto + "\r\n")
	b.WriteString("X-Forwarded-Host: " + r.Host + "\r\n")
	b.WriteString("X-Real-IP: " + ip + "\r\n\r\n")
	return b.Bytes()
}

// readAnswer reads the head of a backend's answer to the upgrade request r
// from bc, at most maxResponseHead bytes of it. Bytes after the head stay
// in the returned reader, in order; lr bounds what may still be read
// through it.
func readAnswer(bc io.Reader, r *http.Request) (*http.Response, *bufio.Reader, *io.LimitedReader, error) {
	lr := &io.LimitedReader{R: bc, N: maxResponseHead}
	br, _ := answerReaders.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(lr, 4<<10)
	} else {
		br.Reset(lr)
	}
	resp, err := http.ReadResponse(br, r)
	return resp, br, lr, err
}

// answerReaders are readAnswer's readers, back once an upgrade's answer
// has been relayed or its tunnel started (putAnswerReader).
var answerReaders sync.Pool

func putAnswerReader(br *bufio.Reader) {
	br.Reset(nil)
	answerReaders.Put(br)
}

// switchProblem checks a 101 answer to an upgrade whose Sec-WebSocket-Key
// was key: "" when it switches to WebSocket with the right
// Sec-WebSocket-Accept (the only answer that opens a tunnel, rule 5), else
// what is wrong, for the 502.
func switchProblem(resp *http.Response, key string) string {
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return "backend did not switch protocols"
	}
	if up := resp.Header.Values("Upgrade"); len(up) != 1 || !strings.EqualFold(strings.TrimSpace(up[0]), "websocket") {
		return "backend switched to another protocol"
	}
	if acc := resp.Header.Values("Sec-WebSocket-Accept"); len(acc) != 1 || strings.TrimSpace(acc[0]) != acceptKey(key) {
		return "backend sent a wrong Sec-WebSocket-Accept"
	}
	return ""
}

// serveUpgrade forwards a WebSocket upgrade to pool and, on a verified 101,
// hijacks the connection and starts its tunnel on the shared l4 relay
// (rule 5), which ends the connection. It reports whether it hijacked.
func (rt *Route) serveUpgrade(w *statusWriter, r *http.Request, cs *connState, pool *balancer.Pool) (tunneled bool) {
	key, code, msg := checkUpgrade(r)
	if code != 0 {
		if code == http.StatusUpgradeRequired {
			w.Header().Set("Sec-WebSocket-Version", "13") // RFC 6455, Section 4.4
		}
		rt.refuse(w, cs, code, ReasonUpgradeRejected, msg)
		return
	}
	// AwaitAnswer: a backend that accepts and then closes or resets before
	// answering the upgrade is retried on another one (T12).
	dreq := dialRequest(pool, r, cs)
	second := secondChance(r, pool, &dreq)
	dreq.Prefix, dreq.AwaitAnswer = upgradeRequest(r, cs), true
	if rt.rawUpgrade() {
		dreq.Wait = l4.FDWaiter() // the tunnel takes the descriptor (upstream)
	}
	lease, err := pool.Dial(cs.ctx, dreq)
	if err != nil {
		rt.dialFailed(w, cs, err)
		return
	}
	bc := upstreamOf(lease)
	defer func() {
		if !tunneled {
			_ = bc.Close()
			lease.Release()
		}
	}()
	cs.mu.Lock()
	cs.res.Backend = lease.Backend.ID()
	cs.mu.Unlock()

	// The answer: bounded in time and size; bytes after its head (a frame
	// coalesced with the 101) stay in br.
	_ = bc.SetReadDeadline(time.Now().Add(rt.headerTimeout))
	resp, br, lr, err := readAnswer(bc, r)
	defer func() { putAnswerReader(br) }() // the last attempt's: nothing reads it once this returns
	if err != nil {
		if isTimeout(err) {
			rt.refuse(w, cs, http.StatusGatewayTimeout, ReasonBackendTimeout, "backend did not answer the upgrade in time")
			return
		}
		rt.refuse(w, cs, http.StatusBadGateway, ReasonBadUpgradeResponse, "bad answer from backend")
		return
	}
	if second && resp.StatusCode == pool.SecondChanceStatus() {
		if l2, bc2, resp2, br2, lr2 := rt.unknownRoom(cs, r, pool, dreq, lease.Backend); l2 != nil {
			_ = bc.Close()
			lease.Release()
			putAnswerReader(br)
			lease, bc, resp, br, lr = l2, bc2, resp2, br2, lr2
			cs.mu.Lock()
			cs.res.Backend = lease.Backend.ID()
			cs.mu.Unlock()
		}
	}
	setSticky(resp.Header, pool, dreq.Sticky, lease.Backend, cs.tls)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		lr.N += maxRefusalBody + 8<<10 // chunk framing
		rt.relayRefusal(w, cs, resp)
		return
	}
	if problem := switchProblem(resp, key); problem != "" {
		rt.refuse(w, cs, http.StatusBadGateway, ReasonBadUpgradeResponse, problem)
		return
	}
	coalesced, _ := br.Peek(br.Buffered())

	// Verified 101: take the conn from net/http.
	v := cs.v
	v.hijacked.Store(true)
	hc, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		v.hijacked.Store(false)
		rt.refuse(w, cs, http.StatusInternalServerError, l4.ReasonError, "hijack failed")
		return
	}
	_ = hc // the vconn; the tunnel runs on what is under it
	tunneled = true
	pipelined := make([]byte, rw.Reader.Buffered())
	_, _ = io.ReadFull(rw.Reader, pipelined)
	pipelined = append(pipelined, v.takeBuffered()...)
	client := v.tc // *tls.Conn (relay: close_notify + FIN), or the raw socket (splice)

	cs.mu.Lock()
	cs.res.Upgraded = true
	cs.mu.Unlock()
	w.status = http.StatusSwitchingProtocols
	// The tunnel outlives this handler: serveHTTP returns (and net/http's
	// goroutine with it) while the relay runs on its own goroutines. The
	// connection ends when both the handler's accounting and the relay are
	// done, whichever is last.
	cs.pending.Store(2)
	rt.tunnel(cs, client, bc, lease, resp, coalesced, pipelined, func(res l4.Stats) {
		lease.Observe(1, false) // it answered a verified 101: healthy
		lease.Release()
		cs.mu.Lock()
		cs.res.Relay = res
		cs.res.BytesIn += res.BytesIn
		cs.res.BytesOut += res.BytesOut
		cs.res.Reason, cs.res.Err = res.Reason, res.Err
		cs.mu.Unlock()
		cs.tunnelDone()
	})
	return true
}

// SecondChanceHeader marks an upgrade sent while a backend of the pool
// joined recently (pool key second_chance_status; issue 12, part 7): a game
// server that does not host the room named by the request answers the
// pool's status ("unknown room") instead of creating it. Sluice then asks
// the key's previous owner (the owner before the join) with the same
// header, and when that one does not switch protocols either, the first
// backend again without the header: the room is new, it creates it. A
// client's own header of that name is dropped.
const SecondChanceHeader = "Sluice-Second-Chance"

// secondChance drops a client's SecondChanceHeader and, when the pool
// gives keyed upgrades a second chance and a backend joined within its
// window, sets it and reports true.
func secondChance(r *http.Request, pool *balancer.Pool, dreq *balancer.DialRequest) bool {
	r.Header.Del(SecondChanceHeader)
	if pool.SecondChanceStatus() == 0 || !dreq.HasHashKey || !pool.RecentJoins() {
		return false
	}
	r.Header.Set(SecondChanceHeader, "1")
	return true
}

// unknownRoom follows up an "unknown room" answer of first to the upgrade
// r (see SecondChanceHeader): the key's previous owner when first joined
// recently, and if that one does not switch protocols, first again (by the
// pool's pick) without the header. It returns the lease, its connection
// and the answer of the attempt that answered last; nil when none did, and
// the first answer stands.
func (rt *Route) unknownRoom(cs *connState, r *http.Request, pool *balancer.Pool, dreq balancer.DialRequest, first *balancer.Backend) (*balancer.Lease, upstream, *http.Response, *bufio.Reader, *io.LimitedReader) {
	if pool.JoinedRecently(first) {
		if lease, err := pool.DialPrevious(cs.ctx, dreq); err == nil {
			bc := upstreamOf(lease)
			_ = bc.SetReadDeadline(time.Now().Add(rt.headerTimeout))
			resp, br, lr, err := readAnswer(bc, r)
			if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
				return lease, bc, resp, br, lr
			}
			putAnswerReader(br)
			_ = bc.Close()
			lease.Release()
		}
	}
	r.Header.Del(SecondChanceHeader)
	dreq.Prefix = upgradeRequest(r, cs)
	lease, err := pool.Dial(cs.ctx, dreq)
	if err != nil {
		return nil, nil, nil, nil, nil
	}
	bc := upstreamOf(lease)
	_ = bc.SetReadDeadline(time.Now().Add(rt.headerTimeout))
	resp, br, lr, err := readAnswer(bc, r)
	if err != nil {
		putAnswerReader(br)
		_ = bc.Close()
		lease.Release()
		return nil, nil, nil, nil, nil
	}
	return lease, bc, resp, br, lr
}

// tunnel writes the 101 and the backend's coalesced bytes to the client, the
// client's pipelined bytes to the backend, then starts the relay (l4.Start)
// and returns; done gets the relay's Stats when it ends (at once if a write
// here failed). Nothing of the request or the backend's answer is kept while
// the relay runs.
//
// The lease owns bc besides the relay (l4.Options.Owner): an idle tunnel
// sheds Go's state of a backend socket Go dialled, and a raw dial's
// descriptor (fdUpstream) goes to the relay as it is. The client's state
// stays: the conn's state and drain close it.
func (rt *Route) tunnel(cs *connState, client net.Conn, bc upstream, lease *balancer.Lease, resp *http.Response, coalesced, pipelined []byte, done func(l4.Stats)) {
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
	writeHeaders(&b, resp.Header)
	b.WriteString("\r\n")
	b.Write(coalesced)
	_ = client.SetWriteDeadline(time.Now().Add(rt.writeStall))
	if _, err := client.Write(b.Bytes()); err != nil {
		_ = client.Close()
		_ = bc.Close()
		done(l4.Stats{Reason: l4.ReasonClientReset, Err: err})
		return
	}
	if len(pipelined) > 0 {
		_ = bc.SetWriteDeadline(time.Now().Add(rt.writeStall))
		if _, err := bc.Write(pipelined); err != nil {
			_ = client.Close()
			_ = bc.Close()
			done(l4.Stats{Reason: l4.ReasonBackendReset, Err: err, BytesOut: int64(len(coalesced))})
			return
		}
	}
	in, out := int64(len(pipelined)), int64(len(coalesced))
	opts := rt.relay
	opts.Owner = lease
	end := func(st l4.Stats) {
		st.BytesIn += in
		st.BytesOut += out
		done(st)
	}
	u, ok := bc.(*fdUpstream)
	if !ok {
		l4.Start(cs.ctx, client, bc.(*net.TCPConn), opts, end)
		return
	}
	// The raw dial's descriptor (rawUpgrade: the route's tunnels run on
	// the epoll engine): the relay takes it as it is.
	opts.BackendOptions = balancer.SetBackendOptions
	if !l4.StartSockets(cs.ctx, l4.Socket{Conn: client, FD: -1}, l4.Socket{FD: u.fd}, opts, end) {
		// The epoll set refused the sockets (ENOMEM, max_user_watches):
		// sluice's own trouble, after a good connect (as the l4 path).
		_ = u.Close()
		_ = client.Close()
		end(l4.Stats{Reason: l4.ReasonError, Err: errors.New("l7: the tunnel's relay could not start on its sockets")})
		return
	}
	u.take() // the relay's now
	rt.rawTunnels.Add(1)
}

// writeHeaders writes the end-to-end headers of h, skipping hop-by-hop ones
// and any value with control bytes (no response splitting from a backend).
func writeHeaders(b *bytes.Buffer, h http.Header) {
	named := connectionNamed(h)
	keys := make([]string, 0, len(h))
	for k := range h {
		if !hopByHop[k] && !named[k] && isToken([]byte(k)) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			if validValue([]byte(v)) {
				b.WriteString(k + ": " + v + "\r\n")
			}
		}
	}
}

// relayRefusal passes a non-101 answer to the client: status, end-to-end
// headers and a body of at most 64 KiB, then the connection closes. The
// client's pipelined bytes are never sent (T15).
func (rt *Route) relayRefusal(w *statusWriter, cs *connState, resp *http.Response) {
	if resp.StatusCode < 200 {
		rt.refuse(w, cs, http.StatusBadGateway, ReasonBadUpgradeResponse, "unexpected interim response from backend")
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxRefusalBody+1))
	if err != nil || len(body) > maxRefusalBody {
		if err != nil && isTimeout(err) {
			rt.refuse(w, cs, http.StatusGatewayTimeout, ReasonBackendTimeout, "backend answer timed out")
			return
		}
		rt.refuse(w, cs, http.StatusBadGateway, ReasonBadUpgradeResponse, "bad or oversized answer from backend")
		return
	}
	h := w.Header()
	named := connectionNamed(resp.Header)
	for k, vs := range resp.Header {
		if hopByHop[k] || named[k] {
			continue
		}
		for _, val := range vs {
			if validValue([]byte(val)) {
				h.Add(k, val)
			}
		}
	}
	h.Set("Connection", "close")
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified {
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	cs.mu.Lock()
	cs.res.Reason, cs.res.Err = ReasonUpgradeRefused, nil
	cs.mu.Unlock()
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}

// dialFailed answers a failed pool.Dial: 503 when there was nothing to try
// (T23) or sluice ran out of local resources, 502 when every attempt failed
// (T12).
func (rt *Route) dialFailed(w http.ResponseWriter, cs *connState, err error) {
	switch l4.DialFailure(err) {
	case l4.ReasonNoBackend:
		w.Header().Set("Retry-After", "5")
		rt.refuse(w, cs, http.StatusServiceUnavailable, l4.ReasonNoBackend, "no backend available")
	case l4.ReasonLocalLimit:
		// Sluice is out of source ports or descriptors: an overload, not
		// a broken backend (issue 11).
		w.Header().Set("Retry-After", "1")
		rt.refuse(w, cs, http.StatusServiceUnavailable, l4.ReasonLocalLimit, "proxy overloaded")
	default:
		rt.refuse(w, cs, http.StatusBadGateway, l4.ReasonConnectFailed, "backend connect failed")
	}
	cs.mu.Lock()
	cs.res.Err = err
	cs.mu.Unlock()
}
