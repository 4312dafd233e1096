package main

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is an io.Writer for a logger written from many goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// RELIABILITY E6 / T26: a flood of bad clients is counted in full but
// cannot flood the log: with the loggers sluice runs with, rejection lines
// are the first 10 per second, then 1 in 100.
func TestRejectionFloodIsSampled(t *testing.T) {
	var out lockedBuffer
	log, sampled, err := newLoggers("info", "json", &out)
	must(t, err)
	c, err := DecodeConfig([]byte(`
[listeners.public]
address = "127.0.0.1:0"
max_connections_per_ip = 0 # tests open many connections from 127.0.0.1
new_connections_per_ip = { rate = 0 }
[routes.r]
listener = "public"
sni = ["x.game.test"]
pool = "p"
[pools.p]
health = { check = "none" }
backends = [{ address = "127.0.0.1:1" }]
`))
	must(t, err)
	rt, err := c.Validate()
	must(t, err)
	s := newServer(rt, log, sampled)
	must(t, s.listen())
	s.serve()
	defer s.shutdown(0)
	addr := s.addr("public").String()

	const n = 2000
	start := time.Now()
	for range n {
		c, err := net.Dial("tcp", addr)
		must(t, err)
		c.Write([]byte{0, 1, 2, 3}) // not TLS, not HTTP: closed at once
		c.Close()
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.rejectedCount(reasonNotTLS) < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	if got := s.rejectedCount(reasonNotTLS); got != n {
		t.Fatalf("%d of %d rejections counted", got, n)
	}
	lines := strings.Count(out.String(), "rejected: not_tls")
	// 10 per started second, then 1 in 100 of the rest.
	limit := 10*(int(secs)+1) + n/100 + 1
	if lines == 0 || lines > limit {
		t.Fatalf("%d rejection log lines for %d rejections in %.1fs, want 1..%d", lines, n, secs, limit)
	}
	t.Logf("%d rejections in %.1fs: %d log lines", n, secs, lines)
}
