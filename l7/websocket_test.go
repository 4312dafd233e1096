package l7

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"net/http"

	"github.com/coder/websocket"
	proxyproto "github.com/pires/go-proxyproto"

	"sluice/balancer"
	"sluice/l4"
)

// B1: messages of 1 B to 1 MiB, text and binary, echo byte-exact through
// wss://, and the backend sees the forwarding headers.
func TestWebSocketEcho(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(),
		Locations: []Location{{Path: "/ws", Pool: pool(t, balancer.ProxyNone, be.addr)}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := l.wsDial(t, ctx, "/ws?room=1")
	for _, size := range []int{1, 2, 125, 126, 65535, 65536, 100 << 10, 1 << 20} {
		for _, typ := range []websocket.MessageType{websocket.MessageText, websocket.MessageBinary} {
			msg := make([]byte, size)
			if typ == websocket.MessageBinary {
				rand.Read(msg)
			} else {
				copy(msg, bytes.Repeat([]byte("sluice "), size/7+1))
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				t.Fatal(err)
			}
			gt, got, err := c.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if gt != typ || !bytes.Equal(got, msg) {
				t.Fatalf("size %d type %v: echo differs (got %d bytes, type %v)", size, typ, len(got), gt)
			}
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	res := l.nextResult(t)
	if !res.Upgraded || res.Status != 101 || res.Backend != be.addr || res.Requests != 1 || res.BytesIn < 1<<20 || res.BytesOut < 1<<20 {
		t.Fatalf("result %+v", res)
	}
	if res.Relay.PathIn != l4.PathBuffer {
		t.Fatalf("relay path %v", res.Relay.PathIn)
	}

	reqs := be.requests()
	if len(reqs) != 1 {
		t.Fatalf("backend saw %d requests", len(reqs))
	}
	r := reqs[0]
	_, port, _ := net.SplitHostPort(l.addr)
	wantHost := testHost + ":" + port
	for k, want := range map[string]string{
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Proto": "https",
		"X-Forwarded-Host":  wantHost,
		"X-Real-Ip":         "127.0.0.1",
	} {
		if got := r.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if r.Host != wantHost || r.URL.RequestURI() != "/ws?room=1" {
		t.Errorf("host %q uri %q", r.Host, r.URL.RequestURI())
	}
}

// 200 concurrent tunnels over a pool of two backends use both.
func TestWebSocketConcurrentSpread(t *testing.T) {
	checkLeaks(t)
	b1, b2 := startWSBackend(t, nil), startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(),
		Pool: pool(t, balancer.ProxyNone, b1.addr, b2.addr)})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := l.httpClient()
			defer hc.CloseIdleConnections()
			c, _, err := websocket.Dial(ctx, l.wsURL("/ws"), &websocket.DialOptions{HTTPClient: hc})
			if err != nil {
				errs <- err
				return
			}
			defer c.CloseNow()
			msg := fmt.Sprintf("hello %d", i)
			for range 3 {
				if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
					errs <- err
					return
				}
				_, got, err := c.Read(ctx)
				if err != nil || string(got) != msg {
					errs <- fmt.Errorf("echo %q: %q %v", msg, got, err)
					return
				}
			}
			c.Close(websocket.StatusNormalClosure, "")
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n1, n2 := len(b1.requests()), len(b2.requests())
	if n1+n2 != n || n1 == 0 || n2 == 0 {
		t.Fatalf("spread %d/%d", n1, n2)
	}
	for range n {
		if r := l.nextResult(t); !r.Upgraded {
			t.Fatalf("result %+v", r)
		}
	}
}

// With a PROXY v2 pool, the backend sees the client's address.
func TestWebSocketProxyV2(t *testing.T) {
	checkLeaks(t)
	be := startWSBackend(t, func(ln net.Listener) net.Listener {
		return &proxyproto.Listener{Listener: ln, ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil }}
	})
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(),
		Pool: pool(t, balancer.ProxyV2, be.addr)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Dial from 127.0.0.7 so the address cannot be the LB's own.
	hc := l.httpClient()
	hc.Transport.(interface{ CloseIdleConnections() }).CloseIdleConnections()
	tr := hc.Transport.(*http.Transport)
	tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 7)}}
		return d.DialContext(ctx, "tcp", l.addr)
	}
	c, _, err := websocket.Dial(ctx, l.wsURL("/ws"), &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); err != nil {
		t.Fatal(err)
	}
	r := be.requests()[0]
	if !strings.HasPrefix(r.RemoteAddr, "127.0.0.7:") {
		t.Fatalf("backend saw client %q", r.RemoteAddr)
	}
	if got := r.Header.Get("X-Real-Ip"); got != "127.0.0.7" {
		t.Fatalf("X-Real-IP %q", got)
	}
	c.Close(websocket.StatusNormalClosure, "")
	hc.CloseIdleConnections()
}

