package balancer

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// CheckType is the kind of active health check.
type CheckType uint8

const (
	// CheckNone runs no active checks: only passive health (MaxFails,
	// FailTimeout) changes a backend's state. The zero value; sluice's
	// config layer defaults to CheckTCP.
	CheckNone CheckType = iota
	// CheckTCP connects (and sends the pool's PROXY header, if any).
	CheckTCP
	// CheckTLS completes a TLS handshake (SNI HealthConfig.SNI, certificate
	// not verified).
	CheckTLS
	// CheckHTTP sends GET Path and expects a status in
	// [StatusMin, StatusMax].
	CheckHTTP
	// CheckWebSocket upgrades Path and expects 101 with the right
	// Sec-WebSocket-Accept (RFC 6455, Section 4.2.2).
	CheckWebSocket
)

// ParseCheckType parses "none" (also ""), "tcp", "tls", "http" or
// "websocket".
func ParseCheckType(s string) (CheckType, error) {
	switch s {
	case "", "none":
		return CheckNone, nil
	case "tcp":
		return CheckTCP, nil
	case "tls":
		return CheckTLS, nil
	case "http":
		return CheckHTTP, nil
	case "websocket":
		return CheckWebSocket, nil
	}
	return CheckNone, fmt.Errorf("balancer: unknown health check %q (want none, tcp, tls, http or websocket)", s)
}

// String returns the config spelling.
func (c CheckType) String() string {
	switch c {
	case CheckNone:
		return "none"
	case CheckTCP:
		return "tcp"
	case CheckTLS:
		return "tls"
	case CheckHTTP:
		return "http"
	case CheckWebSocket:
		return "websocket"
	}
	return fmt.Sprintf("CheckType(%d)", uint8(c))
}

// Health-check defaults (RELIABILITY T24, HAProxy's inter 2s, rise 2, fall 3).
const (
	DefaultHealthInterval = 2 * time.Second
	DefaultHealthTimeout  = time.Second
	DefaultRise           = 2
	DefaultFall           = 3
)

// HealthConfig configures a pool's active health checks. A backend that is
// UP goes DOWN after Fall consecutive failed checks; a DOWN one comes UP
// after Rise consecutive passing checks; any opposite result resets the
// streak (HAProxy's counter semantics), so alternating results never flip
// the state. Backends start UP.
type HealthConfig struct {
	// Check is the kind of check. If zero, none.
	Check CheckType
	// Interval between the starts of two checks of one backend, ±10 %
	// jitter. If zero or negative, 2s is used.
	Interval time.Duration
	// Timeout bounds one check (connect, handshake, response), also against
	// a blackholed host. If zero or negative, 1s is used.
	Timeout time.Duration
	// Rise and Fall: consecutive results needed to come UP / go DOWN. If
	// zero or negative, 2 and 3 are used.
	Rise, Fall int
	// Path for http and websocket checks. If empty, "/".
	Path string
	// Host header for http and websocket checks. If empty, the backend
	// address.
	Host string
	// StatusMin and StatusMax bound the passing http status. If zero, 200
	// and 399.
	StatusMin, StatusMax int
	// SNI for tls checks (and http/websocket with TLS). If empty, none is
	// sent.
	SNI string
	// TLS runs http and websocket checks over TLS (https / wss).
	TLS bool

	// checkFunc replaces the check (tests).
	checkFunc func(ctx context.Context, b *Backend) error
}

