package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"
)

// target is one system under test: where each kind of traffic goes, and the
// process whose CPU, memory and descriptors are measured.
type target struct {
	name   string
	l4     string // L4 route (SNI l4.bench): bulk, connection rate, ping-pong, idle
	pp     string // L4 route with PROXY v2 to the backend (SNI pp.bench)
	ppSelf bool   // direct: the client writes the PROXY v2 header itself
	tls    string // TLS passthrough (SNI tls.bench) to a TLS backend
	wss    string // wss:// terminated by the proxy (SNI ws.bench)
	http   string // HTTP/1.1 over TLS terminated by the proxy, proxied to a backend (SNI http.bench)
	static string // the same, the proxy serving a file itself ("": it cannot)
	proc   procSet
}

func parseTarget(s string) (*target, error) {
	t := &target{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "name":
			t.name = v
		case "l4":
			t.l4 = v
		case "pp":
			t.pp = v
		case "ppself":
			t.ppSelf = true
		case "tls":
			t.tls = v
		case "wss":
			t.wss = v
		case "http":
			t.http = v
		case "static":
			t.static = v
		case "pid":
			if _, err := fmt.Sscan(v, &t.proc.root); err != nil {
				return nil, fmt.Errorf("pid %q: %v", v, err)
			}
		default:
			return nil, fmt.Errorf("unknown target key %q", k)
		}
	}
	if t.name == "" || t.proc.root == 0 {
		return nil, fmt.Errorf("target %q: name and pid are required", s)
	}
	return t, nil
}

const opTimeout = 5 * time.Second

var dialer = net.Dialer{Timeout: opTimeout, KeepAlive: -1}

// hellos holds one real ClientHello per SNI, made once by crypto/tls.
var hellos = map[string][]byte{}

func makeHellos() error {
	for _, sni := range []string{"l4.bench", "pp.bench"} {
		h, err := captureHello(sni)
		if err != nil {
			return err
		}
		hellos[sni] = h
	}
	return nil
}

// captureHello runs a crypto/tls client (default settings, like a current
// Go or browser client: ~1.5 KB with the post-quantum key share) against a
// pipe and keeps its first record.
func captureHello(sni string) ([]byte, error) {
	a, b := net.Pipe()
	go func() {
		_ = tls.Client(a, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
	}()
	defer b.Close()
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	var h [5]byte
	if _, err := io.ReadFull(b, h[:]); err != nil {
		return nil, err
	}
	rec := make([]byte, 5+int(binary.BigEndian.Uint16(h[3:])))
	copy(rec, h[:])
	if _, err := io.ReadFull(b, rec[5:]); err != nil {
		return nil, err
	}
	return rec, nil
}

// l4Preamble is what an L4 client sends first: (for direct PROXY tests, its
// own PROXY v2 header) and the ClientHello.
func l4Preamble(c net.Conn, sni string, ppSelf bool) []byte {
	var b []byte
	if ppSelf {
		b = appendProxyV2(b, c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr))
	}
	return append(b, hellos[sni]...)
}

func appendProxyV2(b []byte, src, dst *net.TCPAddr) []byte {
	b = append(b, "\r\n\r\n\x00\r\nQUIT\n"...)
	b = append(b, 0x21, 0x11, 0, 12) // v2 PROXY, TCP over IPv4, 12 bytes
	b = append(b, src.IP.To4()...)
	b = append(b, dst.IP.To4()...)
	b = binary.BigEndian.AppendUint16(b, uint16(src.Port))
	return binary.BigEndian.AppendUint16(b, uint16(dst.Port))
}

