package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"sluice/tlsutil"
)

// dualWSBackend is a WebSocket echo server that speaks TLS (its own
// certificate) or cleartext on one port, by the first byte: the same backend
// serves a route in mode "l4" (it terminates TLS) and in mode "l7" (sluice
// does). It reports each upgrade request's headers.
func dualWSBackend(t *testing.T, name string) (addr string, cert *x509.Certificate, reqs chan http.Header) {
	t.Helper()
	c, err := tlsutil.SelfSigned([]string{name}, time.Hour)
	must(t, err)
	reqs = make(chan http.Header, 64)
	ln := &sniffListener{Listener: listenTCP(t), cfg: &tls.Config{Certificates: []tls.Certificate{c}, NextProtos: []string{"http/1.1"}}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case reqs <- r.Header.Clone():
		default:
		}
		if r.Header.Get("Upgrade") == "" {
			io.WriteString(w, "plain "+r.URL.Path) // a plain request gets a plain answer
			return
		}
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		for {
			typ, msg, err := ws.Read(r.Context())
			if err != nil {
				return
			}
			if err := ws.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String(), c.Leaf, reqs
}

type sniffListener struct {
	net.Listener
	cfg *tls.Config
}

func (l *sniffListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		c.Close()
		return l.Accept()
	}
	c.SetReadDeadline(time.Time{})
	pc := tlsutil.NewPrefixConn(c, b)
	if b[0] == 0x16 {
		return tls.Server(pc, l.cfg), nil
	}
	return pc, nil
}

// wsDial opens wss://host/path through sluice at addr, sending SNI host.
func wsDial(t *testing.T, addr, host, path string) (*websocket.Conn, *http.Response) {
	t.Helper()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
		TLSClientConfig: &tls.Config{ServerName: host, InsecureSkipVerify: true},
	}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, "wss://"+host+path, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatalf("wss://%s%s via %s: %v", host, path, addr, err)
	}
	return ws, resp
}

func wsEcho(t *testing.T, ws *websocket.Conn, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	must(t, ws.Write(ctx, websocket.MessageText, []byte(msg)))
	_, got, err := ws.Read(ctx)
	must(t, err)
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

// The same route switched between mode "l4" (the backend terminates TLS: the
// client sees its certificate) and mode "l7" (sluice terminates TLS and
// proxies the upgrade with forwarded headers) serves wss:// both ways; the
// config differs by the one mode line.
func TestModeSwitchL4L7WSS(t *testing.T) {
	t.Parallel()
	addr, backendCert, reqs := dualWSBackend(t, "game.test")
	for _, mode := range []string{"l4", "l7"} {
		t.Run(mode, func(t *testing.T) {
			l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
[routes.game]
listener = "public"
sni = ["game.test"]
mode = %q
pool = "ws"
[pools.ws]
backends = [{ address = %q }]
`, mode, addr))
			ws, resp := wsDial(t, l.addr("public").String(), "game.test", "/ws")
			defer ws.CloseNow()
			wsEcho(t, ws, "hello over "+mode)
			leaf := resp.TLS.PeerCertificates[0]
			h := <-reqs
			switch mode {
			case "l4":
				if !leaf.Equal(backendCert) {
					t.Fatal("l4: the client did not see the backend's own certificate")
				}
				if h.Get("X-Forwarded-Proto") != "" {
					t.Fatal("l4: sluice must not touch the stream")
				}
			case "l7":
				if leaf.Equal(backendCert) {
					t.Fatal("l7: the client saw the backend's certificate: TLS was not terminated")
				}
				if err := leaf.VerifyHostname("game.test"); err != nil {
					t.Fatalf("l7: sluice's certificate does not cover the SNI: %v", err)
				}
				if h.Get("X-Forwarded-Proto") != "https" || h.Get("X-Real-Ip") == "" || h.Get("X-Forwarded-For") == "" {
					t.Fatalf("l7: forwarded headers missing: %v", h)
				}
			}
			ws.Close(websocket.StatusNormalClosure, "")
		})
	}
}

// wss://IP:port sends no SNI: the default route answers, with a certificate
// (the listener's default), instead of ERR_SSL_PROTOCOL_ERROR.
func TestL7NoSNIGetsDefaultCertificate(t *testing.T) {
	t.Parallel()
	addr, _, _ := dualWSBackend(t, "game.test")
	dir := t.TempDir()
	certFile, keyFile := writeCert(t, dir, "default.test")
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
default_route = "game"
cert = %q
key = %q
[routes.game]
listener = "public"
sni = ["game.test"]
mode = "l7"
pool = "ws"
[pools.ws]
backends = [{ address = %q }]
`, certFile, keyFile, addr))
	ws, resp := wsDial(t, l.addr("public").String(), "127.0.0.1", "/ws") // an IP: no SNI is sent
	defer ws.CloseNow()
	wsEcho(t, ws, "no sni")
	if got := resp.TLS.PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "default.test" {
		t.Fatalf("no-SNI client got certificate for %v, want the listener default", got)
	}
	// With SNI, the route's own (self-signed) certificate.
	ws2, resp2 := wsDial(t, l.addr("public").String(), "game.test", "/ws")
	defer ws2.CloseNow()
	if err := resp2.TLS.PeerCertificates[0].VerifyHostname("game.test"); err != nil {
		t.Fatal(err)
	}
}

// writeCert writes a self-signed certificate and key as PEM files.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	c, err := tlsutil.SelfSigned([]string{name}, time.Hour)
	must(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	must(t, err)
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	must(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644))
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	return certFile, keyFile
}

// A certificate file that is missing, or a key that does not match its
// certificate, is a config error naming the key path.
func TestL7CertificateErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certA, _ := writeCert(t, dir, "a.test")
	_, keyB := writeCert(t, dir, "b.test")
	for name, tc := range map[string]struct{ cert, key, want string }{
		"missing":  {filepath.Join(dir, "nope.pem"), filepath.Join(dir, "nope-key.pem"), "no such file"},
		"mismatch": {certA, keyB, "private key does not match public key"},
		"only one": {certA, "", "cert and key must be set together"},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := DecodeConfig(fmt.Appendf(nil, `
[listeners.public]
address = "127.0.0.1:0"
[routes.game]
listener = "public"
sni = ["a.test"]
mode = "l7"
pool = "p"
cert = %q
key = %q
[pools.p]
backends = [{ address = "127.0.0.1:9" }]
`, tc.cert, tc.key))
			must(t, err)
			_, err = c.Validate()
			if err == nil || !strings.Contains(err.Error(), "routes.game.cert: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want routes.game.cert: ...%s", err, tc.want)
			}
		})
	}
}