func (h HealthConfig) withDefaults() (HealthConfig, error) {
	if h.Check > CheckWebSocket {
		return h, fmt.Errorf("unknown health check %d", uint8(h.Check))
	}
	h.Interval = orDefault(h.Interval, DefaultHealthInterval)
	h.Timeout = orDefault(h.Timeout, DefaultHealthTimeout)
	h.Rise = orDefault(h.Rise, DefaultRise)
	h.Fall = orDefault(h.Fall, DefaultFall)
	if h.Path == "" {
		h.Path = "/"
	}
	if !strings.HasPrefix(h.Path, "/") || strings.ContainsAny(h.Path, " \r\n") {
		return h, fmt.Errorf("health check path %q: want an absolute path without spaces", h.Path)
	}
	if strings.ContainsAny(h.Host, " \r\n") {
		return h, fmt.Errorf("health check host %q", h.Host)
	}
	if h.StatusMin == 0 {
		h.StatusMin = 200
	}
	if h.StatusMax == 0 {
		h.StatusMax = 399
	}
	if h.StatusMin > h.StatusMax {
		return h, fmt.Errorf("health check status range %d-%d is empty", h.StatusMin, h.StatusMax)
	}
	return h, nil
}

func (h *HealthConfig) active() bool { return h.Check != CheckNone || h.checkFunc != nil }

// jitter returns d ± 10 % (RELIABILITY T24, Envoy interval_jitter), so the
// checks of many backends and pools spread out.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// checkLoop runs b's checks one at a time until ctx ends: at most one check
// in flight per backend, each bounded by Timeout. The first check starts
// after first (see startCheckLocked).
func (p *Pool) checkLoop(ctx context.Context, b *Backend, first time.Duration) {
	defer p.wg.Done()
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, p.health.Timeout)
		err := p.runCheck(cctx, b)
		cancel()
		if ctx.Err() != nil {
			return
		}
		dur := time.Since(start)
		if ClassifyLocal(err) == NotLocal {
			p.recordCheck(b, err, dur)
		} // else no verdict: sluice had no port or descriptor to check with (issue 11)
		t.Reset(max(jitter(p.health.Interval)-dur, 0))
	}
}

// recordCheck applies one check result with HAProxy's counter semantics.
func (p *Pool) recordCheck(b *Backend, err error, dur time.Duration) {
	kind := p.health.Check.String()
	if p.health.checkFunc != nil {
		kind = "test"
	}
	p.mu.Lock()
	b.lastCheckDur = dur
	b.lastCheckErr = ""
	if err != nil {
		b.lastCheckErr = err.Error()
	}
	var ev Event
	var ok bool
	if b.checkUp { // the checks' own verdict, whatever the agent says
		if err == nil {
			b.failStreak = 0
		} else if b.failStreak++; b.failStreak >= p.health.Fall {
			ev, ok = p.transitionLocked(b, false, fmt.Sprintf("%d consecutive failed %s checks: %v", b.failStreak, kind, err), false)
		}
	} else {
		if err != nil {
			b.okStreak = 0
		} else if b.okStreak++; b.okStreak >= p.health.Rise {
			ev, ok = p.transitionLocked(b, true, fmt.Sprintf("%d consecutive successful %s checks", b.okStreak, kind), false)
		}
	}
	p.mu.Unlock()
	if ok {
		p.emit(b, ev)
	}
}

// runCheck performs one check of b, bounded by ctx.
func (p *Pool) runCheck(ctx context.Context, b *Backend) error {
	if p.health.checkFunc != nil {
		return p.health.checkFunc(ctx, b)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return err
		}
	}
	// Backends that require PROXY get a valid header with no addresses
	// (v1 "PROXY UNKNOWN", v2 LOCAL) rather than a parse error.
	if len(p.checkHeader) > 0 {
		if _, err := c.Write(p.checkHeader); err != nil {
			return fmt.Errorf("write proxy header: %w", err)
		}
	}
	h := &p.health
	switch h.Check {
	case CheckTCP:
		return nil
	case CheckTLS:
		tc := tls.Client(c, &tls.Config{ServerName: h.SNI, InsecureSkipVerify: true})
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("tls handshake: %w", err)
		}
		return tc.Close()
	case CheckHTTP, CheckWebSocket:
		conn := c
		if h.TLS {
			tc := tls.Client(c, &tls.Config{ServerName: h.SNI, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			if err := tc.HandshakeContext(ctx); err != nil {
				return fmt.Errorf("tls handshake: %w", err)
			}
			defer tc.Close()
			conn = tc
		}
		if h.Check == CheckHTTP {
			return p.checkHTTP(conn, b)
		}
		return p.checkWebSocket(conn, b)
	}
	return nil
}

