package balancer

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	proxyproto "github.com/pires/go-proxyproto"
)

func TestParseCheckType(t *testing.T) {
	for _, c := range []CheckType{CheckNone, CheckTCP, CheckTLS, CheckHTTP, CheckWebSocket} {
		if got, err := ParseCheckType(c.String()); got != c || err != nil {
			t.Errorf("%v: %v, %v", c, got, err)
		}
	}
	if got, err := ParseCheckType(""); got != CheckNone || err != nil {
		t.Errorf(`"": %v, %v`, got, err)
	}
	if _, err := ParseCheckType("icmp"); err == nil {
		t.Error("icmp accepted")
	}
}

// TestHealthDownUp pins T24 timings with real listeners (interval 50 ms,
// timeout 100 ms, rise 2, fall 3): a closed listener is DOWN within
// fall × interval × 1.1 + timeout (+ a generous margin), gets no dial once
// DOWN, and is UP again within (rise+1) × interval × 1.1 (+ margin) after it
// listens again on the same port. One event per transition.
func TestHealthDownUp(t *testing.T) {
	a, b := startSink(t), startSink(t)
	var ev events
	const inter, timeout = 50 * time.Millisecond, 100 * time.Millisecond
	p := mustPool(t, PoolConfig{
		Name: "hc", Backends: sinkConfigs([]*sink{a, b}),
		Health:   HealthConfig{Check: CheckTCP, Interval: inter, Timeout: timeout, Rise: 2, Fall: 3},
		OnChange: ev.record,
	})
	p.Start()
	p.Start() // idempotent
	defer p.Close()
	ba := p.backends()[0]

	a.stop()
	took := waitFor(t, 3*inter*11/10+timeout+time.Second, "DOWN", func() bool { return !ba.Healthy() })
	t.Logf("DOWN after %v (bound %v + margin)", took, 3*inter*11/10+timeout)
	dials := ba.Dials()
	for range 20 {
		if got := dialDone(t, p, DialRequest{}); got == ba {
			t.Fatal("a DOWN backend got a connection")
		}
	}
	if ba.Dials() != dials {
		t.Errorf("DOWN backend dialled %d times", ba.Dials()-dials)
	}
	st := p.Status()[0]
	if st.Healthy || st.LastCheckError == "" || !strings.Contains(st.LastCheckError, "refused") {
		t.Errorf("status of the DOWN backend: %+v", st)
	}

	a.restart()
	took = waitFor(t, 3*inter*11/10+time.Second, "UP", ba.Healthy)
	t.Logf("UP after %v (bound %v + margin)", took, 3*inter*11/10)
	p.Close()
	evs := ev.list()
	if len(evs) != 2 || evs[0].Healthy || !evs[1].Healthy || evs[0].Backend != a.addr() || evs[0].Pool != "hc" {
		t.Fatalf("events %+v, want one DOWN then one UP for %s", evs, a.addr())
	}
	if !strings.HasPrefix(evs[0].Reason, "3 consecutive failed tcp checks: ") || evs[1].Reason != "2 consecutive successful tcp checks" {
		t.Errorf("reasons %q, %q", evs[0].Reason, evs[1].Reason)
	}
}

// scriptedCheck returns a check function that plays results in order (true
// = pass) and then blocks until the pool closes; done is closed when the
// script has been played.
func scriptedCheck(script []bool) (func(context.Context, *Backend) error, <-chan struct{}) {
	var mu sync.Mutex
	k := 0
	done := make(chan struct{})
	return func(ctx context.Context, _ *Backend) error {
		mu.Lock()
		defer mu.Unlock()
		if k == len(script) {
			close(done)
			k++
		}
		if k > len(script) {
			mu.Unlock()
			<-ctx.Done() // the pool's ctx: the check timeout is longer than the test
			mu.Lock()
			return ctx.Err()
		}
		ok := script[k]
		k++
		if ok {
			return nil
		}
		return errors.New("scripted failure")
	}, done
}