// dialL4 opens an L4 connection shaped like TLS: it sends the preamble,
// waits for the backend's one-byte answer to the hello (its stand-in for a
// ServerHello: a TLS client sends nothing more before it), then sends one
// command (op, n) and extra in one write.
func dialL4(addr, sni string, ppSelf bool, op byte, n uint64, extra []byte) (*net.TCPConn, error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	_ = tc.SetDeadline(time.Now().Add(opTimeout))
	if _, err := tc.Write(l4Preamble(tc, sni, ppSelf)); err != nil {
		tc.Close()
		return nil, err
	}
	var h [1]byte
	if _, err := io.ReadFull(tc, h[:]); err != nil {
		tc.Close()
		return nil, fmt.Errorf("no answer to the hello: %w", err)
	}
	if h[0] != 'h' {
		tc.Close()
		return nil, fmt.Errorf("%w to the hello: %q", errWrongAnswer, h[:])
	}
	b := binary.BigEndian.AppendUint64([]byte{op}, n)
	if _, err := tc.Write(append(b, extra...)); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

var msg64 = bytes.Repeat([]byte("0123456789abcdef"), 4)

// echoOnceClose: hello + 64-byte message; read the echo, then the backend's
// close (EOF), then close. One connection-rate operation.
func echoOnceClose(addr, sni string, ppSelf bool) error {
	c, err := dialL4(addr, sni, ppSelf, 'C', 64, msg64)
	if err != nil {
		return err
	}
	defer c.Close()
	var buf [65]byte
	if _, err := io.ReadFull(c, buf[:64]); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if n, err := c.Read(buf[:]); err != io.EOF {
		return fmt.Errorf("want EOF after the echo, got %d bytes, %v", n, err)
	}
	return nil
}

var tlsClientConfig = func(sni string) *tls.Config {
	return &tls.Config{
		ServerName:         sni,
		InsecureSkipVerify: true, // the cost under test is the proxy's, not the client's
		NextProtos:         []string{"http/1.1"},
		// The same key exchange for every server: Go's default would pick
		// X25519MLKEM768 on a Go server and X25519 on OpenSSL 3.0.
		CurvePreferences: []tls.CurveID{tls.X25519},
	}
}

// tlsEchoOnce: full TLS handshake with the backend through the passthrough
// route, one 64-byte echo, then the backend's close_notify and FIN.
func tlsEchoOnce(addr string) error {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	tc := tls.Client(c, tlsClientConfig("tls.bench"))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if _, err := tc.Write(msg64); err != nil {
		return err
	}
	var buf [65]byte
	if _, err := io.ReadFull(tc, buf[:64]); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if n, err := tc.Read(buf[:]); err != io.EOF {
		return fmt.Errorf("want EOF after the echo, got %d bytes, %v", n, err)
	}
	return nil
}

// wsConn is a minimal RFC 6455 client over TLS.
type wsConn struct {
	raw  net.Conn
	tc   *tls.Conn
	br   *bufio.Reader
	mask [4]byte
	out  []byte // the masked 64-byte binary frame
	in   []byte
}

// dialWSS: TCP, TLS handshake with the proxy, WebSocket upgrade.
func dialWSS(addr string) (*wsConn, error) { return dialWSSCache(addr, nil) }

// Session resumption (wss-resume): one ticket cache for the scenario, and
// how many handshakes resumed.
var (
	resumeCache    tls.ClientSessionCache
	resumed, fresh atomic.Int64
)

// wssOnceResume is wssOnce with a session cache: a reconnecting game client.
func wssOnceResume(addr string) error {
	w, err := dialWSSCache(addr, resumeCache)
	if err != nil {
		return err
	}
	defer w.raw.Close()
	if err := w.echo(); err != nil { // also reads the server's new session tickets
		return fmt.Errorf("echo: %w", err)
	}
	return w.closeHandshake()
}

func dialWSSCache(addr string, cache tls.ClientSessionCache) (*wsConn, error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	cfg := tlsClientConfig("ws.bench")
	cfg.ClientSessionCache = cache
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if cache != nil {
		if tc.ConnectionState().DidResume {
			resumed.Add(1)
		} else {
			fresh.Add(1)
		}
	}
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET /ws HTTP/1.1\r\nHost: ws.bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(tc, req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(tc, 2048)
	line, err := br.ReadSlice('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("upgrade response: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 101")) {
		c.Close()
		return nil, fmt.Errorf("upgrade refused: %q", bytes.TrimSpace(line))
	}
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	want := base64.StdEncoding.EncodeToString(h[:])
	ok := false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("upgrade response: %w", err)
		}
		s := strings.TrimSpace(string(line))
		if s == "" {
			break
		}
		if k, v, found := strings.Cut(s, ":"); found && strings.EqualFold(k, "Sec-WebSocket-Accept") {
			ok = strings.TrimSpace(v) == want
		}
	}
	if !ok {
		c.Close()
		return nil, errors.New("bad Sec-WebSocket-Accept")
	}
	w := &wsConn{raw: c, tc: tc, br: br, in: make([]byte, 66)}
	_, _ = rand.Read(w.mask[:])
	w.out = append(w.out, 0x82, 0x80|64)
	w.out = append(w.out, w.mask[:]...)
	for i, b := range msg64 {
		w.out = append(w.out, b^w.mask[i&3])
	}
	return w, nil
}

// echo sends one 64-byte binary message and reads its echo.
func (w *wsConn) echo() error {
	if _, err := w.tc.Write(w.out); err != nil {
		return err
	}
	if _, err := io.ReadFull(w.br, w.in); err != nil {
		return err
	}
	if w.in[0] != 0x82 || w.in[1] != 64 {
		return fmt.Errorf("unexpected frame header %x", w.in[:2])
	}
	return nil
}

// closeHandshake sends a close frame, reads the answer and the server's
// close (EOF); the backend closes TCP first, as RFC 6455 asks.
func (w *wsConn) closeHandshake() error {
	f := []byte{0x88, 0x82, w.mask[0], w.mask[1], w.mask[2], w.mask[3], 0x03 ^ w.mask[0], 0xe8 ^ w.mask[1]}
	if _, err := w.tc.Write(f); err != nil {
		return err
	}
	var b [4]byte
	if _, err := io.ReadFull(w.br, b[:]); err != nil {
		return fmt.Errorf("close frame: %w", err)
	}
	if b[0] != 0x88 {
		return fmt.Errorf("want a close frame, got %x", b)
	}
	if _, err := w.br.ReadByte(); err != io.EOF {
		return fmt.Errorf("want EOF after the close frame, got %v", err)
	}
	return nil
}

// wssOnce: one wss:// session: handshake, upgrade, one echo, close.
func wssOnce(addr string) error {
	w, err := dialWSS(addr)
	if err != nil {
		return err
	}
	defer w.raw.Close()
	if err := w.echo(); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	return w.closeHandshake()
}

// abort closes a connection with a reset (SO_LINGER 0): tearing down
// thousands of idle connections leaves no TIME_WAIT anywhere.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