// A cleartext listener (tls = false) routes by Host, for ws:// during
// development; a Host no route serves gets 421; redirect_https sends
// everything to https.
func TestCleartextListener(t *testing.T) {
	t.Parallel()
	addr, _, reqs := dualWSBackend(t, "game.test")
	l := startLB(t, fmt.Sprintf(`
[listeners.dev]
address = "127.0.0.1:0"
tls = false
[listeners.redirect]
address = "127.0.0.1:0"
tls = false
redirect_https = true
[routes.game]
listener = "dev"
sni = ["game.test"]
mode = "l7"
pool = "ws"
[pools.ws]
backends = [{ address = %q }]
`, addr))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", l.addr("dev").String())
	}}
	defer tr.CloseIdleConnections()
	ws, _, err := websocket.Dial(ctx, "ws://game.test/ws", &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	must(t, err)
	wsEcho(t, ws, "ws:// in development")
	ws.Close(websocket.StatusNormalClosure, "")
	if h := <-reqs; h.Get("X-Forwarded-Proto") != "http" {
		t.Fatalf("X-Forwarded-Proto %q, want http", h.Get("X-Forwarded-Proto"))
	}

	c := dial(t, l.addr("dev"))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	must(t, err)
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("unknown Host: %d, want 421", resp.StatusCode)
	}

	r := dial(t, l.addr("redirect"))
	io.WriteString(r, "GET /play?room=4 HTTP/1.1\r\nHost: game.test\r\n\r\n")
	resp, err = http.ReadResponse(bufio.NewReader(r), nil)
	must(t, err)
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "https://game.test/play?room=4" {
		t.Fatalf("redirect_https: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// An expired certificate, or one expiring within 7 days, loads with a
// warning naming its server names and NotAfter (RELIABILITY T22, G8).
func TestCertificateExpiryWarning(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c, err := tlsutil.SelfSigned([]string{"soon.test"}, 72*time.Hour)
	must(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	must(t, err)
	certFile, keyFile := filepath.Join(dir, "soon.pem"), filepath.Join(dir, "soon-key.pem")
	must(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644))
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	cfg, err := DecodeConfig(fmt.Appendf(nil, `
[listeners.public]
address = "127.0.0.1:0"
[routes.game]
listener = "public"
sni = ["soon.test"]
mode = "l7"
pool = "p"
cert = %q
key = %q
[pools.p]
backends = [{ address = "127.0.0.1:9" }]
`, certFile, keyFile))
	must(t, err)
	rt, err := cfg.Validate()
	must(t, err)
	defer rt.Close()
	found := false
	for _, w := range rt.Warnings {
		if strings.Contains(w, "soon.test") && strings.Contains(w, "expires at "+c.Leaf.NotAfter.UTC().Format(time.RFC3339)) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no expiry warning in %q", rt.Warnings)
	}
}
