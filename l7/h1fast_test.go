package l7

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"sluice/balancer"
)

// rawHead reads a request head as it came (http.Request keeps no field
// order).
func rawHead(br *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		b.WriteString(line)
		if line == "\r\n" {
			return b.String(), nil
		}
	}
}

// fastAnswers is what startAnswersBackend answers, by path: every framing
// a backend may use, and broken heads; fastCloses, the paths after which it
// closes (close-delimited, HTTP/1.0, broken, cut short).
var (
	fastAnswers = map[string]string{
		"/close":   "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello until close",
		"/chunked": "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
		"/named":   "HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
		"/head":    "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
		"/empty":   "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
		"/http10":  "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold",
		"/early":   "HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"/bad":     "HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
		"/twocl":   "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
		"/fold":    "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
		"/te":      "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
		"/short":   "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
	}
	fastCloses = map[string]bool{"/close": true, "/http10": true, "/bad": true, "/twocl": true,
		"/fold": true, "/te": true, "/short": true}
)

// startAnswersBackend answers each request with fastAnswers.
func startAnswersBackend(t *testing.T) *scriptBackend {
	return startScriptBackend(t, answerUntil(func(r *http.Request) (string, bool) {
		return fastAnswers[r.URL.Path], fastCloses[r.URL.Path]
	}))
}

// The fast path answers what a backend sends as net/http's client
// (http.ReadResponse, the oracle here) reads it, and the connection goes on
// after each, whatever the backend's framing.
func TestFastPathResponses(t *testing.T) {
	checkLeaks(t)
	be := startAnswersBackend(t)
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	c := l.dial(t)
	defer c.Close()
	br := bufio.NewReader(c)
	do := func(method, path string) (*http.Response, string) {
		t.Helper()
		if _, err := io.WriteString(c, method+" "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(method, "https://x"+path, nil)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: body: %v", method, path, err)
		}
		return resp, string(body)
	}
	if resp, body := do("GET", "/close"); resp.StatusCode != 200 || body != "hello until close" || resp.ContentLength != -1 || resp.Close {
		t.Fatalf("close-delimited: %d %q length %d close %v", resp.StatusCode, body, resp.ContentLength, resp.Close)
	}
	if resp, body := do("GET", "/chunked"); body != "hello world" || resp.Trailer.Get("X-Sum") != "42" {
		t.Fatalf("chunked: %q trailer %v", body, resp.Trailer)
	}
	if resp, body := do("GET", "/named"); body != "ok" || resp.Header.Get("X-Secret") != "" || resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("Date") == "" {
		t.Fatalf("hop-by-hop: %q %v", body, resp.Header)
	}
	if resp, body := do("HEAD", "/head"); resp.StatusCode != 200 || resp.ContentLength != 10 || body != "" {
		t.Fatalf("HEAD: %d length %d %q", resp.StatusCode, resp.ContentLength, body)
	}
	if resp, body := do("GET", "/empty"); resp.StatusCode != 204 || body != "" || resp.Header.Get("X-A") != "b" {
		t.Fatalf("204: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, body := do("GET", "/http10"); resp.StatusCode != 200 || body != "old" || resp.ProtoMinor != 1 {
		t.Fatalf("HTTP/1.0 backend: %d %q %s", resp.StatusCode, body, resp.Proto)
	}
	for _, p := range []string{"/bad", "/twocl", "/fold", "/te"} {
		if resp, _ := do("GET", p); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s: %d, want 502", p, resp.StatusCode)
		}
	}
	if resp, body := do("GET", "/named"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after the 502s: %d %q", resp.StatusCode, body)
	}
}

