package l7

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"sluice/balancer"
	"sluice/l4"
	"sluice/tlsutil"
)

// h2LB is an HTTP2 route for testHost: /ws and / go to be, /static/ serves
// a directory with app.js.
func h2LB(t testing.TB, cfg RouteConfig, be string) *lb {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.js"), []byte("console.log('h2')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := poolOf(t, balancer.PoolConfig{}, 0, be)
	cfg.Name, cfg.Hosts, cfg.TLS, cfg.HTTP2 = "h5", []string{testHost}, serverTLS(), true
	cfg.Locations = []Location{{Path: "/ws", Pool: p}, {Path: "/static/", Root: dir}, {Path: "/", Pool: p}}
	return startLB(t, cfg)
}

// h2Conn opens one HTTP/2 client connection to l (net/http's client).
func (l *lb) h2Conn(t *testing.T) *http.ClientConn { return l.h2ConnVia(t, nil) }

// h2ConnVia is h2Conn with the TCP conn passed through wrap, if set.
func (l *lb) h2ConnVia(t *testing.T, wrap func(net.Conn) net.Conn) *http.ClientConn {
	t.Helper()
	protos := new(http.Protocols)
	protos.SetHTTP2(true)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", l.addr)
			if err != nil || wrap == nil {
				return c, err
			}
			return wrap(c), nil
		},
		TLSClientConfig: clientTLS(testHost),
		Protocols:       protos,
	}
	_, port, _ := net.SplitHostPort(l.addr)
	cc, err := tr.NewClientConn(t.Context(), "https", net.JoinHostPort(testHost, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// do sends one request on cc and returns the response with its body.
func do(t *testing.T, cc *http.ClientConn, method, url, host string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, url, err)
	}
	return resp, string(b)
}

// A request over h2 reaches the backend as HTTP/1.1 with the client's
// :authority as Host and the forwarding headers, bodies included; static
// files are served over h2; the Result counts every stream of the conn.
// Both Go clients (x/net's and net/http's own with ForceAttemptHTTP2).
func TestH2ProxyAndStatic(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{}, be.addr)

	cc := l.h2Conn(t)
	resp, body := do(t, cc, "GET", l.url("/api/state?x=1"), "", nil)
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || body != "plain /api/state from "+be.addr {
		t.Fatalf("proto %s status %d body %q", resp.Proto, resp.StatusCode, body)
	}
	resp, body = do(t, cc, "POST", l.url("/api/post"), "", strings.NewReader(strings.Repeat("b", 200<<10)))
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "plain /api/post") {
		t.Fatalf("POST: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, cc, "GET", l.url("/static/app.js"), "", nil)
	if resp.StatusCode != 200 || body != "console.log('h2')\n" {
		t.Fatalf("static: %d %q", resp.StatusCode, body)
	}
	reqs := be.requests()
	if len(reqs) != 2 {
		t.Fatalf("backend got %d requests", len(reqs))
	}
	r := reqs[0]
	if r.ProtoMajor != 1 || r.Host != l.url("")[len("https://"):] || r.URL.RequestURI() != "/api/state?x=1" ||
		r.Header.Get("X-Forwarded-Proto") != "https" || r.Header.Get("X-Real-Ip") != "127.0.0.1" {
		t.Fatalf("backend request %s %s host %q %v", r.Proto, r.URL, r.Host, r.Header)
	}
	// The POST came in 16 KiB frames (MaxReadFrameSize); under net/http's
	// 256 KiB, the test backend drains it and keeps its conn.
	if reqs[1].ContentLength != 200<<10 {
		t.Fatalf("POST reached the backend with Content-Length %d", reqs[1].ContentLength)
	}
	cc.Close()
	res := l.nextResult(t)
	if res.Requests != 3 || res.Status != 200 || res.Reason != l4.ReasonEOF || res.Backend == "" {
		t.Fatalf("result %+v", res)
	}

	// net/http's client negotiates h2 too.
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", l.addr)
		},
		TLSClientConfig:   clientTLS(testHost),
		ForceAttemptHTTP2: true,
	}
	hresp, err := (&http.Client{Transport: tr}).Get(l.url("/api/x"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(hresp.Body)
	hresp.Body.Close()
	tr.CloseIdleConnections()
	if hresp.ProtoMajor != 2 || string(b) != "plain /api/x from "+be.addr {
		t.Fatalf("net/http client: %s %q", hresp.Proto, b)
	}
	if res := l.nextResult(t); res.Requests != 1 || res.Reason != l4.ReasonEOF {
		t.Fatalf("result %+v", res)
	}
}

// curl --http2 (nghttp2), if installed.
func TestH2Curl(t *testing.T) {
	checkLeaks(t)
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{}, be.addr)
	_, port, _ := net.SplitHostPort(l.addr)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, curl, "-sS", "--http2", "-k", "--resolve", testHost+":"+port+":127.0.0.1",
		"-w", "\n%{http_version} %{http_code}", l.url("/api/curl"), l.url("/static/app.js")).CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	want := "plain /api/curl from " + be.addr + "\n2 200console.log('h2')\n\n2 200"
	if string(out) != want {
		t.Fatalf("curl printed %q, want %q", out, want)
	}
	if res := l.nextResult(t); res.Requests != 2 || res.Status != 200 {
		t.Fatalf("result %+v", res) // one connection for both
	}
}