// A quiet WebSocket is not cut before the relay's idle timeout (3 s here;
// the default idle_timeout is 10 min, where nginx cuts at 60 s).
func TestWebSocketIdleNotCut(t *testing.T) {
	parallelCheckLeaks(t)
	be := startWSBackend(t, nil)
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr),
		HeaderTimeout: 500 * time.Millisecond, KeepAliveTimeout: 500 * time.Millisecond,
		Relay: l4.Options{IdleTimeout: 3 * time.Second}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := l.wsDial(t, ctx, "/ws")
	// Two quiet periods, each 3× the HTTP timeouts and half the relay's
	// idle timeout away from it.
	for i := range 2 {
		if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, got, err := c.Read(ctx); err != nil || string(got) != "ping" {
			t.Fatalf("read %d: %q %v", i, got, err)
		}
		time.Sleep(1500 * time.Millisecond)
	}
	c.Close(websocket.StatusNormalClosure, "")
	if r := l.nextResult(t); r.Reason != l4.ReasonEOF {
		t.Fatalf("result %+v", r)
	}
}

// An idle wss:// tunnel whose backend Go dialled (a host name; here the
// test's switch) sheds Go's state of its backend socket (l4's
// Options.Owner, the lease); one dialled raw (an IP literal, the default)
// never had it. Both go on carrying messages both ways, and a removed
// backend's CloseConnections still ends either. Not parallel: the shed
// count is the process's.
func TestIdleTunnelSheds(t *testing.T) {
	for _, goDial := range []bool{true, false} {
		t.Run(fmt.Sprint("go dial ", goDial), func(t *testing.T) {
			checkLeaks(t)
			be := startWSBackend(t, nil)
			p := poolOf(t, balancer.PoolConfig{}, 0, be.addr)
			l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: p,
				Relay: l4.Options{Engine: l4.EngineEpoll}, goDialUpgrades: goDial}) // sluice's default engine
			ctx := t.Context()
			ws := l.wsDial(t, ctx, "/ws")
			echo := func(msg string) {
				t.Helper()
				if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				if _, got, err := ws.Read(ctx); err != nil || string(got) != msg {
					t.Fatalf("echo %q: %q, %v", msg, got, err)
				}
			}
			echo("before")
			if n, want := l.route.rawTunnels.Load(), map[bool]int64{true: 0, false: 1}[goDial]; n != want {
				t.Fatalf("%d tunnels on a raw dial's descriptor, want %d", n, want)
			}
			if goDial {
				before := l4.Sheds()
				deadline := time.Now().Add(15 * time.Second)
				for l4.Sheds() == before {
					if time.Now().After(deadline) {
						t.Fatal("the idle tunnel did not shed in 15s")
					}
					time.Sleep(50 * time.Millisecond)
				}
			} else {
				time.Sleep(1500 * time.Millisecond) // idle as long as a shed takes
			}
			for i := range 3 {
				echo(fmt.Sprint("after ", i))
			}
			if n, err := p.CloseConnections(be.addr); n != 1 || err != nil {
				t.Fatalf("CloseConnections: %d, %v", n, err)
			}
			if _, _, err := ws.Read(ctx); err == nil {
				t.Fatal("the tunnel still reads after its backend's connections were closed")
			}
			if res := l.nextResult(t); !res.Upgraded || res.Reason != l4.ReasonError {
				t.Errorf("result %+v, want an upgraded conn ended by the closed backend", res)
			}
		})
	}
}