func (p *Pool) checkHost(b *Backend) string {
	if p.health.Host != "" {
		return p.health.Host
	}
	return b.addr
}

// checkHTTP sends GET Path and checks the status.
func (p *Pool) checkHTTP(c net.Conn, b *Backend) error {
	req := "GET " + p.health.Path + " HTTP/1.1\r\nHost: " + p.checkHost(b) +
		"\r\nUser-Agent: sluice-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	status, _, err := readResponseHead(c, false)
	if err != nil {
		return err
	}
	if status < p.health.StatusMin || status > p.health.StatusMax {
		return fmt.Errorf("http status %d, want %d-%d", status, p.health.StatusMin, p.health.StatusMax)
	}
	return nil
}

// maxCheckResponse bounds what a check reads of a response head.
const maxCheckResponse = 16 << 10

// readResponseHead reads an HTTP/1.x status line and, if withHeader, the
// header block. net/textproto rather than net/http: net/http imports log,
// which this package keeps out of its dependencies (deps_test.go).
func readResponseHead(c net.Conn, withHeader bool) (int, textproto.MIMEHeader, error) {
	tp := textproto.NewReader(bufio.NewReaderSize(io.LimitReader(c, maxCheckResponse), 4096))
	line, err := tp.ReadLine()
	if err != nil {
		return 0, nil, fmt.Errorf("read response: %w", err)
	}
	proto, rest, _ := strings.Cut(line, " ")
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if !strings.HasPrefix(proto, "HTTP/1.") || len(code) != 3 || err != nil {
		return 0, nil, fmt.Errorf("malformed status line %q", truncate(line, 64))
	}
	if !withHeader {
		return status, nil, nil
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return 0, nil, fmt.Errorf("read response header: %w", err)
	}
	return status, h, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// websocketGUID is RFC 6455, Section 1.3.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// checkWebSocket performs an opening handshake (RFC 6455, Section 4.1) and
// verifies the server's (Section 4.2.2), then closes with status 1000.
func (p *Pool) checkWebSocket(c net.Conn, b *Backend) error {
	var nonce [16]byte
	_, _ = crand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := "GET " + p.health.Path + " HTTP/1.1\r\nHost: " + p.checkHost(b) +
		"\r\nUser-Agent: sluice-health-check\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return fmt.Errorf("write upgrade: %w", err)
	}
	status, h, err := readResponseHead(c, true)
	if err != nil {
		return fmt.Errorf("websocket upgrade: %w", err)
	}
	if status != 101 {
		return fmt.Errorf("websocket upgrade: status %d, want 101", status)
	}
	if !headerHasToken(h, "Upgrade", "websocket") || !headerHasToken(h, "Connection", "upgrade") {
		return errors.New("websocket upgrade: 101 without Upgrade: websocket / Connection: upgrade")
	}
	sum := sha1.Sum([]byte(key + websocketGUID))
	if got, want := h.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		return fmt.Errorf("websocket upgrade: Sec-WebSocket-Accept %q, want %q", got, want)
	}
	// A masked close frame, status 1000 (RFC 6455, Sections 5.2, 5.5.1), so
	// the backend sees a clean close rather than an abrupt EOF.
	var mask [4]byte
	_, _ = crand.Read(mask[:])
	frame := []byte{0x88, 0x82, mask[0], mask[1], mask[2], mask[3], 0x03 ^ mask[0], 0xe8 ^ mask[1]}
	_, _ = c.Write(frame)
	return nil
}

// headerHasToken reports whether a comma-separated header contains token,
// case-insensitively.
func headerHasToken(h textproto.MIMEHeader, name, token string) bool {
	for _, v := range h.Values(name) {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}