// The Host/SNI rule holds per stream: a stream whose :authority is not one
// of the route's hosts gets 421, and only that stream: the connection
// keeps serving the others (a 421 asks the client to retry elsewhere, RFC
// 9110 Section 15.5.20; closing would cut the streams beside it).
func TestH2Misdirected(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{}, be.addr)
	cc := l.h2Conn(t)
	resp, _ := do(t, cc, "GET", l.url("/api/a"), "other.example.org", nil)
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("other :authority: %d", resp.StatusCode)
	}
	resp, body := do(t, cc, "GET", l.url("/api/b"), "", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "plain /api/b") {
		t.Fatalf("after the 421: %d %q", resp.StatusCode, body)
	}
	if err := cc.Err(); err != nil || cc.Available() == 0 {
		t.Fatalf("conn after a 421: %v, %d streams available", err, cc.Available())
	}
	if n := len(be.requests()); n != 1 {
		t.Fatalf("backend got %d requests, want only the allowed one", n)
	}
	cc.Close()
	if res := l.nextResult(t); res.Requests != 2 || res.Reason != l4.ReasonEOF {
		t.Fatalf("result %+v", res)
	}
}

// A stream whose body stalls gets 408 after BodyTimeout while other
// streams of the same connection are answered, before and after it; a
// body over MaxBodyBytes gets 413; neither reaches the backend.
func TestH2SlowBody(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{BodyTimeout: 300 * time.Millisecond, MaxBodyBytes: 64 << 10}, be.addr)
	cc := l.h2Conn(t)

	pr, pw := io.Pipe()
	defer pw.Close()
	slow := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest("POST", l.url("/api/upload"), pr)
		req.ContentLength = 10000
		resp, err := cc.RoundTrip(req)
		if err != nil {
			slow <- nil
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		slow <- resp
	}()
	if _, err := pw.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if resp, _ := do(t, cc, "GET", l.url("/api/"+strconv.Itoa(i)), "", nil); resp.StatusCode != 200 {
			t.Fatalf("GET %d beside a slow body: %d", i, resp.StatusCode)
		}
	}
	var resp *http.Response
	select {
	case resp = <-slow:
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to the slow body")
	}
	if resp == nil || resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("slow body: %v", resp)
	}
	if resp, _ := do(t, cc, "GET", l.url("/api/after"), "", nil); resp.StatusCode != 200 {
		t.Fatalf("GET after the 408: %d", resp.StatusCode)
	}
	resp, _ = do(t, cc, "POST", l.url("/api/big"), "", bytes.NewReader(make([]byte, 100<<10)))
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("big body: %d", resp.StatusCode)
	}
	for _, r := range be.requests() {
		if r.Method == "POST" {
			t.Fatalf("a refused body reached the backend: %s", r.URL)
		}
	}
	cc.Close()
	// The client closes at once: frames of ours it has not read yet (a
	// WINDOW_UPDATE for the refused body) turn its close into a reset,
	// now and then (full run 32).
	if res := l.nextResult(t); res.Requests != 6 || (res.Reason != l4.ReasonEOF && res.Reason != l4.ReasonClientReset) {
		t.Fatalf("result %+v", res)
	}
}

// rawH2 is a client connection speaking frames: for what x/net's client
// will not do (open more streams than allowed) or hides (the settings).
type rawH2 struct {
	c  *tls.Conn
	fr *http2.Framer
}

func (l *lb) rawH2(t *testing.T, settings ...http2.Setting) (*rawH2, map[http2.SettingID]uint32) {
	t.Helper()
	cfg := clientTLS(testHost)
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", l.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	r := &rawH2{c: c, fr: http2.NewFramer(c, c)}
	r.fr.ReadMetaHeaders = nil
	if err := r.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	got := map[http2.SettingID]uint32{}
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			_ = sf.ForeachSetting(func(s http2.Setting) error { got[s.ID] = s.Val; return nil })
			if err := r.fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
			return r, got
		}
	}
}

// headers opens stream id with a GET of path (HPACK without indexing).
func (r *rawH2) headers(t *testing.T, id uint32, path string) {
	t.Helper()
	r.headersFor(t, id, testHost, path)
}

