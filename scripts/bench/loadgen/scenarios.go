package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// scenario is one row of the table.
type scenario struct {
	name  string
	title string
	unit  string  // the headline: CPU per operation (idle: RSS per connection)
	scale float64 // CPU seconds per op × scale = headline
	side  string  // the figure beside it: throughput (idle: fds per connection)
	sideK float64 // ops per second × sideK = side figure
	lat   bool    // latency percentiles are reported
	storm bool    // measured over config.stormDuration, then probed (storm.go)
	run   func(config, *target, *scenario) result
}

var scenarios = []*scenario{
	{name: "bulk-up", title: "L4 bulk upload (1 conn)", unit: "ms/GB", scale: 1e12, side: "Gbit/s", sideK: 8e-9,
		run: func(c config, t *target, s *scenario) result { return bulk(c, t, s, 'U') }},
	{name: "bulk-down", title: "L4 bulk download (1 conn)", unit: "ms/GB", scale: 1e12, side: "Gbit/s", sideK: 8e-9,
		run: func(c config, t *target, s *scenario) result { return bulk(c, t, s, 'D') }},
	{name: "conn", title: "L4 conn: hello+echo+close", unit: "µs/conn", scale: 1e6, side: "conn/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result {
			return connRate(c, t, s, 16, func() error { return echoOnceClose(t.l4, "l4.bench", false) })
		}},
	{name: "conn-pp2", title: "L4 conn + PROXY v2 out", unit: "µs/conn", scale: 1e6, side: "conn/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result {
			return connRate(c, t, s, 16, func() error { return echoOnceClose(t.pp, "pp.bench", t.ppSelf) })
		}},
	{name: "storm", title: "L4 storm: data with the hello, 1 backend", unit: "µs/conn", scale: 1e6, side: "conn/s", sideK: 1, lat: true, storm: true,
		run: func(c config, t *target, s *scenario) result { return storm(c, t, s, t.l4, "l4.bench", false) }},
	{name: "storm-pp2", title: "L4 storm + PROXY v2 out", unit: "µs/conn", scale: 1e6, side: "conn/s", sideK: 1, lat: true, storm: true,
		run: func(c config, t *target, s *scenario) result { return storm(c, t, s, t.pp, "pp.bench", t.ppSelf) }},
	{name: "tls-pass", title: "TLS passthrough conn", unit: "µs/conn", scale: 1e6, side: "conn/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result {
			return connRate(c, t, s, 16, func() error { return tlsEchoOnce(t.tls) })
		}},
	{name: "ping-1", title: "L4 ping-pong 64 B, 1 conn", unit: "µs/msg", scale: 1e6, side: "msg/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result { return pingPong(c, t, s, 1) }},
	{name: "ping-64", title: "L4 ping-pong 64 B, 64 conns", unit: "µs/msg", scale: 1e6, side: "msg/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result { return pingPong(c, t, s, 64) }},
	{name: "wss-hs", title: "wss:// handshake+upgrade+echo", unit: "µs/conn", scale: 1e6, side: "conn/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result {
			return connRate(c, t, s, 16, func() error { return wssOnce(t.wss) })
		}},
	{name: "wss-resume", title: "wss:// resumed handshake+upgrade+echo", unit: "µs/conn", scale: 1e6, side: "conn/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result {
			resumeCache = tls.NewLRUClientSessionCache(64)
			resumed.Store(0)
			fresh.Store(0)
			if err := wssOnceResume(t.wss); err != nil { // a full handshake fills the ticket cache
				return result{Err: err.Error()}
			}
			r := connRate(c, t, s, 16, func() error { return wssOnceResume(t.wss) })
			if n, f := resumed.Load(), fresh.Load(); f > (n+f)/20 {
				r.Err = fmt.Sprintf("only %d of %d handshakes resumed a session", n, n+f)
			}
			return r
		}},
	{name: "wss-echo", title: "wss:// echo 64 B, 64 conns", unit: "µs/msg", scale: 1e6, side: "msg/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result { return wssEcho(c, t, s, 64) }},
	{name: "http-small", title: "HTTP/1.1 over TLS, 19 B proxied, 50 conns", unit: "µs/req", scale: 1e6, side: "req/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result {
			return httpKeepAlive(c, t, s, t.http, "/hello", helloSize)
		}},
	{name: "h2-small", title: "HTTP/2 over TLS, 19 B proxied, 50 conns", unit: "µs/req", scale: 1e6, side: "req/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result {
			return httpH2(c, t, s, t.http, "/hello", helloSize)
		}},
	{name: "http-static", title: "HTTP/1.1 over TLS, 20 KiB static, 50 conns", unit: "µs/req", scale: 1e6, side: "req/s", sideK: 1, lat: true,
		run: func(c config, t *target, s *scenario) result {
			return httpKeepAlive(c, t, s, t.static, "/static/20k.bin", staticSize)
		}},
	{name: "idle-l4", title: "idle L4 conns", unit: "KiB RSS/conn", side: "fds/conn",
		run: func(c config, t *target, s *scenario) result { return idle(c, t, openIdleL4) }},
	{name: "idle-wss", title: "idle wss:// conns", unit: "KiB RSS/conn", side: "fds/conn",
		run: func(c config, t *target, s *scenario) result { return idle(c, t, openIdleWSS) }},
}