func repeat(pattern []bool, n int) []bool {
	var out []bool
	for range n {
		out = append(out, pattern...)
	}
	return out
}

// TestHealthFlapping pins HAProxy's counter semantics (D8) through the real
// check loop with an injected checker: alternating pass/fail and
// fail,fail,pass give 0 transitions; 3 fails then 2 passes (rise 2, fall 3)
// give exactly one DOWN and one UP per cycle.
func TestHealthFlapping(t *testing.T) {
	F, P := false, true
	tests := []struct {
		name   string
		script []bool
		want   int // transitions
	}{
		{name: "alternate", script: repeat([]bool{F, P}, 20), want: 0},
		{name: "fail fail pass", script: repeat([]bool{F, F, P}, 10), want: 0},
		{name: "3 fails 2 passes", script: repeat([]bool{F, F, F, P, P}, 4), want: 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check, done := scriptedCheck(tt.script)
			var ev events
			p := mustPool(t, PoolConfig{
				Name: "flap", Backends: backendsOf("192.0.2.1:1"),
				Health:   HealthConfig{Interval: 2 * time.Millisecond, Timeout: time.Minute, Rise: 2, Fall: 3, checkFunc: check},
				OnChange: ev.record,
			})
			p.Start()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("script not played")
			}
			p.Close()
			evs := ev.list()
			if len(evs) != tt.want {
				t.Fatalf("%d transitions, want %d: %+v", len(evs), tt.want, evs)
			}
			for i, e := range evs {
				if e.Healthy != (i%2 == 1) {
					t.Errorf("event %d: healthy %v, want alternating DOWN, UP", i, e.Healthy)
				}
			}
		})
	}
}

// ppBackend is a go-proxyproto REQUIRE listener that records, per
// connection, the parsed header and any error reading it.
type ppBackend struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	hdrs []*proxyproto.Header
	errs []error
}

func startPPBackend(t *testing.T) *ppBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pb := &ppBackend{ln: &proxyproto.Listener{Listener: ln, ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil }}}
	pb.wg.Add(1)
	go pb.acceptLoop()
	t.Cleanup(func() { pb.ln.Close(); pb.wg.Wait() })
	return pb
}

func (pb *ppBackend) acceptLoop() {
	defer pb.wg.Done()
	for {
		c, err := pb.ln.Accept()
		if err != nil {
			return
		}
		pb.wg.Add(1)
		go pb.serve(c.(*proxyproto.Conn))
	}
}

func (pb *ppBackend) serve(c *proxyproto.Conn) {
	defer pb.wg.Done()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c)
	pb.mu.Lock()
	pb.hdrs = append(pb.hdrs, c.ProxyHeader())
	pb.errs = append(pb.errs, err)
	pb.mu.Unlock()
}

// TestHealthProxyRequired: a backend that requires PROXY stays healthy under
// tcp checks from a v1 or v2 pool and parses every check's header without
// error (v1 "PROXY UNKNOWN", v2 LOCAL).
func TestHealthProxyRequired(t *testing.T) {
	for _, v := range []ProxyProtocol{ProxyV1, ProxyV2} {
		t.Run(v.String(), func(t *testing.T) {
			pb := startPPBackend(t)
			var ev events
			p := mustPool(t, PoolConfig{
				Name: "pp", Backends: backendsOf(pb.ln.Addr().String()), ProxyProtocol: v,
				Health:   HealthConfig{Check: CheckTCP, Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1},
				OnChange: ev.record,
			})
			p.Start()
			waitFor(t, 5*time.Second, "5 checks", func() bool {
				pb.mu.Lock()
				defer pb.mu.Unlock()
				return len(pb.hdrs) >= 5
			})
			p.Close()
			if len(ev.list()) != 0 || !p.backends()[0].Healthy() {
				t.Errorf("transitions %+v", ev.list())
			}
			pb.mu.Lock()
			defer pb.mu.Unlock()
			for i := range pb.hdrs {
				if pb.errs[i] != nil || pb.hdrs[i] == nil || pb.hdrs[i].Version != byte(v) {
					t.Fatalf("check %d: header %+v, err %v", i, pb.hdrs[i], pb.errs[i])
				}
				if v == ProxyV2 && pb.hdrs[i].Command != proxyproto.LOCAL {
					t.Errorf("v2 check %d: command %v, want LOCAL", i, pb.hdrs[i].Command)
				}
			}
		})
	}
}