func (r *rawH2) headersFor(t *testing.T, id uint32, authority, path string) {
	t.Helper()
	r.open(t, id, [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", authority}, {":path", path}}, true)
}

// open sends stream id's header fields, ending the stream or not.
func (r *rawH2) open(t *testing.T, id uint32, fields [][2]string, end bool) {
	t.Helper()
	var buf bytes.Buffer
	for _, f := range fields {
		buf.WriteByte(0)
		buf.WriteByte(byte(len(f[0])))
		buf.WriteString(f[0])
		buf.WriteByte(byte(len(f[1])))
		buf.WriteString(f[1])
	}
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

// The server advertises at most h2MaxStreams streams, the HTTP/1.1 head
// limit as its header list limit, and no extended CONNECT (so browsers keep
// WebSocket on HTTP/1.1, RFC 8441 Section 3); a stream past the limit is
// refused while the others are served.
func TestH2StreamLimit(t *testing.T) {
	checkLeaks(t)
	release := make(chan struct{})
	var mu sync.Mutex
	inFlight, most := 0, 0
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	l := h2LB(t, RouteConfig{}, ln.Addr().String())

	r, settings := l.rawH2(t)
	if v, ok := settings[http2.SettingMaxConcurrentStreams]; !ok || v != h2MaxStreams {
		t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS %d (%v)", v, ok)
	}
	if v := settings[http2.SettingMaxHeaderListSize]; v < maxHeadBytes || v > maxHeadBytes+2<<10 {
		t.Fatalf("SETTINGS_MAX_HEADER_LIST_SIZE %d, want about %d", v, maxHeadBytes)
	}
	if v, ok := settings[http2.SettingMaxFrameSize]; ok && v != 16<<10 {
		t.Fatalf("SETTINGS_MAX_FRAME_SIZE %d, want the initial 16384", v)
	}
	if _, ok := settings[http2.SettingEnableConnectProtocol]; ok {
		t.Fatal("SETTINGS_ENABLE_CONNECT_PROTOCOL sent: browsers would try WebSocket over h2")
	}
	for i := range h2MaxStreams + 1 {
		r.headers(t, uint32(2*i+1), "/api/"+strconv.Itoa(i))
	}
	over := uint32(2*h2MaxStreams + 1)
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if rs, ok := f.(*http2.RSTStreamFrame); ok {
			if rs.StreamID != over {
				t.Fatalf("stream %d reset (%v)", rs.StreamID, rs.ErrCode)
			}
			break
		}
	}
	close(release)
	answered := map[uint32]bool{}
	for len(answered) < h2MaxStreams {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d answers: %v", len(answered), err)
		}
		if d, ok := f.(*http2.DataFrame); ok && d.StreamEnded() {
			answered[d.StreamID] = true
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if most > h2MaxStreams {
		t.Fatalf("%d requests at the backend at once", most)
	}
}

// At most h2BodySlots streams of a connection read a body at once: with
// every slot taken by a stalled body, a complete POST waits until a stalled
// one got its 408, while a bodyless GET is answered.
func TestH2BodySlots(t *testing.T) {
	checkLeaks(t)
	slots := bodySlotHook(t, 2*h2BodySlots)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{BodyTimeout: 500 * time.Millisecond}, be.addr)
	r, _ := l.rawH2(t)
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	post := func(id uint32, path string) {
		r.open(t, id, [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", testHost}, {":path", path},
			{"content-length", "5"}}, false)
	}
	for i := range h2BodySlots {
		id := uint32(2*i + 1)
		post(id, "/api/slow")
		if err := r.fr.WriteData(id, false, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for range h2BodySlots { // every slot taken by a stalled body
		select {
		case <-slots:
		case <-time.After(10 * time.Second):
			t.Fatal("the stalled bodies did not take the slots")
		}
	}
	waiting, get := uint32(2*h2BodySlots+1), uint32(2*h2BodySlots+3)
	post(waiting, "/api/complete")
	if err := r.fr.WriteData(waiting, true, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	r.headersFor(t, get, testHost, "/api/get")
	var order []string
	for len(order) < h2BodySlots+2 {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %v: %v", order, err)
		}
		if mh, ok := f.(*http2.MetaHeadersFrame); ok {
			order = append(order, fmt.Sprintf("%d:%s", mh.StreamID, mh.PseudoValue("status")))
		}
	}
	i408 := slices.IndexFunc(order, func(s string) bool { return strings.HasSuffix(s, ":408") })
	iPost := slices.Index(order, fmt.Sprintf("%d:200", waiting))
	if i408 < 0 || iPost < i408 || !slices.Contains(order, fmt.Sprintf("%d:200", get)) {
		t.Fatalf("answers in the order %v: want the waiting POST's 200 after a 408, and the GET's 200", order)
	}
	reqs := be.requests()
	if len(reqs) != 2 || reqs[0].Method != "GET" && reqs[1].Method != "GET" {
		t.Fatalf("backend got %d requests", len(reqs))
	}
}

// An :authority net/http would refuse as a Host is refused (the stream is
// reset) and never reaches the backend, whose Host line it would be;
// the connection's other streams go on.
func TestH2InvalidAuthority(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "any", TLS: serverTLS(), HTTP2: true, Pool: poolOf(t, balancer.PoolConfig{}, 0, be.addr)})
	r, _ := l.rawH2(t)
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.headersFor(t, 1, "game.example.com x", "/api")
	r.headersFor(t, 3, "game.example.com", "/api")
	reset, status := false, ""
	for !reset || status == "" {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			if f.StreamID != 1 {
				t.Fatalf("stream %d reset", f.StreamID)
			}
			reset = true
		case *http2.MetaHeadersFrame:
			if f.StreamID != 3 {
				t.Fatalf("stream %d answered %s", f.StreamID, f.PseudoValue("status"))
			}
			status = f.PseudoValue("status")
		}
	}
	if status != "200" {
		t.Fatalf("valid stream: %s", status)
	}
	if reqs := be.requests(); len(reqs) != 1 || reqs[0].Host != "game.example.com" {
		t.Fatalf("backend got %d requests", len(reqs))
	}
}

// A connection error (a PING on a stream: RFC 9113 Section 6.7) closes the
// connection with bad_request; a stream's error (TestH2InvalidAuthority,
// TestH2SlowBody's data after a 413) does not become the connection's.
func TestH2ProtocolError(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{}, be.addr)
	r, _ := l.rawH2(t)
	if err := r.fr.WriteRawFrame(http2.FramePing, 0, 1, make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeProtocol {
				t.Fatalf("GOAWAY %v", ga.ErrCode)
			}
			break
		}
	}
	if res := l.nextResult(t); res.Reason != ReasonBadRequest || res.Err == nil {
		t.Fatalf("result %+v", res)
	}
}

// A stream whose client grants no flow-control credit is reset after
// WriteStallTimeout, which frees the backend slot its response held; the
// connection's other streams go on.
func TestH2WriteStall(t *testing.T) {
	checkLeaks(t)
	big := bytes.Repeat([]byte("b"), 256<<10)
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(big) })}
	go bsrv.Serve(bln)
	defer bsrv.Close()
	p := poolOf(t, balancer.PoolConfig{}, 0, bln.Addr().String())
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), HTTP2: true, Pool: p,
		Relay: l4.Options{WriteStallTimeout: 300 * time.Millisecond}})
	r, _ := l.rawH2(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.headersFor(t, 1, testHost, "/api/big")
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("stream not reset: %v", err)
		}
		if rs, ok := f.(*http2.RSTStreamFrame); ok && rs.StreamID == 1 {
			break
		}
	}
	for i := 0; p.Status()[0].Active != 0; i++ {
		if i == 1000 {
			t.Fatal("the backend slot is still held")
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.open(t, 3, [][2]string{{":method", "HEAD"}, {":scheme", "https"}, {":authority", testHost}, {":path", "/api/head"}}, true)
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if mh, ok := f.(*http2.MetaHeadersFrame); ok && mh.StreamID == 3 {
			if st := mh.PseudoValue("status"); st != "200" {
				t.Fatalf("HEAD after the reset: %s", st)
			}
			break
		}
	}
}

