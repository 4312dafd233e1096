package l7

import (
	"net/http"

	"sluice/balancer"
)

// Sticky sessions by cookie (issue 10; HAProxy's "cookie ... insert",
// nginx's "sticky cookie"). A request or upgrade whose pool has a sticky
// cookie goes to the backend its cookie names while that backend can take
// it (balancer.DialRequest.Sticky); without a valid cookie it is balanced
// as usual, and its response (any status, and the 101) sets the cookie to
// the backend that answered. The value is opaque (balancer.Backend.Cookie).

// stickyFrom returns the pool's sticky cookie value sent with r, "" if the
// pool has none or r does not carry it.
func stickyFrom(pool *balancer.Pool, r reqView) string {
	name := pool.StickyCookie()
	if name == "" {
		return ""
	}
	v, _ := r.cookie(name)
	return v
}

// setSticky adds to h the Set-Cookie that pins the client to b, unless the
// pool has no sticky cookie or the client sent that value already. Secure
// and SameSite=None (so that a game page on another origin sends it with
// credentials) only on TLS: browsers refuse SameSite=None without Secure,
// and a cleartext cookie keeps the default SameSite=Lax.
func setSticky(h http.Header, pool *balancer.Pool, sent string, b *balancer.Backend, tls bool) {
	if c := stickySetCookie(pool, sent, b, tls); c != "" {
		h.Add("Set-Cookie", c)
	}
}

// stickySetCookie is setSticky's Set-Cookie value, "" for none.
func stickySetCookie(pool *balancer.Pool, sent string, b *balancer.Backend, tls bool) string {
	name := pool.StickyCookie()
	if name == "" || b.Cookie() == sent {
		return ""
	}
	c := http.Cookie{Name: name, Value: b.Cookie(), Path: "/", HttpOnly: true}
	if tls {
		c.Secure, c.SameSite = true, http.SameSiteNoneMode
	}
	return c.String()
}