func scenarioByName(n string) *scenario {
	for _, s := range scenarios {
		if s.name == n {
			return s
		}
	}
	return nil
}

// result is one measurement (one JSON line in the results file).
type result struct {
	Scenario string  `json:"scenario"`
	Target   string  `json:"target"`
	Rep      int     `json:"rep"`
	Value    float64 `json:"value"` // the headline, in the scenario's unit
	Side     float64 `json:"side"`  // the figure beside it
	Ticks    int64   `json:"ticks"` // CPU clock ticks in the window
	// The headline again from the scheduler's nanosecond CPU time
	// (schedstat), a cross-check of the tick-based Value.
	ValueNs float64 `json:"value_schedstat,omitempty"`
	Ops     int64   `json:"ops"`
	Wall    float64 `json:"wall_s"`
	P50     float64 `json:"p50_us,omitempty"`
	P99     float64 `json:"p99_us,omitempty"`
	P999    float64 `json:"p999_us,omitempty"`
	Errors  int64   `json:"errors"`
	// Errors by kind (errKind): connect, reset, closed, short, timeout, other.
	ErrKinds map[string]int64 `json:"error_kinds,omitempty"`
	Err      string           `json:"err,omitempty"`
	// Storms only: the probe right after the storm (storm.go).
	After *probe `json:"after,omitempty"`
	// Set on every later result of a target that failed probes after a
	// storm: "storm rep 1"; the figures of such a row are suspect.
	AfterBroken string `json:"after_broken,omitempty"`
	// http rows: keep-alive connections the server closed (Connection:
	// close) and the client replaced.
	Reconnects int64 `json:"reconnects,omitempty"`
	// Not measured on this target, and why (the report shows n/a).
	Skip string `json:"skip,omitempty"`
}

func (r result) brief(s *scenario) string {
	if r.Skip != "" {
		return "skipped: " + r.Skip
	}
	if r.Err != "" && r.Ops == 0 {
		return "FAILED: " + r.Err
	}
	out := fmt.Sprintf("%9.2f %-12s %10.4g %-8s", r.Value, s.unit, r.Side, s.side)
	if s.lat {
		out += fmt.Sprintf(" p50/p99/p99.9 %.0f/%.0f/%.0f µs", r.P50, r.P99, r.P999)
	}
	if s.unit != "KiB RSS/conn" {
		out += fmt.Sprintf(" (%d ticks; schedstat %.2f)", r.Ticks, r.ValueNs)
	}
	if r.Reconnects > 0 {
		out += fmt.Sprintf(" reconnects=%d", r.Reconnects)
	}
	if r.Errors > 0 {
		out += fmt.Sprintf(" errors=%d [%s] (%s)", r.Errors, kindList(r.ErrKinds), r.Err)
	}
	if r.After != nil {
		out += "; " + r.After.String()
	}
	return out
}

// load is the state shared by the workers of one run.
type load struct {
	ops, errs atomic.Int64
	reconns   atomic.Int64 // http rows: keep-alive connections the server closed
	stop, rec atomic.Bool
	mu        sync.Mutex
	firstErr  string
	kinds     map[string]int64
	lats      []time.Duration
}