// Requests the fast path does not take go to net/http on the same
// connection, in order: the first fast ones keep the client's field order,
// the rest arrive sorted by net/http.
func TestFastPathHandsOff(t *testing.T) {
	checkLeaks(t)
	heads := make(chan string, 8)
	be := startScriptBackend(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			head, err := rawHead(br)
			if err != nil {
				return
			}
			r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
			if err != nil {
				return
			}
			body := ""
			if n := r.ContentLength; n > 0 {
				b := make([]byte, n)
				if _, err := io.ReadFull(br, b); err != nil {
					return
				}
				body = string(b)
			}
			heads <- head
			msg := r.Method + " " + r.URL.RequestURI() + " " + body
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(msg))+"\r\n\r\n"+msg)
		}
	})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	c := l.dial(t)
	defer c.Close()
	br := bufio.NewReader(c)
	// Three fast requests pipelined in one write (one with a body), then
	// one with a chunked body, then one that would be fast.
	reqs := "GET /a?x=1 HTTP/1.1\r\nHost: x\r\nZed: 1\r\nConnection: keep-alive\r\nAlpha: 2\r\nX-Forwarded-For: 192.0.2.7\r\n\r\n" +
		"HEAD /b HTTP/1.1\r\nHost: x\r\nZed: 1\r\nAlpha: 2\r\n\r\n" +
		"POST /p HTTP/1.1\r\nHost: x\r\nZed: 1\r\nAlpha: 2\r\nContent-Length: 4\r\n\r\nbody" +
		"POST /c HTTP/1.1\r\nHost: x\r\nZed: 1\r\nAlpha: 2\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n" +
		"GET /d HTTP/1.1\r\nHost: x\r\nZed: 1\r\nAlpha: 2\r\n\r\n"
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"GET /a?x=1 ", "", "POST /p body", "POST /c body", "GET /d "} {
		method := "GET"
		if want == "" {
			method = "HEAD"
		}
		req, _ := http.NewRequest(method, "https://x/", nil)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
		}
	}
	for i, fast := range []bool{true, true, true, false, false} {
		head := <-heads
		zed, alpha := strings.Index(head, "Zed: 1"), strings.Index(head, "Alpha: 2")
		if zed < 0 || alpha < 0 || (zed < alpha) != fast {
			t.Fatalf("request %d (fast %v): field order in\n%s", i, fast, head)
		}
		if strings.Contains(head, "Connection:") || !strings.Contains(head, "X-Forwarded-Proto: https\r\n") || !strings.Contains(head, "X-Forwarded-Host: x\r\n") {
			t.Fatalf("request %d: forwarding headers in\n%s", i, head)
		}
		if i == 0 && !strings.Contains(head, "X-Forwarded-For: 192.0.2.7, 127.0.0.1\r\n") {
			t.Fatalf("X-Forwarded-For in\n%s", head)
		}
	}
}

// FuzzFastResponseHead checks the fast path's response head parser against
// net/http's: a head it accepts, http.ReadResponse accepts too, with the
// same status, body framing and length, and every field it passes on.
func FuzzFastResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n0\r\n\r\n",
		"HTTP/1.0 204 No Content\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 999\nX:  y \n\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, b []byte, head bool) {
		var r h1res
		if err := r.read(bufio.NewReaderSize(bytes.NewReader(b), 16), head); err != nil {
			return
		}
		method := "GET"
		if head {
			method = "HEAD"
		}
		req, _ := http.NewRequest(method, "http://x/", nil)
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), req)
		if err != nil {
			t.Fatalf("accepted what net/http refuses (%v): %q", err, b)
		}
		if resp.StatusCode != r.code {
			t.Fatalf("status %d, net/http %d: %q", r.code, resp.StatusCode, b)
		}
		switch r.frame {
		case bodyLength:
			if resp.ContentLength != r.cl {
				t.Fatalf("length %d, net/http %d: %q", r.cl, resp.ContentLength, b)
			}
		case bodyChunked:
			if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
				t.Fatalf("chunked, net/http %v: %q", resp.TransferEncoding, b)
			}
		case bodyToClose:
			if resp.ContentLength != -1 || !resp.Close {
				t.Fatalf("until close, net/http length %d close %v: %q", resp.ContentLength, resp.Close, b)
			}
		}
		if r.frame != bodyToClose && r.code >= 200 && r.reuse == resp.Close {
			t.Fatalf("reuse %v, net/http close %v: %q", r.reuse, resp.Close, b)
		}
		out := string(r.appendHead(nil, nil, nil))
		for _, fv := range r.fields {
			v := string(r.at(fv[1]))
			if strings.ContainsAny(v, "\r\n") {
				t.Fatalf("field value %q with a line end: %q", v, b)
			}
		}
		if strings.Count(out, "\r\n\r\n") > 0 {
			t.Fatalf("an empty line inside the head: %q from %q", out, b)
		}
	})
}

