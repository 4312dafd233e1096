// Command backends runs the servers behind the proxies in scripts/bench.sh, all
// in one process (separate from the load generator and from the proxy under
// test, so each side has its own file descriptors):
//
//	-l4   ADDR  the L4 bench protocol (below), after a TLS ClientHello record
//	-pp   ADDR  the same after a PROXY v1 or v2 header
//	-tls  ADDR  TLS server: handshake, echo one 64-byte message, close
//	-ws   ADDR  WebSocket echo server over cleartext TCP (what the proxies dial)
//	-wss  ADDR  the same over TLS (the "direct" target of the wss scenarios)
//	-http ADDR  HTTP/1.1 keep-alive server over cleartext TCP (what the proxies
//	            dial): GET /hello answers "hello from backend\n" (19 bytes)
//	-https ADDR the same over TLS, plus the files of -www under /static/ (the
//	            "direct" target of the http scenarios)
//
// The L4 bench protocol: the client sends one ClientHello (the proxy routes on
// it; the backend skips it), then commands of one op byte and a big-endian
// uint64 argument:
//
//	'U' n  the client sends n bytes; the backend answers one byte when all arrived
//	'D' n  the backend sends n bytes
//	'E' n  echo n-byte messages until EOF (ping-pong, idle connections)
//	'C' n  echo one n-byte message, then close (the backend closes first, so
//	       TIME_WAIT lands on the server side and client ports are not used up)
//
// "backends -gencert DIR" writes one ECDSA P-256 certificate for every proxy:
// DIR/cert.pem, DIR/key.pem and DIR/combined.pem (HAProxy's crt format).
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	var (
		l4Addr    = flag.String("l4", "", "L4 bench protocol listen address")
		ppAddr    = flag.String("pp", "", "L4 bench protocol after a PROXY v1/v2 header")
		tlsAddr   = flag.String("tls", "", "TLS echo-once listen address")
		wsAddr    = flag.String("ws", "", "WebSocket echo listen address (cleartext)")
		wssAddr   = flag.String("wss", "", "WebSocket echo listen address (TLS)")
		httpAddr  = flag.String("http", "", "HTTP/1.1 listen address (cleartext)")
		httpsAddr = flag.String("https", "", "HTTP/1.1 listen address (TLS), with -www under /static/")
		www       = flag.String("www", "", "directory served under /static/ by -https")
		cert      = flag.String("cert", "", "certificate PEM for -tls, -wss and -https")
		key       = flag.String("key", "", "key PEM for -tls, -wss and -https")
		gencert   = flag.String("gencert", "", "write cert.pem, key.pem, combined.pem to this directory and exit")
	)
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("backends: ")
	if *gencert != "" {
		if err := genCert(*gencert); err != nil {
			log.Fatal(err)
		}
		return
	}
	var tcfg *tls.Config
	if *tlsAddr != "" || *wssAddr != "" || *httpsAddr != "" {
		c, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		tcfg = &tls.Config{Certificates: []tls.Certificate{c}, SessionTicketsDisabled: true,
			NextProtos: []string{"http/1.1"}}
	}
	serve(*l4Addr, func(c net.Conn) { handleL4(c, false) })
	serve(*ppAddr, func(c net.Conn) { handleL4(c, true) })
	serve(*tlsAddr, func(c net.Conn) { handleTLS(tls.Server(c, tcfg)) })
	serve(*wsAddr, handleWS)
	serve(*wssAddr, func(c net.Conn) { handleWS(tls.Server(c, tcfg)) })
	serveHTTP(*httpAddr, nil, "")
	serveHTTP(*httpsAddr, tcfg, *www)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}

func serve(addr string, handle func(net.Conn)) {
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				log.Fatal(err)
			}
			go handle(c)
		}
	}()
}

// helloBody is the answer of GET /hello: the small proxied response of the
// http-small row.
var helloBody = []byte("hello from backend\n")

// serveHTTP runs a net/http server on addr (TLS if tcfg is set: HTTP/1.1
// only, as the proxies' listeners), answering /hello and, if www is set,
// serving its files under /static/.
func serveHTTP(addr string, tcfg *tls.Config, www string) {
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write(helloBody)
	})
	if www != "" {
		mux.Handle("/static/", http.StripPrefix("/static/", http.FileServer(http.Dir(www))))
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Hour,
		ErrorLog: log.New(io.Discard, "", 0),
		// No HTTP/2: the load generator and the proxies speak HTTP/1.1.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	if tcfg != nil {
		ln = tls.NewListener(ln, tcfg)
	}
	go func() { log.Fatal(srv.Serve(ln)) }()
}

