package l7

import (
	"context"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"sluice/balancer"
)

func stickyPool(t *testing.T, addrs ...string) *balancer.Pool {
	return poolOf(t, balancer.PoolConfig{Balance: balancer.RoundRobin, StickyCookie: "SLUICE"}, 0, addrs...)
}

// getCookie sends one GET with cookie (if any) and returns the backend that
// answered and the Set-Cookie it got.
func getCookie(t *testing.T, hc *http.Client, url, cookie string) (backend, setCookie string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if cookie != "" {
		req.Header.Set("Cookie", "SLUICE="+cookie)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return resp.Header.Get("X-Backend"), resp.Header.Get("Set-Cookie")
}

func cookieValue(t *testing.T, setCookie string) string {
	t.Helper()
	c, err := http.ParseSetCookie(setCookie)
	if err != nil || c.Name != "SLUICE" {
		t.Fatalf("Set-Cookie %q: %v", setCookie, err)
	}
	return c.Value
}

// A player without the cookie is balanced and gets it (with the attributes
// a cross-origin game page needs over TLS); with it, every request (over
// any client connection) and every upgrade goes to the same backend, and no
// new cookie is set.
func TestStickyCookiePinsRequestsAndUpgrades(t *testing.T) {
	checkLeaks(t)
	a, _ := countedBackend(t)
	b, _ := countedBackend(t)
	p := stickyPool(t, a.addr, b.addr)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: p})
	for player := range 6 {
		hc := l.httpClient()
		first, sc := getCookie(t, hc, l.url("/socket.io/?EIO=4&transport=polling"), "")
		if sc == "" {
			t.Fatalf("player %d: no Set-Cookie", player)
		}
		for _, attr := range []string{"Path=/", "HttpOnly", "Secure", "SameSite=None"} {
			if !strings.Contains(sc, attr) {
				t.Fatalf("Set-Cookie %q lacks %s", sc, attr)
			}
		}
		v := cookieValue(t, sc)
		if strings.Contains(sc, "127.0.0.1") || len(v) != 16 {
			t.Fatalf("cookie value %q names an address or is not the opaque id", v)
		}
		for i := range 5 {
			if i == 3 {
				hc.CloseIdleConnections() // a new client connection
			}
			be, again := getCookie(t, hc, l.url("/socket.io/?EIO=4&transport=polling&sid=x"), v)
			if be != first || again != "" {
				t.Fatalf("player %d request %d: backend %s (first %s), Set-Cookie %q", player, i, be, first, again)
			}
		}
		hc.CloseIdleConnections()

		// The upgrade with the cookie reaches the same backend.
		hc = l.httpClient()
		h := http.Header{"Cookie": {"SLUICE=" + v}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, resp, err := websocket.Dial(ctx, l.wsURL("/socket.io/?EIO=4&transport=websocket"), &websocket.DialOptions{HTTPClient: hc, HTTPHeader: h})
		if err != nil {
			t.Fatalf("upgrade: %v", err)
		}
		if resp.Header.Get("Set-Cookie") != "" {
			t.Fatalf("a 101 with a valid cookie set another: %q", resp.Header.Get("Set-Cookie"))
		}
		c.CloseNow()
		cancel()
		hc.CloseIdleConnections()
		reqs := map[string][]*http.Request{a.addr: a.requests(), b.addr: b.requests()}[first]
		if last := reqs[len(reqs)-1]; last.Header.Get("Upgrade") == "" {
			t.Fatalf("player %d: the upgrade did not reach %s", player, first)
		}
	}
	if len(a.requests()) == 0 || len(b.requests()) == 0 {
		t.Fatal("players without a cookie were not balanced over both backends")
	}
}

// A 101 to a player without a cookie sets it; a forged or unknown value is
// re-balanced and re-cookied; a backend in maint loses its players to the
// other one (re-cookied), a draining one keeps them.
func TestStickyCookieRebalances(t *testing.T) {
	checkLeaks(t)
	a, _ := countedBackend(t)
	b, _ := countedBackend(t)
	p := stickyPool(t, a.addr, b.addr)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: p})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, l.wsURL("/ws"), &websocket.DialOptions{HTTPClient: l.httpClient()})
	if err != nil {
		t.Fatal(err)
	}
	c.CloseNow()
	if v := cookieValue(t, resp.Header.Get("Set-Cookie")); v == "" {
		t.Fatal("no cookie on the 101")
	}

	_, sc := getCookie(t, hc, l.url("/"), "forged-value")
	if sc == "" {
		t.Fatal("a forged cookie was not replaced")
	}
	v := cookieValue(t, sc)
	owner, _ := getCookie(t, hc, l.url("/"), v)
	other := map[string]string{a.addr: b.addr, b.addr: a.addr}[owner]

	if err := p.SetState(owner, balancer.Drain); err != nil {
		t.Fatal(err)
	}
	if be, again := getCookie(t, hc, l.url("/"), v); be != owner || again != "" {
		t.Fatalf("draining owner: went to %s (owner %s), Set-Cookie %q", be, owner, again)
	}
	if err := p.SetState(owner, balancer.Maint); err != nil {
		t.Fatal(err)
	}
	be, again := getCookie(t, hc, l.url("/"), v)
	if be != other || again == "" || cookieValue(t, again) == v {
		t.Fatalf("owner in maint: went to %s (other %s), Set-Cookie %q", be, other, again)
	}
}

// A cleartext listener's cookie is not Secure (the browser would drop it)
// and keeps the default SameSite.
func TestStickyCookieCleartext(t *testing.T) {
	checkLeaks(t)
	a, _ := countedBackend(t)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, Pool: stickyPool(t, a.addr)})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	_, sc := getCookie(t, hc, l.url("/"), "")
	if sc == "" || strings.Contains(sc, "Secure") || strings.Contains(sc, "SameSite") {
		t.Fatalf("cleartext Set-Cookie %q", sc)
	}
}

// A cookie jar (as a browser keeps it) carries the pin by itself.
func TestStickyCookieJar(t *testing.T) {
	checkLeaks(t)
	a, _ := countedBackend(t)
	b, _ := countedBackend(t)
	l := startLB(t, RouteConfig{Name: "h5", Hosts: []string{testHost}, TLS: serverTLS(), Pool: stickyPool(t, a.addr, b.addr)})
	hc := l.httpClient()
	defer hc.CloseIdleConnections()
	jar, _ := cookiejar.New(nil)
	hc.Jar = jar
	first := get(t, hc, "GET", l.url("/"), nil)
	for range 9 {
		if be := get(t, hc, "GET", l.url("/"), nil); be != first {
			t.Fatalf("went to %s, pinned to %s", be, first)
		}
	}
}
