//go:build linux

package l7

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"sluice/balancer"
)

// A backend's answer that comes late, in one segment, is read with one
// read(2) per request: the first read waits for the socket to be readable
// (writeThenRead) rather than finding nothing, parking and reading again
// (issue 10's http-small: a read that found nothing on every request).
// The reads are counted by the kernel for the test's locked thread, where
// the round trip's syscalls run.
func TestBackendReadWaitsForAnswer(t *testing.T) {
	checkLeaks(t)
	be := startScriptBackend(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond) // an immediate read(2) finds nothing
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	p := pool(t, balancer.ProxyNone, be.addr)
	bcs := &backendConns{pool: p}
	defer bcs.close()
	b := p.Backends()[0]

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const n = 5
	reads := 0
	readsOverhead := -threadReads(t) + threadReads(t) // reading the count
	for i := range n + 1 {
		in := httptest.NewRequest("GET", "http://x/", nil)
		dr := dialRequest(p, in, nil)
		before := threadReads(t)
		resp, err := bcs.roundTrip(in, nil, b, &dr, httptest.NewRecorder())
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != "ok" {
			t.Fatalf("request %d: %q %v", i, body, err)
		}
		if i > 0 { // the first one dials
			reads += threadReads(t) - before - readsOverhead
		}
	}
	if be.accepts.Load() != 1 {
		t.Fatalf("%d backend conns, want 1", be.accepts.Load())
	}
	// (The pooled conn's check, a recv(2) with MSG_PEEK, is not counted.)
	if reads != n {
		t.Fatalf("%d reads for %d requests, want %d", reads, n, n)
	}
}

// threadReads is the calling thread's read syscall count (syscr).
func threadReads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/io")
	if err != nil {
		t.Skipf("no per-thread I/O counts: %v", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no syscr in /proc/thread-self/io")
	return 0
}