// A write_stall_timeout shorter than the slack its write deadline may go
// unmoved (1s) still lets responses through that come after it, on
// HTTP/1.1 and h2: the deadline of the first was not moved for the next.
func TestShortWriteStall(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	const stall = 200 * time.Millisecond
	l := h2LB(t, RouteConfig{Relay: l4.Options{WriteStallTimeout: stall}}, be.addr)
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	cc := l.h2Conn(t)
	for i := range 3 {
		if i > 0 {
			time.Sleep(2 * stall) // past the first write's deadline
		}
		get(t, hc, "POST", l.url("/api/h1"), nil) // a POST: net/http's client does not retry it on a new conn
		if resp, _ := do(t, cc, "GET", l.url("/api/h2"), "", nil); resp.StatusCode != 200 {
			t.Fatalf("h2 response %d: %d", i, resp.StatusCode)
		}
	}
}

// A client that goes away with a stream in flight ends the conn as
// client_closed (as an HTTP/1.1 client that leaves mid-body does), or
// client_reset, whether the server's read or its write notices first.
func TestH2ClientClosed(t *testing.T) {
	checkLeaks(t)
	slots := bodySlotHook(t, 1)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{}, be.addr)
	r, _ := l.rawH2(t)
	r.open(t, 1, [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", testHost}, {":path", "/api/up"},
		{"content-length", "5"}}, false)
	if err := r.fr.WriteData(1, false, []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-slots: // the stream's handler is reading its body
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not start")
	}
	r.c.Close()
	// A reset if the server's last frames were still unread here (the
	// kernel sends one then), else a FIN: never eof, which is a clean end.
	if res := l.nextResult(t); res.Reason != l4.ReasonClientClosed && res.Reason != l4.ReasonClientReset {
		t.Fatalf("result %+v", res)
	}
	if n := len(be.requests()); n != 0 {
		t.Fatalf("backend got %d requests", n)
	}
}

// A page loaded over h2 can still open a WebSocket to the same host: the
// upgrade arrives on its own HTTP/1.1 connection, while the h2 one stays up.
func TestH2WebSocketOnHTTP1(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{}, be.addr)
	cc := l.h2Conn(t)
	if resp, _ := do(t, cc, "GET", l.url("/static/app.js"), "", nil); resp.StatusCode != 200 {
		t.Fatalf("static: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ws := l.wsDial(t, ctx, "/ws")
	if err := ws.Write(ctx, 1, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.Read(ctx); err != nil || string(msg) != "hello" {
		t.Fatalf("echo %q %v", msg, err)
	}
	ws.CloseNow()
	if res := l.nextResult(t); !res.Upgraded {
		t.Fatalf("result %+v", res)
	}
	if resp, _ := do(t, cc, "GET", l.url("/api/again"), "", nil); resp.StatusCode != 200 {
		t.Fatalf("h2 after the WebSocket: %d", resp.StatusCode)
	}
}

// Without HTTP2 the route offers only http/1.1 (http2 = false).
func TestH2Disabled(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	p := poolOf(t, balancer.PoolConfig{}, 0, be.addr)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: p})
	cfg := clientTLS(testHost)
	cfg.NextProtos = []string{"h2", "http/1.1"}
	c, err := tls.Dial("tcp", l.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("negotiated %q", p)
	}
}

// Connection timeouts: no request within HeaderTimeout of the handshake
// closes with header_timeout; no stream for KeepAliveTimeout after the last
// one closes with idle_timeout (GOAWAY first).
func TestH2Timeouts(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{HeaderTimeout: 300 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond}, be.addr)

	cfg := clientTLS(testHost)
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", l.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if res := l.nextResult(t); res.Reason != ReasonHeaderTimeout || res.Requests != 0 {
		t.Fatalf("silent h2 conn: %+v", res)
	}

	cc := l.h2Conn(t)
	if resp, _ := do(t, cc, "GET", l.url("/api/once"), "", nil); resp.StatusCode != 200 {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	if res := l.nextResult(t); res.Reason != l4.ReasonIdleTimeout || res.Requests != 1 {
		t.Fatalf("idle h2 conn: %+v", res)
	}
}

// Route.Close ends an h2 connection with a stream in flight and returns
// only once its handler has returned (checkLeaks).
func TestH2RouteClose(t *testing.T) {
	checkLeaks(t)
	started := make(chan struct{}, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	l := h2LB(t, RouteConfig{}, ln.Addr().String())
	cc := l.h2Conn(t)
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("GET", l.url("/api/hang"), nil)
		resp, err := cc.RoundTrip(req)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("request did not reach the backend")
	}
	if err := l.route.Close(); err != nil {
		t.Fatal(err)
	}
	if res := l.nextResult(t); res.Reason != l4.ReasonDrain {
		t.Fatalf("result %+v", res)
	}
	if err := <-errc; err == nil {
		t.Fatal("the stream completed across Route.Close")
	}
}

