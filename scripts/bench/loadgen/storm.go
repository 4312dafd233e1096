package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The storm rows (issue 11): as many new connections a second as the load
// generator can open, all to one backend, each client sending its whole
// request in its first write (PROXY v2 header for direct's pp route,
// ClientHello, command, 64-byte message) without waiting for any answer,
// then reading the answer ('h' and the echo) and closing at once, like a
// player who leaves: the client closes first, so the proxy closes its backend
// connection first and its side of it ends in TIME_WAIT on a source port,
// for 60 s. The first data rides with the hello as in the "conn" row before
// it waited for the backend's answer like a TLS client. A storm once made
// sluice fail 15,049 connections and then every connection of the next row
// (its backend dial did bind(0) before connect, which cannot share a port
// held by a TIME_WAIT socket, and ran out of source ports), while HAProxy
// and nginx failed none.
const (
	stormWorkers = 64      // connections in flight: far more than the proxy's one worker can turn over
	stormMaxOps  = 1 << 24 // per worker: a count bound beside the time bound
)

var (
	errWrongAnswer = errors.New("wrong answer")
)

// stormOnce is one storm connection.
func stormOnce(addr, sni string, ppSelf bool) error {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(opTimeout))
	b := l4Preamble(tc, sni, ppSelf)
	// 'E': the backend echoes until EOF, so it closes only after the client.
	b = binary.BigEndian.AppendUint64(append(b, 'E'), uint64(len(msg64)))
	if _, err := tc.Write(append(b, msg64...)); err != nil {
		return err
	}
	var buf [65]byte
	if _, err := io.ReadFull(tc, buf[:]); err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	if buf[0] != 'h' || !bytes.Equal(buf[1:], msg64) {
		return fmt.Errorf("%w: %q", errWrongAnswer, buf[:8])
	}
	return nil
}

// storm runs stormWorkers closed loops of stormOnce over the storm window,
// then probes the target (afterStorm).
func storm(cfg config, t *target, s *scenario, addr, sni string, ppSelf bool) result {
	if addr == "" {
		return result{Err: "the target has no address for this route"}
	}
	_, before := countTimeWait()
	r := measure(cfg, t, s, stormWorkers, func(l *load, lats *[]time.Duration) {
		for i := 0; i < stormMaxOps && !l.stop.Load(); i++ {
			start := time.Now()
			if err := stormOnce(addr, sni, ppSelf); err != nil {
				l.fail(err)
				continue
			}
			l.ops.Add(1)
			l.record(lats, start)
		}
	})
	r.After = afterStorm(t)
	r.After.TimeWaitPortsBefore = before
	return r
}

// errKind sorts a failed operation: connect (the dial failed: refused, no
// free port, timed out), reset (RST or EPIPE mid-connection), timeout (no
// answer within opTimeout), closed (EOF before any answer: the proxy closed
// the connection, typically because its backend dial failed), short (EOF
// part-way through the answer, or a wrong answer), other.
func errKind(err error) string {
	var op *net.OpError
	var ne net.Error
	switch {
	case errors.As(err, &op) && op.Op == "dial":
		return "connect"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return "reset"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF):
		return "closed"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, errWrongAnswer):
		return "short"
	}
	return "other"
}

// kindList formats error kinds: "connect 15000, reset 49".
func kindList(m map[string]int64) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return m[ks[i]] > m[ks[j]] || m[ks[i]] == m[ks[j]] && ks[i] < ks[j] })
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(out, ", ")
}

// probe is what the target did right after a storm: one ordinary
// TLS-shaped connection (the conn row's operation) on its L4 route and one on
// its PROXY route, retried until both succeed, at most probeTries attempts
// and probeTime.
type probe struct {
	OK       bool    `json:"ok"`
	Tries    int     `json:"tries"`
	Failed   int     `json:"failed"`
	Secs     float64 `json:"secs"` // until both answered, or until it gave up
	FirstErr string  `json:"first_err,omitempty"`
	// TCP sockets in TIME_WAIT on the machine when the probe began, and how
	// many of them hold a local port of ip_local_port_range (-1: unknown).
	TimeWait      int `json:"time_wait"`
	TimeWaitPorts int `json:"time_wait_ephemeral"`
	// The same on a source port before the storm began: what earlier runs
	// left behind (TIME_WAIT lasts 60 s).
	TimeWaitPortsBefore int `json:"time_wait_ephemeral_before"`
}

const (
	probeTries = 100
	probeTime  = 10 * time.Second
)

func afterStorm(t *target) *probe {
	p := &probe{}
	p.TimeWait, p.TimeWaitPorts = countTimeWait()
	type route struct {
		addr, sni string
		ppSelf    bool
	}
	routes := []route{{t.l4, "l4.bench", false}, {t.pp, "pp.bench", t.ppSelf}}
	done := make([]bool, len(routes))
	start := time.Now()
	for p.Tries < probeTries && time.Since(start) < probeTime {
		all := true
		for i, rt := range routes {
			if done[i] || rt.addr == "" {
				continue
			}
			p.Tries++
			if err := echoOnceClose(rt.addr, rt.sni, rt.ppSelf); err != nil {
				p.Failed++
				if p.FirstErr == "" {
					p.FirstErr = err.Error()
				}
				all = false
				continue
			}
			done[i] = true
		}
		if all {
			p.OK = true
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	p.Secs = time.Since(start).Seconds()
	return p
}

// Broken: right after the storm, the target failed ordinary connections.
func (p *probe) Broken() bool { return !p.OK || p.Failed > 0 }

func (p *probe) String() string {
	tw := ""
	if p.TimeWait >= 0 {
		tw = fmt.Sprintf("; TIME_WAIT sockets on a source port: %d before the storm, %d after (%d in all)",
			p.TimeWaitPortsBefore, p.TimeWaitPorts, p.TimeWait)
	}
	if !p.Broken() {
		return "after it: answered at once" + tw
	}
	if p.OK {
		return fmt.Sprintf("AFTER IT: FAILED ordinary connections for %.1f s, %d probes failed (first: %s)%s",
			p.Secs, p.Failed, p.FirstErr, tw)
	}
	return fmt.Sprintf("AFTER IT: NOT ANSWERING, %d of %d probes failed over %.1f s (first: %s)%s",
		p.Failed, p.Tries, p.Secs, p.FirstErr, tw)
}

// countTimeWait counts TCP sockets in TIME_WAIT (state 06) in
// /proc/net/tcp and tcp6, what a storm leaves behind on the machine, and
// those of them whose local port is in ip_local_port_range: the ports a
// bind(0) cannot take.
func countTimeWait() (all, ephemeral int) {
	lo, hi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		_, _ = fmt.Sscan(string(b), &lo, &hi)
	}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			return -1, -1
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 4 || fs[3] != "06" {
				continue
			}
			all++
			_, port, _ := strings.Cut(fs[1], ":")
			if p, err := strconv.ParseUint(port, 16, 16); err == nil && int(p) >= lo && int(p) <= hi {
				ephemeral++
			}
		}
		fh.Close()
	}
	return all, ephemeral
}