func (l *load) fail(err error) {
	l.errs.Add(1)
	l.mu.Lock()
	if l.firstErr == "" {
		l.firstErr = err.Error()
	}
	if l.kinds == nil {
		l.kinds = map[string]int64{}
	}
	l.kinds[errKind(err)]++
	l.mu.Unlock()
	time.Sleep(5 * time.Millisecond)
}

// measure runs n workers, waits for the warm-up, then reads the process's
// CPU time and the operation count at both ends of the measured window.
func measure(cfg config, t *target, s *scenario, n int, body func(l *load, lats *[]time.Duration)) result {
	l := &load{}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lats []time.Duration
			body(l, &lats)
			l.mu.Lock()
			l.lats = append(l.lats, lats...)
			l.mu.Unlock()
		}()
	}
	time.Sleep(cfg.warmup)
	c0, err0 := t.proc.cpuTicks()
	n0, errN0 := t.proc.cpuNanos()
	o0, t0 := l.ops.Load(), time.Now()
	l.rec.Store(true)
	time.Sleep(cfg.duration)
	c1, err1 := t.proc.cpuTicks()
	n1, errN1 := t.proc.cpuNanos()
	o1, t1 := l.ops.Load(), time.Now()
	l.rec.Store(false)
	l.stop.Store(true)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var r result
	select {
	case <-done:
	case <-time.After(2*opTimeout + time.Second):
		r.Err = "workers did not stop in time"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r.Ops, r.Ticks, r.Wall, r.Errors = o1-o0, c1-c0, t1.Sub(t0).Seconds(), l.errs.Load()
	r.Reconnects = l.reconns.Load()
	for k, n := range l.kinds { // a copy: late workers may still count
		if r.ErrKinds == nil {
			r.ErrKinds = map[string]int64{}
		}
		r.ErrKinds[k] = n
	}
	if r.Err == "" {
		r.Err = l.firstErr
	}
	if err0 != nil || err1 != nil {
		r.Err = fmt.Sprintf("cpu: %v %v", err0, err1)
		return r
	}
	if r.Ops > 0 {
		r.Value = float64(r.Ticks) / clockTicks * s.scale / float64(r.Ops)
		r.Side = float64(r.Ops) / r.Wall * s.sideK
		if errN0 == nil && errN1 == nil {
			r.ValueNs = float64(n1-n0) / 1e9 * s.scale / float64(r.Ops)
		}
	}
	if len(l.lats) > 0 {
		sort.Slice(l.lats, func(i, j int) bool { return l.lats[i] < l.lats[j] })
		r.P50, r.P99, r.P999 = pct(l.lats, 0.50), pct(l.lats, 0.99), pct(l.lats, 0.999)
	}
	return r
}

func pct(sorted []time.Duration, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return float64(sorted[i]) / 1e3
}

func (l *load) record(lats *[]time.Duration, start time.Time) {
	if l.rec.Load() {
		*lats = append(*lats, time.Since(start))
	}
}

func (cfg config) deadline() time.Time {
	return time.Now().Add(cfg.warmup + cfg.duration + opTimeout)
}

// bulk streams through one L4 connection: 'U' the client writes, 'D' it
// reads. Bytes are counted as they pass the client's socket.
func bulk(cfg config, t *target, s *scenario, op byte) result {
	return measure(cfg, t, s, 1, func(l *load, _ *[]time.Duration) {
		c, err := dialL4(t.l4, "l4.bench", false, op, math.MaxInt64, nil)
		if err != nil {
			l.fail(err)
			return
		}
		defer abort(c)
		_ = c.SetDeadline(cfg.deadline())
		buf := make([]byte, 256<<10)
		for !l.stop.Load() {
			var n int
			if op == 'U' {
				n, err = c.Write(buf)
			} else {
				n, err = c.Read(buf)
			}
			l.ops.Add(int64(n))
			if err != nil {
				l.fail(err)
				return
			}
		}
	})
}

