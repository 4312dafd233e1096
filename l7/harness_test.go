package l7

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"sluice/balancer"
	"sluice/balancer/balancertest"
	"sluice/tlsutil"
)

const testHost = "game.example.com"

// checkLeaks fails t if goroutines started during the test outlive it. Call
// it first: cleanups run last-registered first. goleak sees every goroutine
// of the process, so a test that checks this way runs alone; a test that
// runs in parallel calls parallelCheckLeaks instead.
func checkLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// leakLabel is the pprof label key that marks a parallel test's goroutines.
const leakLabel = "sluice.test"

var leakSeq atomic.Int64

// parallelCheckLeaks runs t in parallel with the other tests that call it,
// and fails t if a goroutine it started, directly or through goroutines it
// started, outlives it. Call it first, instead of checkLeaks.
//
// goleak would count the other parallel tests' goroutines as leaks, so the
// test's goroutine gets a pprof label of its own, which every goroutine it
// starts inherits (and theirs in turn: listeners' accept loops, net/http's
// conns, relays), and the check counts the goroutines carrying it. A
// goroutine started by a timer (time.AfterFunc) inherits no label: a leak of
// one is left to the package's goleak.VerifyTestMain.
//
// A test whose lower time bound starts after the timer it measures (a
// keep-alive counted from the response it has just read, a handshake
// timeout counted from accept) stays sequential: next to other tests it can
// be descheduled long enough to see the close early. So does a test that
// burns CPU (200 TLS handshakes at once): parallel, it would starve the
// timers of the tests beside it.
func parallelCheckLeaks(t *testing.T) {
	t.Helper()
	t.Parallel()
	id := fmt.Sprintf("%s#%d", t.Name(), leakSeq.Add(1))
	pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels(leakLabel, id)))
	t.Cleanup(func() {
		// Goroutines get the time goleak gives them to finish.
		deadline := time.Now().Add(5 * time.Second)
		for {
			n, stacks := labeledGoroutines(id)
			if n == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines started by the test outlive it:\n%s", n, stacks)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// labeledGoroutines counts the goroutines labelled id, with their stacks,
// leaving out the caller's own (the test's goroutine, running its cleanup).
func labeledGoroutines(id string) (n int, stacks string) {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
	// debug=1: a "goroutine profile: total N" line, then records of
	// "<count> @ <pcs>", "# labels: {...}" and the frames, separated by
	// blank lines.
	_, profile, _ := strings.Cut(buf.String(), "\n")
	want := fmt.Sprintf("%q:%q", leakLabel, id) // the closing quote: #1 is not #10
	var sb strings.Builder
	for rec := range strings.SplitSeq(profile, "\n\n") {
		if !strings.Contains(rec, "\n# labels: {") || !strings.Contains(rec, want) ||
			strings.Contains(rec, "sluice/l7.labeledGoroutines") {
			continue
		}
		count, _, _ := strings.Cut(rec, " @ ")
		k, err := strconv.Atoi(count)
		if err != nil {
			k = 1
		}
		n += k
		sb.WriteString(rec + "\n\n")
	}
	return n, sb.String()
}

var testCerts = sync.OnceValues(func() (tls.Certificate, tls.Certificate) {
	named, err := tlsutil.SelfSigned([]string{testHost, "*.example.com"}, 0)
	if err != nil {
		panic(err)
	}
	def, err := tlsutil.SelfSigned([]string{"127.0.0.1"}, 0)
	if err != nil {
		panic(err)
	}
	return named, def
})

// serverTLS picks the named certificate, or the default one without SNI.
func serverTLS() *tls.Config {
	named, def := testCerts()
	return &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if h.ServerName == "" {
			return &def, nil
		}
		return &named, nil
	}}
}

func clientTLS(serverName string) *tls.Config {
	named, def := testCerts()
	roots := x509.NewCertPool()
	roots.AddCert(named.Leaf)
	roots.AddCert(def.Leaf)
	return &tls.Config{RootCAs: roots, ServerName: serverName}
}

// lb is a route behind a tiny accept loop: the shape of package main's.
type lb struct {
	route   *Route
	addr    string
	tls     bool
	results chan Result
}

func startLB(t testing.TB, cfg RouteConfig) *lb {
	t.Helper()
	route, err := NewRoute(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &lb{route: route, addr: ln.Addr().String(), tls: cfg.TLS != nil, results: make(chan Result, 1000)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.results <- l.serve(ctx, c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		route.Close()
		wg.Wait()
	})
	return l
}

func (l *lb) serve(ctx context.Context, c *net.TCPConn) Result {
	accepted := time.Now()
	if !l.tls {
		return l.route.ServeConn(ctx, c, nil, accepted)
	}
	_ = c.SetReadDeadline(accepted.Add(5 * time.Second))
	hello, err := tlsutil.ReadClientHello(c, 16<<10)
	if err != nil {
		c.Close()
		return Result{Reason: "hello_failed", Err: err}
	}
	return l.route.ServeConn(ctx, c, hello.Raw, accepted)
}

// nextResult waits for the next finished connection.
func (l *lb) nextResult(t *testing.T) Result {
	t.Helper()
	select {
	case r := <-l.results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no connection finished")
		return Result{}
	}
}

// dial opens a raw client conn: TLS with SNI testHost, or cleartext.
func (l *lb) dial(t *testing.T) net.Conn {
	t.Helper()
	if !l.tls {
		c, err := net.Dial("tcp", l.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	cfg := clientTLS(testHost)
	cfg.NextProtos = []string{"http/1.1"}
	c, err := tls.Dial("tcp", l.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// httpClient talks to the LB as testHost.
func (l *lb) httpClient() *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", l.addr)
		},
		TLSClientConfig: clientTLS(testHost),
	}
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (l *lb) url(path string) string {
	_, port, _ := net.SplitHostPort(l.addr)
	scheme := "http"
	if l.tls {
		scheme = "https"
	}
	return scheme + "://" + testHost + ":" + port + path
}

func (l *lb) wsURL(path string) string {
	return "ws" + strings.TrimPrefix(l.url(path), "http")
}

func (l *lb) wsDial(t *testing.T, ctx context.Context, path string) *websocket.Conn {
	t.Helper()
	hc := l.httpClient()
	t.Cleanup(hc.CloseIdleConnections)
	c, resp, err := websocket.Dial(ctx, l.wsURL(path), &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatalf("websocket dial: %v (resp %v)", err, resp)
	}
	c.SetReadLimit(4 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// readResponse reads one response and its body from a raw conn.
func readResponse(t *testing.T, br *bufio.Reader) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, body
}

// expectClosed asserts the peer closes (EOF or reset) soon.
func expectClosed(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	var rest []byte
	var err error
	if br != nil {
		rest, err = io.ReadAll(br)
	} else {
		rest, err = io.ReadAll(c)
	}
	if err != nil && !isReset(err) {
		t.Fatalf("connection not closed: %v", err)
	}
	if len(rest) > 0 {
		t.Fatalf("unexpected bytes before close: %q", rest)
	}
	c.Close() // ends the LB's lingering close at once
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "broken pipe"))
}

// pool builds a pool over addrs.
func pool(t testing.TB, pp balancer.ProxyProtocol, addrs ...string) *balancer.Pool {
	t.Helper()
	var bs []balancer.BackendConfig
	for _, a := range addrs {
		bs = append(bs, balancer.BackendConfig{Address: a})
	}
	p, err := balancer.NewPool(balancer.PoolConfig{Name: "test", Backends: bs, ProxyProtocol: pp, ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// refusedAddr is a loopback address that refuses connections for the whole test.
var refusedAddr = balancertest.RefusedAddr

// wsBackend is a coder/websocket echo server that records upgrade requests.
type wsBackend struct {
	addr string
	mu   sync.Mutex
	reqs []*http.Request
	n    int
}

func startWSBackend(t testing.TB, wrap func(net.Listener) net.Listener) *wsBackend {
	t.Helper()
	b := &wsBackend{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	if wrap != nil {
		ln = wrap(ln)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.reqs = append(b.reqs, r.Clone(context.Background()))
		b.n++
		b.mu.Unlock()
		if r.Header.Get("Upgrade") == "" {
			w.Header().Set("X-Backend", b.addr)
			_, _ = io.WriteString(w, "plain "+r.URL.Path+" from "+b.addr)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		ctx := r.Context()
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

func (b *wsBackend) requests() []*http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*http.Request(nil), b.reqs...)
}

// rawBackend runs handle for every accepted conn and records what each conn
// sent in total.
type rawBackend struct {
	addr    string
	mu      sync.Mutex
	accepts int
	got     [][]byte
	done    chan struct{} // one value per finished conn
}

func startRawBackend(t *testing.T, handle func(c *net.TCPConn, head []byte)) *rawBackend {
	t.Helper()
	b := &rawBackend{done: make(chan struct{}, 100)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.accepts++
			b.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := c.(*net.TCPConn)
				_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
				// Read the request head, answer, then record all until EOF.
				var all []byte
				buf := make([]byte, 64<<10)
				for !bytes.Contains(all, []byte("\r\n\r\n")) {
					n, err := tc.Read(buf)
					all = append(all, buf[:n]...)
					if err != nil {
						break
					}
				}
				if handle != nil && bytes.Contains(all, []byte("\r\n\r\n")) {
					handle(tc, all)
				}
				for {
					n, err := tc.Read(buf)
					all = append(all, buf[:n]...)
					if err != nil {
						break
					}
				}
				b.mu.Lock()
				b.got = append(b.got, all)
				b.mu.Unlock()
				b.done <- struct{}{}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return b
}

func (b *rawBackend) accepted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accepts
}

func (b *rawBackend) waitConn(t *testing.T) []byte {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		t.Fatal("backend conn did not finish")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.got[len(b.got)-1]
}

// headerValue extracts a header value from a raw request head.
func headerValue(head []byte, name string) string {
	for _, line := range strings.Split(string(head), "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

const validKey = "dGhlIHNhbXBsZSBub25jZQ=="

func upgradeHead(extra string) string {
	return "GET /ws HTTP/1.1\r\nHost: " + testHost + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + validKey + "\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n"
}

func contextWithState(r *http.Request, cs *connState) context.Context {
	return context.WithValue(r.Context(), connStateKey{}, cs)
}