// checkOnce runs one check of kind against addr and returns its error.
func checkOnce(t *testing.T, hc HealthConfig, addr string) error {
	t.Helper()
	hc.Timeout = time.Second
	p := mustPool(t, PoolConfig{Name: "once", Backends: backendsOf(addr), Health: hc})
	ctx, cancel := context.WithTimeout(context.Background(), p.health.Timeout)
	defer cancel()
	return p.runCheck(ctx, p.backends()[0])
}

func hostOf(s *httptest.Server) string {
	return strings.TrimPrefix(strings.TrimPrefix(s.URL, "https://"), "http://")
}

// TestCheckKinds: tls, http and websocket checks pass against a good
// backend and fail against a bad one (no TLS, wrong status, no 101, a 101
// with a wrong Sec-WebSocket-Accept).
func TestCheckKinds(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "game.example.com" {
			w.WriteHeader(http.StatusMisdirectedRequest)
		}
	})
	mux.HandleFunc("/sick", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		_, _, _ = c.Read(r.Context()) // the checker's close frame
	})
	mux.HandleFunc("/bad101", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Sec-WebSocket-Accept", "d3Jvbmc=")
		w.WriteHeader(http.StatusSwitchingProtocols)
	})
	plain := httptest.NewServer(mux)
	defer plain.Close()
	secure := httptest.NewTLSServer(mux)
	defer secure.Close()

	tests := []struct {
		name string
		hc   HealthConfig
		addr string
		ok   bool
	}{
		{name: "tls good", hc: HealthConfig{Check: CheckTLS, SNI: "game.example.com"}, addr: hostOf(secure), ok: true},
		{name: "tls against plain http", hc: HealthConfig{Check: CheckTLS}, addr: hostOf(plain)},
		{name: "http good", hc: HealthConfig{Check: CheckHTTP, Path: "/health", Host: "game.example.com"}, addr: hostOf(plain), ok: true},
		{name: "https good", hc: HealthConfig{Check: CheckHTTP, Path: "/health", Host: "game.example.com", TLS: true}, addr: hostOf(secure), ok: true},
		{name: "http 503", hc: HealthConfig{Check: CheckHTTP, Path: "/sick"}, addr: hostOf(plain)},
		{name: "http 421 (wrong host)", hc: HealthConfig{Check: CheckHTTP, Path: "/health"}, addr: hostOf(plain)},
		{name: "http 503 accepted by range", hc: HealthConfig{Check: CheckHTTP, Path: "/sick", StatusMin: 200, StatusMax: 599}, addr: hostOf(plain), ok: true},
		{name: "websocket good", hc: HealthConfig{Check: CheckWebSocket, Path: "/ws"}, addr: hostOf(plain), ok: true},
		{name: "wss good", hc: HealthConfig{Check: CheckWebSocket, Path: "/ws", TLS: true}, addr: hostOf(secure), ok: true},
		{name: "websocket no 101", hc: HealthConfig{Check: CheckWebSocket, Path: "/health", Host: "game.example.com"}, addr: hostOf(plain)},
		{name: "websocket wrong accept", hc: HealthConfig{Check: CheckWebSocket, Path: "/bad101"}, addr: hostOf(plain)},
		{name: "tcp refused", hc: HealthConfig{Check: CheckTCP}, addr: closedAddr(t)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkOnce(t, tt.hc, tt.addr)
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			t.Logf("err = %v", err)
		})
	}
}