// The fast path sends a backend what net/http's path sends for the same
// request, but for the order of the fields: each request below goes
// through a route the fast path serves and through one it may not
// (slowPaths), and the two requests the backend receives must match field
// for field once names are canonical and the fields sorted.
func TestFastPathSendsWhatNetHTTPSends(t *testing.T) {
	checkLeaks(t)
	got := make(chan string, 1)
	be := recordingBackend(t, got, false, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	fast := startLB(t, RouteConfig{Name: "fast", TLS: serverTLS(), Locations: []Location{
		{Path: "/", Pool: pool(t, balancer.ProxyNone, be.addr), Headers: routeHeaders}}})
	slow := startLB(t, RouteConfig{Name: "slow", TLS: serverTLS(), Locations: []Location{
		{Path: "/", Pool: pool(t, balancer.ProxyNone, be.addr), Headers: routeHeaders}}, slowPaths: true})
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a/b?q=1&r=%20x HTTP/1.1\r\nHost: x:443\r\nUser-Agent: ua\r\nAccept: */*\r\nAccept: text/html\r\n\r\n",
		"GET /a? HTTP/1.1\r\nhost: x\r\nx-lower: 1\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
		"GET /a?x;y HTTP/1.1\r\nHost: x\r\n\r\n",
		"HEAD /h HTTP/1.1\r\nHost: x\r\nTe: trailers, gzip\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\n\r\n",
		"GET /f HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2, 192.0.2.3\r\nForwarded: for=1\r\nX-Real-Ip: 9.9.9.9\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: http\r\n\r\n",
		"GET /u HTTP/1.1\r\nHost: x\r\nUpgrade-Insecure-Requests: 1\r\nProxy-Authorization: Basic eA==\r\nTe: gzip\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
		"POST /e HTTP/1.1\r\nHost: x\r\n\r\n",
		"DELETE /d HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
		"OPTIONS /o HTTP/1.1\r\nHost: x\r\nAccess-Control-Request-Method: POST\r\nOrigin: https://game.example\r\n\r\n",
		"GET /sp HTTP/1.1\r\nHost: x\r\nX-A:  padded \t\r\nX-Empty:\r\n\r\n",
	} {
		var sent [2]string
		for i, l := range []*lb{fast, slow} {
			c := l.dial(t)
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%q: %v %v", req, resp, err)
			}
			c.Close()
			sent[i] = <-got
		}
		if sent[0] != sent[1] {
			t.Errorf("%q:\nfast path sent\n%s\nnet/http sent\n%s", req, sent[0], sent[1])
		}
	}
	// One: "/a?x;y" (a ';' in the query is net/http's to refuse).
	if n := fast.route.handoffs.Load(); n != 1 {
		t.Errorf("%d connections went to net/http on the fast route, want 1", n)
	}
}

// Every response reaches the request it answers, whatever the backends do
// between requests: 8 clients (net/http's) send 150 requests each over
// keep-alive connections, GETs and small POSTs, to two backends that
// answer with a random framing (length, chunked, until close), sometimes
// announce Connection: close and sometimes close an idle connection
// without a word (a stale pooled connection for the next request; the
// POSTs carry an Idempotency-Key, so that they may be sent again too).
func TestFastPathNoCrossedResponses(t *testing.T) {
	checkLeaks(t)
	var seq atomic.Int64
	serve := func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			body, _ := io.ReadAll(r.Body)
			id := r.URL.Query().Get("id") + "/" + string(body)
			var resp string
			n := seq.Add(1)
			switch n % 5 {
			case 0:
				resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + strconv.FormatInt(int64(len(id)), 16) + "\r\n" + id + "\r\n0\r\n\r\n"
			case 1:
				resp = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: " + strconv.Itoa(len(id)) + "\r\n\r\n" + id
			case 2:
				resp = "HTTP/1.1 200 OK\r\n\r\n" + id // until close
			default:
				resp = "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(id)) + "\r\n\r\n" + id
			}
			if _, err := io.WriteString(c, resp); err != nil || n%5 == 1 || n%5 == 2 || n%7 == 3 {
				return // n%7 == 3: a stale conn once pooled
			}
		}
	}
	be1, be2 := startScriptBackend(t, serve), startScriptBackend(t, serve)
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be1.addr, be2.addr)})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for client := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := l.httpClient()
			defer hc.CloseIdleConnections()
			for i := range 150 {
				id := strconv.Itoa(client) + "-" + strconv.Itoa(i)
				var resp *http.Response
				var err error
				body := ""
				if i%3 == 0 {
					// Idempotency-Key: replayable on a stale conn, as a GET.
					body = "b" + id
					req, _ := http.NewRequest("POST", l.url("/x?id="+id), strings.NewReader(body))
					req.Header.Set("Idempotency-Key", id)
					resp, err = hc.Do(req)
				} else {
					resp, err = hc.Get(l.url("/x?id=" + id))
				}
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || string(got) != id+"/"+body {
					errs <- fmt.Errorf("request %s: %d %q %v", id, resp.StatusCode, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// What the client receives from the fast path is what net/http's path
// gives it, but for the framing fields, Date and the Content-Type net/http
// guesses when the backend sent none: each response below comes through a
// route the fast path serves and through one it cannot, and net/http's
// client compares them.
func TestFastPathAnswersWhatNetHTTPAnswers(t *testing.T) {
	checkLeaks(t)
	responses := []string{
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nCache-Control: no-store\r\nVary: Origin\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=60\r\n\r\n",
		"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot found",
		"HTTP/1.1 200 OK\r\nConnection: X-Foo, keep-alive\r\nX-Foo: secret\r\nX-Bar: kept\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nTe: trailers\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 4\r\n\r\nhtml",
		"HTTP/1.1 200 OK\r\nX-U: caf\xc3\xa9\r\nX-Empty:\r\nX-Pad:   sp  \r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nuntil close",
		"HTTP/1.1 299 Custom\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
	}
	be := startScriptBackend(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			i, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
			resp := responses[i]
			if _, err := io.WriteString(c, resp); err != nil || !strings.Contains(resp, "Length") && !strings.Contains(resp, "chunked") {
				return // until close
			}
		}
	})
	fast := startLB(t, RouteConfig{Name: "fast", TLS: serverTLS(), Locations: []Location{
		{Path: "/", Pool: pool(t, balancer.ProxyNone, be.addr), Headers: routeHeaders}}})
	slow := startLB(t, RouteConfig{Name: "slow", TLS: serverTLS(), Locations: []Location{
		{Path: "/", Pool: pool(t, balancer.ProxyNone, be.addr), Headers: routeHeaders}}, slowPaths: true})
	skip := map[string]bool{"Date": true, "Content-Length": true, "Transfer-Encoding": true}
	for i, raw := range responses {
		for _, method := range []string{"GET", "HEAD"} {
			var got [2]string
			for k, l := range []*lb{fast, slow} {
				c := l.dial(t)
				if _, err := io.WriteString(c, method+" /"+strconv.Itoa(i)+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				req, _ := http.NewRequest(method, "https://x/", nil)
				resp, err := http.ReadResponse(bufio.NewReader(c), req)
				if err != nil {
					t.Fatalf("%d %s: %v", i, method, err)
				}
				body, err := io.ReadAll(resp.Body)
				c.Close()
				if err != nil {
					t.Fatalf("%d %s: body: %v", i, method, err)
				}
				var fields []string
				for name, vv := range resp.Header {
					if skip[name] || name == "Content-Type" && !strings.Contains(raw, "Content-Type") {
						continue
					}
					for _, v := range vv {
						fields = append(fields, name+": "+v)
					}
				}
				slices.Sort(fields)
				got[k] = resp.Status + "\n" + strings.Join(fields, "\n") + "\n" + string(body) + "\n" + fmt.Sprint(resp.Trailer)
			}
			if got[0] != got[1] {
				t.Errorf("%q %s:\nfast path answered\n%s\nnet/http answered\n%s", raw, method, got[0], got[1])
			}
		}
	}
	if n := fast.route.handoffs.Load(); n != 0 {
		t.Errorf("%d connections went to net/http on the fast route", n)
	}
}

// routeHeaders are the fast-path comparisons' location headers, on both
// routes: one the backends' answers do not have, one they do (replaced),
// and Vary (added to).
var routeHeaders = map[string]string{"X-Route": "r", "cache-control": "max-age=5", "Vary": "Accept-Encoding"}

// recordingBackend sends got each request it reads, as text (method,
// target, Host, with withLength its Content-Length, the fields sorted, the
// body), and answers each with answer.
func recordingBackend(t *testing.T, got chan<- string, withLength bool, answer string) *scriptBackend {
	return startScriptBackend(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			body, _ := io.ReadAll(r.Body)
			line := r.Method + " " + r.RequestURI + " " + r.Host
			if withLength {
				line += " " + strconv.FormatInt(r.ContentLength, 10)
			}
			got <- line + "\n" + sortedFields(r.Header) + "\n" + string(body)
			if _, err := io.WriteString(c, answer); err != nil {
				return
			}
		}
	})
}

// sortedFields is h's fields as "Name: value" lines, sorted, without those
// named in skip.
func sortedFields(h http.Header, skip ...string) string {
	var keys []string
	for k, vv := range h {
		if slices.Contains(skip, k) {
			continue
		}
		for _, v := range vv {
			keys = append(keys, k+": "+v)
		}
	}
	slices.Sort(keys)
	return strings.Join(keys, "\n")
}
