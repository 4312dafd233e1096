package tlsutil

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestWriteAlert pins the record bytes and that a crypto/tls client
// reports the alert (RELIABILITY T2).
func TestWriteAlert(t *testing.T) {
	var b bytes.Buffer
	if err := WriteAlert(&b, AlertUnrecognizedName); err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70}; !bytes.Equal(b.Bytes(), want) {
		t.Fatalf("% x, want % x", b.Bytes(), want)
	}

	cc, sc := net.Pipe()
	defer cc.Close()
	done := make(chan error, 1)
	go func() {
		defer sc.Close()
		if _, err := ReadClientHello(sc, 0); err != nil {
			done <- err
			return
		}
		done <- WriteAlert(sc, AlertUnrecognizedName)
	}()
	err := tls.Client(cc, &tls.Config{ServerName: "nope.example"}).Handshake()
	if err == nil || err.Error() != "remote error: tls: unrecognized name" {
		t.Fatalf("client error %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestPrefixConnHandshake pins the l7 hand-off: a peeked hello replayed
// through PrefixConn completes a real handshake over loopback TCP, and
// the client's certificate check still sees the SNI.
func TestPrefixConnHandshake(t *testing.T) {
	cert, err := SelfSigned([]string{"app.example.com", "127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	res := make(chan peekResult, 1)
	go serveOnePeeked(ln, cert, res)

	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "app.example.com", RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	r := <-res
	if r.err != nil || r.sni != "app.example.com" || r.msg != "ping" {
		t.Fatalf("server: %+v", r)
	}
}

type peekResult struct {
	sni, msg string
	err      error
}

// serveOnePeeked accepts one conn, peeks the hello, then terminates TLS
// with the replayed bytes.
func serveOnePeeked(ln net.Listener, cert tls.Certificate, res chan<- peekResult) {
	var r peekResult
	defer func() { res <- r }()
	c, err := ln.Accept()
	if err != nil {
		r.err = err
		return
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, err := ReadClientHello(c, 0)
	if err != nil {
		r.err = err
		return
	}
	r.sni = h.ServerName
	pc := NewPrefixConn(c, h.Raw)
	if pc.NetConn() != c {
		r.err = errors.New("NetConn is not the wrapped conn")
		return
	}
	s := tls.Server(pc, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err := s.HandshakeContext(context.Background()); err != nil {
		r.err = err
		return
	}
	b, err := io.ReadAll(s)
	r.msg, r.err = string(b), err
}

func TestPrefixConnRead(t *testing.T) {
	cc, sc := net.Pipe()
	defer cc.Close()
	go func() {
		_, _ = sc.Write([]byte("world"))
		sc.Close()
	}()
	pc := NewPrefixConn(cc, []byte("hello "))
	buf := make([]byte, 4)
	n, err := pc.Read(buf)
	if n != 4 || err != nil || string(buf[:n]) != "hell" {
		t.Fatalf("%q %v", buf[:n], err)
	}
	rest, err := io.ReadAll(pc)
	if err != nil || string(rest) != "o world" {
		t.Fatalf("%q %v", rest, err)
	}
}

func TestSelfSigned(t *testing.T) {
	cert, err := SelfSigned([]string{"a.example", "192.0.2.1", "::1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if leaf == nil || len(leaf.DNSNames) != 1 || len(leaf.IPAddresses) != 2 {
		t.Fatalf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < time.Hour || d > 3*time.Hour {
		t.Fatalf("validity %v", d)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	for _, name := range []string{"a.example", "192.0.2.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("verify %s: %v", name, err)
		}
	}
	def, err := SelfSigned([]string{"b.example"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(def.Leaf.NotAfter); d < 364*24*time.Hour {
		t.Fatalf("default validity %v", d)
	}
}