// handleL4 serves the L4 bench protocol.
func handleL4(c net.Conn, proxyHeader bool) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
	if proxyHeader {
		if err := skipProxyHeader(br); err != nil {
			log.Printf("proxy header: %v", err)
			return
		}
	}
	if err := skipClientHello(br); err != nil {
		log.Printf("client hello: %v", err)
		return
	}
	// Answer the hello with one byte, as a TLS server answers with its
	// ServerHello; the load generator, like a TLS client, sends its command
	// only after it (sluice relies on that shape to retry a backend that
	// accepts and then resets before answering).
	if _, err := c.Write([]byte{'h'}); err != nil {
		return
	}
	var hdr [9]byte
	var buf []byte // 256 KiB for bulk transfers, only when one comes
	small := make([]byte, 64)
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint64(hdr[1:])
		if (hdr[0] == 'U' || hdr[0] == 'D') && buf == nil {
			buf = make([]byte, 256<<10)
		}
		switch hdr[0] {
		case 'U':
			for n > 0 {
				k := uint64(len(buf))
				if n < k {
					k = n
				}
				m, err := br.Read(buf[:k])
				if err != nil {
					return
				}
				n -= uint64(m)
			}
			if _, err := c.Write([]byte{'k'}); err != nil {
				return
			}
		case 'D':
			for n > 0 {
				k := uint64(len(buf))
				if n < k {
					k = n
				}
				if _, err := c.Write(buf[:k]); err != nil {
					return
				}
				n -= k
			}
		case 'E', 'C':
			if n == 0 || n > 64<<10 {
				return
			}
			if uint64(len(small)) < n {
				small = make([]byte, n)
			}
			for {
				if _, err := io.ReadFull(br, small[:n]); err != nil {
					return
				}
				if _, err := c.Write(small[:n]); err != nil {
					return
				}
				if hdr[0] == 'C' {
					return
				}
			}
		default:
			log.Printf("unknown op %q", hdr[0])
			return
		}
	}
}

// skipClientHello reads one TLS handshake message (the ClientHello), which
// may span several records.
func skipClientHello(br *bufio.Reader) error {
	var msg []byte
	for {
		var rh [5]byte
		if _, err := io.ReadFull(br, rh[:]); err != nil {
			return err
		}
		if rh[0] != 22 {
			return fmt.Errorf("not a handshake record: %x", rh)
		}
		rec := make([]byte, binary.BigEndian.Uint16(rh[3:]))
		if _, err := io.ReadFull(br, rec); err != nil {
			return err
		}
		msg = append(msg, rec...)
		if len(msg) >= 4 {
			need := 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
			if len(msg) >= need {
				return nil
			}
		}
	}
}

var v2sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// skipProxyHeader reads a PROXY v1 (text) or v2 (binary) header.
func skipProxyHeader(br *bufio.Reader) error {
	p, err := br.Peek(16)
	if err != nil {
		return err
	}
	if string(p[:6]) == "PROXY " {
		line, err := br.ReadSlice('\n')
		if err != nil || len(line) > 107 {
			return fmt.Errorf("bad v1 header %q: %v", line, err)
		}
		return nil
	}
	if string(p[:12]) != string(v2sig) || p[12]>>4 != 2 {
		return fmt.Errorf("no PROXY header: %x", p)
	}
	_, err = br.Discard(16 + int(binary.BigEndian.Uint16(p[14:])))
	return err
}

// handleTLS: handshake, echo one 64-byte message, close (with close_notify).
func handleTLS(c *tls.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var buf [64]byte
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		return
	}
	_, _ = c.Write(buf[:])
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// handleWS: a minimal RFC 6455 echo server. It answers the upgrade, echoes
// every data frame, answers a close frame with a close frame and closes the
// TCP connection (the server closes first, as RFC 6455 asks).
func handleWS(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var key string
	first := true
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		s := strings.TrimRight(string(line), "\r\n")
		if s == "" {
			break
		}
		if first {
			first = false
			if !strings.HasPrefix(s, "GET ") {
				_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				return
			}
			continue
		}
		if k, v, ok := strings.Cut(s, ":"); ok && strings.EqualFold(strings.TrimSpace(k), "Sec-WebSocket-Key") {
			key = strings.TrimSpace(v)
		}
	}
	if key == "" {
		_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return
	}
	h := sha1.Sum([]byte(key + wsGUID))
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(h[:]) + "\r\n\r\n"
	if _, err := io.WriteString(c, resp); err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	out := make([]byte, 0, 4096)
	var payload []byte
	for {
		var h2 [2]byte
		if _, err := io.ReadFull(br, h2[:]); err != nil {
			return
		}
		op := h2[0] & 0x0f
		masked := h2[1]&0x80 != 0
		n := uint64(h2[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		if n > 1<<20 {
			return
		}
		var mask [4]byte
		if masked {
			if _, err := io.ReadFull(br, mask[:]); err != nil {
				return
			}
		}
		if uint64(cap(payload)) < n {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(br, payload); err != nil {
			return
		}
		if masked {
			for i := range payload {
				payload[i] ^= mask[i&3]
			}
		}
		reply := op
		switch op {
		case 0, 1, 2: // continuation, text, binary: echo as is
		case 8: // close: answer it, then close
		case 9: // ping
			reply = 10
		default:
			continue
		}
		out = out[:0]
		out = append(out, 0x80|reply)
		switch {
		case n < 126:
			out = append(out, byte(n))
		case n < 1<<16:
			out = append(out, 126, byte(n>>8), byte(n))
		default:
			out = append(out, 127)
			out = binary.BigEndian.AppendUint64(out, n)
		}
		out = append(out, payload...)
		if _, err := c.Write(out); err != nil {
			return
		}
		if op == 8 {
			return
		}
	}
}

func genCert(dir string) error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "sluice bench"},
		DNSNames:              []string{"*.bench", "localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return err
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return err
	}
	cp := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kp := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
	for name, data := range map[string][]byte{
		"cert.pem": cp, "key.pem": kp, "combined.pem": append(append([]byte{}, cp...), kp...),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
