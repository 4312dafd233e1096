package l7

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"testing"
	"time"
)

// BenchmarkProxySmall is scripts/bench.sh's http-small in process: GET
// requests one at a time on one keep-alive TLS connection, each proxied to
// a backend that answers 19 bytes. The client and the backend parse by
// hand (no net/http), so allocs/op is sluice's own per request, but for
// the backend's few.
func BenchmarkProxySmall(b *testing.B) {
	body := "hello from backend\n"
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
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
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if err := skipHead(br); err != nil {
						return
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	l := startLB(b, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: pool(b, 0, ln.Addr().String())})
	cfg := clientTLS(testHost)
	cfg.NextProtos = []string{"http/1.1"}
	c, err := tls.Dial("tcp", l.addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("GET /hello HTTP/1.1\r\nHost: " + testHost + "\r\nUser-Agent: bench\r\n\r\n")
	br := bufio.NewReader(c)
	buf := make([]byte, len(body))
	b.ReportAllocs()
	for b.Loop() {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		n, err := contentLength(br)
		if err != nil || n != len(body) {
			b.Fatalf("response: length %d, %v", n, err)
		}
		if _, err := io.ReadFull(br, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// skipHead reads a request head up to its blank line.
func skipHead(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			return nil
		}
	}
}

// contentLength reads a response head and returns its Content-Length.
func contentLength(br *bufio.Reader) (int, error) {
	n := -1
	for first := true; ; first = false {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if first && !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
			return 0, io.ErrUnexpectedEOF
		}
		if len(line) <= 2 {
			return n, nil
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(k, []byte("Content-Length")) {
			n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
}