// BenchmarkH2 serves a small proxied GET (a 19-byte answer) and a 20 KiB
// static file over TLS, by HTTP/1.1 keep-alive connections (one per client
// goroutine) and by one HTTP/2 connection carrying every client's streams.
// cpu-ns/op is the process's CPU time per request: client, sluice and
// backend together, all in this process.
func BenchmarkH2(b *testing.B) {
	body := []byte("hello from backend\n")
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	bsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(body)
	})}
	go bsrv.Serve(bln)
	defer bsrv.Close()
	p, err := balancer.NewPool(balancer.PoolConfig{Name: "bench", Backends: []balancer.BackendConfig{{Address: bln.Addr().String()}}})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.js"), bytes.Repeat([]byte("x"), 20<<10), 0o644); err != nil {
		b.Fatal(err)
	}
	rt, err := NewRoute(RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), HTTP2: true,
		Locations: []Location{{Path: "/static/", Root: dir}, {Path: "/", Pool: p}}})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := c.(*net.TCPConn)
				hello, err := tlsutil.ReadClientHello(tc, 16<<10)
				if err != nil {
					tc.Close()
					return
				}
				rt.ServeConn(context.Background(), tc, hello.Raw, time.Now())
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, bench := range []struct {
		name, path string
		body       []byte
	}{
		{"proxied", "/api/state", nil},
		{"posted", "/socket.io/?EIO=4&transport=polling", []byte(`42["move",{"x":12,"y":34}]`)},
		{"static", "/static/app.js", nil},
	} {
		url := "https://" + testHost + ":" + port + bench.path
		for _, proto := range []string{"h1", "h2"} {
			b.Run(bench.name+"/"+proto, func(b *testing.B) { benchGet(b, proto, ln.Addr().String(), url, bench.body) })
		}
	}
}

// benchGet measures GETs of url, or POSTs of body if it is set.
func benchGet(b *testing.B, proto, addr, url string, body []byte) {
	protos := new(http.Protocols)
	if proto == "h2" {
		protos.SetHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		TLSClientConfig:     clientTLS(testHost),
		Protocols:           protos,
		MaxIdleConnsPerHost: 64,
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	get := func() error {
		var resp *http.Response
		var err error
		if body != nil {
			resp, err = hc.Post(url, "text/plain;charset=UTF-8", bytes.NewReader(body))
		} else {
			resp, err = hc.Get(url)
		}
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.ProtoMajor != int(proto[1]-'0') {
			err = fmt.Errorf("got %s", resp.Proto)
		}
		return err
	}
	if err := get(); err != nil { // connect outside the timing
		b.Fatal(err)
	}
	b.SetParallelism(4)
	b.ReportAllocs()
	b.ResetTimer()
	start := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := get(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bodySlotHook sets testHookBodySlot for the test: the channel gets a value
// per body slot taken (up to n; a stream after the test's end sends none).
func bodySlotHook(t *testing.T, n int) <-chan struct{} {
	slots := make(chan struct{}, n)
	hook := func() {
		select {
		case slots <- struct{}{}:
		default:
		}
	}
	testHookBodySlot.Store(&hook)
	t.Cleanup(func() { testHookBodySlot.Store(nil) })
	return slots
}

// tlsRecords counts the TLS records a client conn reads.
type tlsRecords struct {
	net.Conn
	mu      sync.Mutex
	hdr     [5]byte
	hn, rem int
	n       int
}

func (c *tlsRecords) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	for b := p[:n]; len(b) > 0; {
		if c.rem > 0 {
			k := min(c.rem, len(b))
			c.rem -= k
			b = b[k:]
			continue
		}
		k := copy(c.hdr[c.hn:], b)
		c.hn += k
		b = b[k:]
		if c.hn == len(c.hdr) {
			c.hn, c.rem = 0, int(c.hdr[3])<<8|int(c.hdr[4])
			c.n++
		}
	}
	c.mu.Unlock()
	return n, err
}

func (c *tlsRecords) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// A small response leaves in one TLS record, HEADERS and DATA together, as
// nginx and HAProxy send it (x/net's server flushed them apart: two
// records, two syscalls). A response whose headers the proxy flushes before its
// body (a stream) still gets them at once, and streams in parallel on one
// conn each get their own answer.
func TestH2ResponseInOneRecord(t *testing.T) {
	checkLeaks(t)
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			w.WriteHeader(200)
			w.(http.Flusher).Flush() // chunked: the proxy flushes the HEADERS alone
			<-release
		}
		_, _ = io.WriteString(w, "answer "+r.URL.RawQuery)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	l := h2LB(t, RouteConfig{}, ln.Addr().String())

	var rec *tlsRecords
	cc := l.h2ConnVia(t, func(c net.Conn) net.Conn {
		rec = &tlsRecords{Conn: c}
		return rec
	})
	if _, body := do(t, cc, "GET", l.url("/warm?0"), "", nil); body != "answer 0" {
		t.Fatalf("body %q", body)
	}

	const n = 20
	records := 0
	for i := range n {
		before := rec.count()
		q := strconv.Itoa(i)
		if _, body := do(t, cc, "GET", l.url("/api?"+q), "", nil); body != "answer "+q {
			t.Fatalf("body %q", body)
		}
		records += rec.count() - before
	}
	// One record each: the handler writes its whole response in one flush.
	if records != n {
		t.Fatalf("%d responses came in %d TLS records", n, records)
	}
	t.Logf("%d responses in %d records", n, records)

	// A stream: its HEADERS reach the client before the backend answers.
	req, _ := http.NewRequest("GET", l.url("/stream"), nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	free()
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "answer " {
		t.Fatalf("stream body %q, %v", b, err)
	}

	// Parallel streams, held and not, keep their order and their answers.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				q := fmt.Sprintf("%d-%d", g, i)
				req, _ := http.NewRequest("GET", l.url("/p?"+q), nil)
				resp, err := cc.RoundTrip(req)
				if err != nil {
					errs <- err
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(b) != "answer "+q {
					errs <- fmt.Errorf("%s: %q, %v", q, b, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// A header list over SETTINGS_MAX_HEADER_LIST_SIZE (spread over HEADERS and
// CONTINUATION frames) gets 431 on its stream; the connection goes on.
func TestH2HeaderListTooLong(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{}, be.addr)
	r, _ := l.rawH2(t)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", testHost}, {":path", "/api/big"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := range 5 {
		_ = enc.WriteField(hpack.HeaderField{Name: "x-big-" + strconv.Itoa(i), Value: strings.Repeat("v", 4<<10)})
	}
	b := block.Bytes()
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:10<<10], EndStream: true}); err != nil {
		t.Fatal(err)
	}
	if err := r.fr.WriteContinuation(1, true, b[10<<10:]); err != nil {
		t.Fatal(err)
	}
	r.headers(t, 3, "/api/small")
	dec := hpack.NewDecoder(4096, nil)
	status := map[uint32]string{}
	for len(status) < 2 {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %v: %v", status, err)
		}
		if hf, ok := f.(*http2.HeadersFrame); ok {
			fields, err := dec.DecodeFull(hf.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			status[hf.StreamID] = fields[0].Value
		}
	}
	if status[1] != "431" || status[3] != "200" {
		t.Fatalf("statuses %v, want 431 for the long list and 200 after it", status)
	}
	if n := len(be.requests()); n != 1 {
		t.Fatalf("backend got %d requests, want only the small one", n)
	}
}

// A worker parked for its conn's next stream gives up after h2ParkTime; a
// stream that comes as it does still gets served (by it, or by a new one):
// with a park time about as long as the gap between requests, both sides
// of that race happen, and every request is answered.
func TestH2WorkerParkRace(t *testing.T) {
	checkLeaks(t)
	defer h2ParkTime.Store(h2ParkTime.Load())
	h2ParkTime.Store(int64(200 * time.Microsecond))
	be := startWSBackend(t, nil)
	l := h2LB(t, RouteConfig{}, be.addr)
	cc := l.h2Conn(t)
	for i := range 300 {
		// A lost stream would hang: each request has 10 s.
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", l.url("/api/park?"+strconv.Itoa(i)), nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			cancel()
			t.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(string(body), "plain /api/park") {
			t.Fatalf("request %d: %d %q %v", i, resp.StatusCode, body, err)
		}
		if i%3 == 0 {
			time.Sleep(time.Duration(i%7) * 100 * time.Microsecond)
		}
	}
}

// The HTTP/2 fast path (h2fast.go) answers what a backend sends as the
// handler's path (http.ReadResponse) does, whatever its framing, and the
// connection goes on after a 502.
func TestH2FastPathResponses(t *testing.T) {
	checkLeaks(t)
	be := startAnswersBackend(t)
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), HTTP2: true, Pool: pool(t, balancer.ProxyNone, be.addr)})
	cc := l.h2Conn(t)
	get := func(method, path string) (*http.Response, string, error) {
		req, _ := http.NewRequest(method, l.url(path), nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			return nil, "", err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b), err
	}
	if resp, body, err := get("GET", "/close"); err != nil || resp.StatusCode != 200 || body != "hello until close" {
		t.Fatalf("close-delimited: %v %q %v", resp, body, err)
	}
	if resp, body, err := get("GET", "/chunked"); err != nil || body != "hello world" || resp.Trailer.Get("X-Sum") != "42" {
		t.Fatalf("chunked: %q trailer %v %v", body, resp.Trailer, err)
	}
	if resp, body, err := get("GET", "/named"); err != nil || body != "ok" || resp.Header.Get("X-Secret") != "" ||
		resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("Date") == "" || resp.ContentLength != 2 {
		t.Fatalf("hop-by-hop: %q %v %v", body, resp.Header, err)
	}
	if resp, body, err := get("HEAD", "/head"); err != nil || resp.StatusCode != 200 || resp.ContentLength != 10 || body != "" {
		t.Fatalf("HEAD: %v %q %v", resp, body, err)
	}
	if resp, body, err := get("GET", "/empty"); err != nil || resp.StatusCode != 204 || body != "" || resp.Header.Get("X-A") != "b" {
		t.Fatalf("204: %v %q %v", resp, body, err)
	}
	if resp, body, err := get("GET", "/http10"); err != nil || resp.StatusCode != 200 || body != "old" {
		t.Fatalf("HTTP/1.0 backend: %v %q %v", resp, body, err)
	}
	if resp, body, err := get("GET", "/early"); err != nil || resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after a 103: %v %q %v", resp, body, err)
	}
	for _, p := range []string{"/bad", "/twocl"} {
		if resp, _, err := get("GET", p); err != nil || resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s: %v %v, want 502", p, resp, err)
		}
	}
	if _, _, err := get("GET", "/short"); err == nil {
		t.Fatal("a body cut short by the backend came whole")
	}
	if resp, body, err := get("GET", "/named"); err != nil || resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after the 502s: %v %q %v", resp, body, err)
	}
	if res := fastStreams.Load(); res == 0 {
		t.Fatal("no stream took the fast path")
	}
}

