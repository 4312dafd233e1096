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

// recordWriter.waitFor: a Read of bytes that come late is one read(2),
// not a read that finds nothing and then another (net/http's background
// read, vconn.fill); the wait is once, the next Read reads at once.
func TestRecordWriterWaitFor(t *testing.T) {
	checkLeaks(t)
	cc, sc := tcpPair(t)
	_ = sc.SetReadDeadline(time.Now().Add(10 * time.Second))
	w := &recordWriter{Conn: sc}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	overhead := -threadReads(t) + threadReads(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(20 * time.Millisecond) // a read(2) right away finds nothing
		_, _ = cc.Write([]byte("late"))
	}()
	w.waitFor = sc
	before := threadReads(t)
	buf := make([]byte, 16)
	n, err := w.Read(buf)
	reads := threadReads(t) - before - overhead
	<-done
	if err != nil || string(buf[:n]) != "late" {
		t.Fatalf("Read: %q %v", buf[:n], err)
	}
	if reads != 1 || w.waitFor != nil {
		t.Fatalf("%d reads (want 1), waitFor still set: %v", reads, w.waitFor != nil)
	}
	_ = sc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := w.Read(buf); !isTimeout(err) {
		t.Fatalf("second Read: %v, want its deadline", err)
	}
}

// A client that closes right after its request (its close_notify and FIN
// may come before net/http's background read waits, leaving no readiness
// to wait for) is still seen going away while the backend has not
// answered: the wait is bounded (bgProbe), the handler returns and the
// connection ends.
func TestBackgroundReadQuickClose(t *testing.T) {
	checkLeaks(t)
	be := startScriptBackend(t, func(_ int, c net.Conn, br *bufio.Reader) {
		_, _ = io.Copy(io.Discard, br) // never answer
	})
	l := startLB(t, RouteConfig{Name: "h5", TLS: serverTLS(), Pool: pool(t, balancer.ProxyNone, be.addr)})
	for i := range 5 {
		c := l.dial(t)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		c.Close()
		select {
		case <-l.results:
		case <-time.After(5 * time.Second):
			t.Fatalf("conn %d: still open 5 s after the client left", i)
		}
	}
}
