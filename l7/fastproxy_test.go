package l7

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"reflect"
	"strings"
	"testing"
)

// captureTransport records the request ReverseProxy would send, as
// http.Transport writes it (Request.Write: no extra headers with
// DisableCompression), and answers 204.
type captureTransport struct{ sent bytes.Buffer }

func (c *captureTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if err := r.Write(&c.sent); err != nil {
		return nil, err
	}
	return &http.Response{StatusCode: 204, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

// What serveFast writes to the backend is what ReverseProxy with rewrite
// sent before it (parsed, so that header order does not count).
func TestWriteRequestMatchesReverseProxy(t *testing.T) {
	heads := []string{
		"GET /hello HTTP/1.1\r\nHost: game.example.com\r\nUser-Agent: sluice-bench\r\nAccept: */*\r\n\r\n",
		"GET /a/b?room=7&x=%41 HTTP/1.1\r\nHost: game.example.com:8443\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n" +
			"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nForwarded: for=1.2.3.4\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n" +
			"Te: gzip, trailers\r\nProxy-Authorization: x\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
		"GET /q?a=1;b=2&c=%zz HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /api HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
		"POST /empty HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n",
		"HEAD /x HTTP/1.1\r\nHost: h\r\nUser-Agent: a\r\nUser-Agent: b\r\n\r\n",
		"PUT /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	}
	for _, head := range heads {
		name := head[:strings.Index(head, " HTTP/")]
		t.Run(name, func(t *testing.T) {
			parse := func() *http.Request {
				in, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
				if err != nil {
					t.Fatal(err)
				}
				cs := &connState{client: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 5555}, ip: "192.0.2.9", tls: true}
				in = in.WithContext(context.WithValue(context.Background(), connStateKey{}, cs))
				rt := &Route{requestBuffer: DefaultRequestBufferBytes, maxBody: DefaultMaxBodyBytes}
				if !rt.readBody(httptest.NewRecorder(), in, cs) {
					t.Fatal("readBody refused")
				}
				return in
			}
			in := parse()
			var fast bytes.Buffer
			bw := bufio.NewWriter(&fast)
			if err := writeRequest(bw, in, stateFrom(in.Context())); err != nil {
				t.Fatal(err)
			}
			bw.Flush()

			ct := &captureTransport{}
			p := &proxy{}
			rp := &httputil.ReverseProxy{Rewrite: p.rewrite, Transport: ct}
			rp.ServeHTTP(httptest.NewRecorder(), parse())

			fastText, rpText := fast.String(), ct.sent.String()
			got, err := http.ReadRequest(bufio.NewReader(&fast))
			if err != nil {
				t.Fatalf("fast: %v\n%s", err, fast.String())
			}
			want, err := http.ReadRequest(bufio.NewReader(&ct.sent))
			if err != nil {
				t.Fatalf("reverse proxy: %v\n%s", err, ct.sent.String())
			}
			gb, _ := io.ReadAll(got.Body)
			wb, _ := io.ReadAll(want.Body)
			if got.Method != want.Method || got.RequestURI != want.RequestURI || got.Host != want.Host ||
				got.ContentLength != want.ContentLength || !reflect.DeepEqual(got.TransferEncoding, want.TransferEncoding) ||
				!reflect.DeepEqual(got.Header, want.Header) || !bytes.Equal(gb, wb) {
				t.Fatalf("fast:\n%s\nreverse proxy:\n%s", fastText, rpText)
			}
		})
	}
}

func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream": true, "Text/Event-Stream; charset=utf-8": true, " text/event-stream ;x=1": true,
		"text/event-streamx": false, "text/html": false, "": false,
	} {
		if isEventStream(ct) != want {
			t.Errorf("isEventStream(%q) = %v", ct, !want)
		}
	}
}