// h2HeadAnswers is what the backend of TestH2FastPathAnswersWhatSlowAnswers
// answers, by path: the response fields the fast path encodes itself
// (encodeFast), against encodeHead's rules on the handler's path.
var h2HeadAnswers = map[string]string{
	// Lower-case and mixed-case names, a repeated Set-Cookie, a Vary the
	// location adds to and a Cache-Control it replaces, no Content-Type
	// (sniffed).
	"/fields": "HTTP/1.1 200 OK\r\nx-lower: a\r\nX-MiXeD: b\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n" +
		"Vary: Origin\r\ncache-control: no-store\r\nContent-Length: 15\r\n\r\n<html>hi</html>",
	"/gzip":     "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
	"/ctempty":  "HTTP/1.1 200 OK\r\nContent-Type:\r\nContent-Length: 3\r\n\r\nabc",
	"/date":     "HTTP/1.1 200 OK\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\nContent-Length: 3\r\n\r\nabc",
	"/created":  "HTTP/1.1 201 Created\r\nLocation: /x/1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
	"/missing":  "HTTP/1.1 404 Not Found\r\nCache-Control: no-cache\r\nContent-Length: 4\r\n\r\nnope",
	"/close":    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello until close",
	"/closeraw": "HTTP/1.1 200 OK\r\n\r\nhello until close",
	"/chunked":  "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n",
	"/events":   "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 9\r\n\r\ndata: 1\n\n",
	"/empty":    "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
	"/big":      "HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + strings.Repeat("z", 20000),
	"/long": "HTTP/1.1 200 OK\r\nX-" + strings.Repeat("Long", 20) + ": " + strings.Repeat("v", 300) +
		"\r\nContent-Length: 2\r\n\r\nok",
}