// connRate runs n workers, each doing one operation after another.
func connRate(cfg config, t *target, s *scenario, n int, op func() error) result {
	return measure(cfg, t, s, n, func(l *load, lats *[]time.Duration) {
		for !l.stop.Load() {
			start := time.Now()
			if err := op(); err != nil {
				l.fail(err)
				continue
			}
			l.ops.Add(1)
			l.record(lats, start)
		}
	})
}

// pingPong: n L4 connections, each sending a 64-byte message and waiting
// for its echo, one after another.
func pingPong(cfg config, t *target, s *scenario, n int) result {
	return measure(cfg, t, s, n, func(l *load, lats *[]time.Duration) {
		c, err := dialL4(t.l4, "l4.bench", false, 'E', 64, msg64)
		if err != nil {
			l.fail(err)
			return
		}
		defer abort(c)
		buf := make([]byte, 64)
		if _, err := io.ReadFull(c, buf); err != nil {
			l.fail(err)
			return
		}
		_ = c.SetDeadline(cfg.deadline())
		for !l.stop.Load() {
			start := time.Now()
			if _, err := c.Write(msg64); err != nil {
				l.fail(err)
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				l.fail(err)
				return
			}
			l.ops.Add(1)
			l.record(lats, start)
		}
	})
}

// wssEcho: n wss:// connections through the proxy's TLS termination, each
// sending a 64-byte binary message and waiting for its echo.
func wssEcho(cfg config, t *target, s *scenario, n int) result {
	return measure(cfg, t, s, n, func(l *load, lats *[]time.Duration) {
		w, err := dialWSS(t.wss)
		if err != nil {
			l.fail(err)
			return
		}
		defer abort(w.raw)
		_ = w.raw.SetDeadline(cfg.deadline())
		for !l.stop.Load() {
			start := time.Now()
			if err := w.echo(); err != nil {
				l.fail(err)
				return
			}
			l.ops.Add(1)
			l.record(lats, start)
		}
	})
}

func openIdleL4(t *target) (net.Conn, error) {
	c, err := dialL4(t.l4, "l4.bench", false, 'E', 64, msg64)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 64)
	if _, err := io.ReadFull(c, buf); err != nil {
		abort(c)
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func openIdleWSS(t *target) (net.Conn, error) {
	w, err := dialWSS(t.wss)
	if err != nil {
		return nil, err
	}
	if err := w.echo(); err != nil {
		abort(w.raw)
		return nil, err
	}
	_ = w.raw.SetDeadline(time.Time{})
	return w.raw, nil
}

// idle opens cfg.idleConns connections (each has done one echo, so the
// proxy holds both sides), lets them settle, and reads the process's RSS and
// descriptor count before and after. Value: KiB of RSS per connection; Side:
// descriptors per connection.
func idle(cfg config, t *target, open func(*target) (net.Conn, error)) result {
	var r result
	rss0, err1 := t.proc.rssKiB()
	fd0, err2 := t.proc.fds()
	if err1 != nil || err2 != nil {
		r.Err = fmt.Sprintf("proc: %v %v", err1, err2)
		return r
	}
	n := cfg.idleConns
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var errs atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	limit := start.Add(90 * time.Second)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				for tries := 0; ; tries++ {
					c, err := open(t)
					if err == nil {
						conns[i] = c
						break
					}
					errs.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					if tries >= 3 || time.Now().After(limit) {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	opened := 0
	for _, c := range conns {
		if c != nil {
			opened++
		}
	}
	r.Wall = time.Since(start).Seconds()
	time.Sleep(time.Second) // let the process finish whatever the last ones started
	rss1, err1 := t.proc.rssKiB()
	fd1, err2 := t.proc.fds()
	for _, c := range conns {
		if c != nil {
			abort(c)
		}
	}
	// Give the process time to notice the resets before the next run.
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if fd, err := t.proc.fds(); err != nil || fd <= fd0+16 {
			break
		}
	}
	r.Ops, r.Errors = int64(opened), errs.Load()
	if firstErr != nil {
		r.Err = firstErr.Error()
	}
	if err1 != nil || err2 != nil {
		r.Err = fmt.Sprintf("proc: %v %v", err1, err2)
		return r
	}
	if opened > 0 {
		r.Value = float64(rss1-rss0) / float64(opened)
		r.Side = float64(fd1-fd0) / float64(opened)
	}
	return r
}