// The HTTP/2 fast path encodes a backend's response head (encodeFast) as
// the handler's path does (encodeHead on an http.Header): the same fields,
// body and trailers for every kind of head, with the location's headers
// and the sticky cookie; and over more distinct values than the conn keeps
// strings for (str), each answer still its own.
func TestH2FastPathAnswersWhatSlowAnswers(t *testing.T) {
	checkLeaks(t)
	be := startScriptBackend(t, answerUntil(func(r *http.Request) (string, bool) {
		answer, ok := h2HeadAnswers[r.URL.Path]
		if !ok { // /id/N: values that differ on each request
			n := strings.TrimPrefix(r.URL.Path, "/id/")
			answer = "HTTP/1.1 200 OK\r\nX-Id: " + n + "\r\nETag: \"" + strings.Repeat(n, 8) +
				"\"\r\nX-Name-" + n + ": 1\r\nContent-Length: " + strconv.Itoa(len(n)+1) + "\r\n\r\n" + n + "."
		}
		return answer, strings.HasPrefix(r.URL.Path, "/close")
	}))
	var lbs [2]*lb
	for i, slow := range []bool{false, true} {
		lbs[i] = startLB(t, RouteConfig{Name: "r", TLS: serverTLS(), HTTP2: true, slowPaths: slow, Locations: []Location{
			{Path: "/", Pool: stickyPool(t, be.addr), Headers: routeHeaders}}})
	}
	ccs := [2]*http.ClientConn{lbs[0].h2Conn(t), lbs[1].h2Conn(t)}
	answer := func(i int, method, path string) string {
		t.Helper()
		req, _ := http.NewRequest(method, lbs[i].url(path), nil)
		req.Header.Set("Accept-Encoding", "identity") // no gunzip by the client (/gzip)
		resp, err := ccs[i].RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s %s: body: %v", method, path, err)
		}
		if resp.Header.Get("Date") == "" {
			t.Errorf("%s %s: no Date", method, path)
		}
		if !strings.HasPrefix(path, "/date") {
			delete(resp.Header, "Date")
		}
		return fmt.Sprintf("%d length %d\n%s\ntrailers %v\n%q", resp.StatusCode, resp.ContentLength,
			sortedFields(resp.Header), resp.Trailer, body)
	}
	var paths []string
	for p := range h2HeadAnswers {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for i := range 3 * maxStrs {
		paths = append(paths, "/id/"+strconv.Itoa(i%(2*maxStrs)))
	}
	before := fastStreams.Load()
	fast := 0
	for _, p := range paths {
		for _, method := range []string{"GET", "HEAD"} {
			if strings.HasPrefix(p, "/close") && method == "HEAD" {
				continue
			}
			got, want := answer(0, method, p), answer(1, method, p)
			if got != want {
				t.Errorf("%s %s: the fast path answered\n%s\nthe handler's path\n%s", method, p, got, want)
			}
			fast++
		}
	}
	if n := fastStreams.Load() - before; n != int64(fast) {
		t.Errorf("%d streams on the fast path, want %d", n, fast)
	}
}

// A backend gets the same request from the HTTP/2 fast path as from the
// handler's path: method, target, Host, fields (cookies in one), the
// forwarding fields.
func TestH2FastPathSendsWhatSlowSends(t *testing.T) {
	checkLeaks(t)
	got := make(chan string, 1)
	be := recordingBackend(t, got, true, "HTTP/1.1 200 OK\r\nCache-Control: no-cache\r\nVary: Origin\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	fast := startLB(t, RouteConfig{Name: "fast", TLS: serverTLS(), HTTP2: true, Locations: []Location{
		{Path: "/", Pool: pool(t, balancer.ProxyNone, be.addr), Headers: routeHeaders}}})
	slow := startLB(t, RouteConfig{Name: "slow", TLS: serverTLS(), HTTP2: true, Locations: []Location{
		{Path: "/", Pool: pool(t, balancer.ProxyNone, be.addr), Headers: routeHeaders}}, slowPaths: true})
	type rq struct {
		method, path string
		fields       [][2]string
		body         string
		unsized      bool // no content-length: the handler's path
	}
	big := strings.Repeat("b", maxFastBody+1)
	for _, r := range []rq{
		{"GET", "/", nil, "", false},
		{"GET", "/a/b?q=1&r=%20x", [][2]string{{"User-Agent", "ua"}, {"Accept", "*/*"}, {"Accept", "text/html"}}, "", false},
		{"GET", "/c", [][2]string{{"Cookie", "a=1"}, {"Cookie", "b=2"}, {"X-Lower", "1"}}, "", false},
		{"HEAD", "/h", [][2]string{{"Te", "trailers"}}, "", false},
		{"GET", "/f", [][2]string{{"X-Forwarded-For", "192.0.2.1"}, {"Forwarded", "for=1"}, {"X-Real-Ip", "9.9.9.9"}, {"X-Forwarded-Host", "evil"}}, "", false},
		{"POST", "/e", nil, "", false},
		{"DELETE", "/d", nil, "", false},
		{"OPTIONS", "/o", [][2]string{{"Access-Control-Request-Method", "POST"}, {"Origin", "https://game.example"}}, "", false},
		{"POST", "/socket.io/?EIO=4&transport=polling&sid=x", [][2]string{{"Content-Type", "text/plain;charset=UTF-8"}}, "42[\"move\",{\"x\":1}]", false},
		{"PUT", "/p", [][2]string{{"Content-Type", "application/json"}, {"Idempotency-Key", "k"}}, `{"a":1}`, false},
		{"POST", "/unsized", nil, "abc", true},
		{"POST", "/big", nil, big, false},
	} {
		var sent, answered [2]string
		before := fastStreams.Load()
		for i, l := range []*lb{fast, slow} {
			cc := l.h2Conn(t)
			var body io.Reader
			if r.body != "" {
				body = strings.NewReader(r.body)
				if r.unsized {
					body = io.MultiReader(body) // no length: none sent
				}
			}
			req, _ := http.NewRequest(r.method, l.url(r.path), body)
			for _, f := range r.fields {
				req.Header.Add(f[0], f[1])
			}
			resp, err := cc.RoundTrip(req)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%s %s: %v %v", r.method, r.path, resp, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			sent[i] = <-got
			delete(resp.Header, "Date")
			answered[i] = fmt.Sprint(resp.Header)
		}
		if answered[0] != answered[1] {
			t.Errorf("%s %s: the fast path answered %s, the handler's path %s", r.method, r.path, answered[0], answered[1])
		}
		want := int64(1)
		if r.unsized || len(r.body) > maxFastBody {
			want = 0
		}
		if n := fastStreams.Load() - before; n != want {
			t.Errorf("%s %s: %d streams on the fast path, want %d", r.method, r.path, n, want)
		}
		// The ports differ: the :authority names each lb.
		sent[0] = strings.ReplaceAll(sent[0], fast.addr[strings.LastIndexByte(fast.addr, ':'):], ":PORT")
		sent[1] = strings.ReplaceAll(sent[1], slow.addr[strings.LastIndexByte(slow.addr, ':'):], ":PORT")
		if sent[0] != sent[1] {
			t.Errorf("%s %s:\nfast path sent\n%s\nhandler's path sent\n%s", r.method, r.path, sent[0], sent[1])
		}
	}
}

// The strings encodeFast gives the HPACK encoder (which keeps them in its
// dynamic table) are copies: a later change to the bytes they came from
// changes none of them. The conn keeps at most maxStrs of them, none
// longer than maxStrLen.
func TestH2ServerStringsAreCopies(t *testing.T) {
	s := &h2server{}
	b := []byte("text/plain")
	v := s.str(b)
	copy(b, "XXXXXXXXXX")
	if v != "text/plain" || s.str([]byte("text/plain")) != "text/plain" {
		t.Fatalf("str gave %q after its bytes changed", v)
	}
	name := []byte("X-Custom-Field")
	l := s.lowerName(name)
	copy(name, "Y-Other-Fields")
	if l != "x-custom-field" {
		t.Fatalf("lowerName gave %q after its bytes changed", l)
	}
	if got := s.lowerName([]byte(strings.Repeat("A", maxStrLen+1))); got != strings.Repeat("a", maxStrLen+1) {
		t.Fatalf("lowerName of a long name: %q", got)
	}
	var seen []string
	for i := range 3 * maxStrs {
		want := strconv.Itoa(1000 + i)
		if got := s.intString(int64(1000 + i)); got != want {
			t.Fatalf("intString(%d) = %q", 1000+i, got)
		}
		seen = append(seen, s.str([]byte("v"+want)))
		if len(s.strs) > maxStrs {
			t.Fatalf("%d strings kept, at most %d", len(s.strs), maxStrs)
		}
	}
	for i, v := range seen {
		if v != "v"+strconv.Itoa(1000+i) {
			t.Fatalf("string %d became %q", i, v)
		}
	}
	n := len(s.strs)
	if s.str([]byte(strings.Repeat("v", maxStrLen+1))); len(s.strs) > n {
		t.Fatal("a string longer than maxStrLen was kept")
	}
}

// A stream that runs for the request cap (the relay's idle timeout) is
// reset with INTERNAL_ERROR, whichever stream of the conn started first;
// the conn and its other streams go on. (On the fast path the wait for the
// backend ends at the cap too, and may answer 502 first.)
func TestH2RequestCap(t *testing.T) {
	checkLeaks(t)
	be := startScriptBackend(t, answerUntil(func(r *http.Request) (string, bool) {
		if r.URL.Path == "/hang" {
			<-t.Context().Done() // no answer while the test runs
			return "", true
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false
	}))
	for _, slow := range []bool{false, true} {
		l := startLB(t, RouteConfig{Name: "r", TLS: serverTLS(), HTTP2: true, slowPaths: slow,
			Pool: pool(t, balancer.ProxyNone, be.addr), Relay: l4.Options{IdleTimeout: 300 * time.Millisecond}})
		cc := l.h2Conn(t)
		get := func(path string) error {
			// Far longer than the cap: a stream that is not reset fails here.
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", l.url(path), nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err == nil && (resp.StatusCode != 200 || string(body) != "ok") {
				err = fmt.Errorf("%d %q", resp.StatusCode, body)
			}
			return err
		}
		hung := make(chan error, 2)
		for range 2 {
			go func() { hung <- get("/hang") }()
			if err := get("/ok"); err != nil {
				t.Fatalf("slow %v: a stream beside a hung one: %v", slow, err)
			}
		}
		for range 2 {
			err := <-hung
			if !slow && err != nil && strings.HasPrefix(err.Error(), "502 ") {
				continue
			}
			if err == nil || !strings.Contains(err.Error(), "INTERNAL_ERROR") {
				t.Fatalf("slow %v: a stream past the cap: %v, want a reset with INTERNAL_ERROR", slow, err)
			}
		}
		if err := get("/ok"); err != nil {
			t.Fatalf("slow %v: after the resets: %v", slow, err)
		}
	}
}
