package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"sluice/balancer"
	"sluice/l4"
)

// Storms (issue 11): sluice dials backends with a plain connect(2), which
// picks a source port per destination, so it never runs out of ports where
// the kernel would let a plain connect through; and running out of local
// resources is sluice's trouble, never counted against the backend.
//
// Both tests need a small ephemeral port range, which is a per-network-
// namespace sysctl: they re-run themselves in a namespace of their own
// (unshare --net, root only) with ip_local_port_range = 40000-40199, so
// the host's range is not touched and 200 ports are enough to show it.

const stormPorts = 200 // 40000-40199

// inStormNetns re-runs the calling test in a new network namespace with a
// 200-port ephemeral range and reports whether the caller is that re-run
// (true: go on with the test) or the parent (false: the child's verdict is
// already reported).
func inStormNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv("SLUICE_STORM_NETNS") == "1" {
		if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err != nil || strings.Join(strings.Fields(string(b)), " ") != "40000 40199" {
			t.Fatalf("not in the storm namespace: ip_local_port_range %q, %v", b, err)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace of its own (unshare --net); CI runs it")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare (util-linux) is missing")
	}
	script := `ip link set lo up && echo "40000 40199" > /proc/sys/net/ipv4/ip_local_port_range && exec "$0" "$@"`
	cmd := exec.Command("unshare", "--net", "--", "sh", "-c", script,
		os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "SLUICE_STORM_NETNS=1")
	done := make(chan struct{})
	timer := time.AfterFunc(2*time.Minute, func() {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
		close(done)
	})
	out, err := cmd.CombinedOutput()
	if !timer.Stop() {
		<-done
		t.Fatalf("the namespaced run did not end within 2 minutes:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("namespaced run: %v\n%s", err, out)
	}
	t.Logf("namespaced run passed:\n%s", lastLines(string(out), 6))
	return false
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// lineBackend answers each connection's first line with the same line, then
// waits for a second line and closes first, so that no source port of the
// client or of sluice is left in TIME_WAIT (the backend keeps it, on its own
// listening port): the rounds below reuse ports deterministically.
func lineBackend(t *testing.T) *backend {
	return startBackend(t, listenTCP(t), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(time.Minute))
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := c.Write([]byte(line)); err != nil {
			return
		}
		r.ReadString('\n')
	})
}

// More connections to one backend than the ephemeral range holds, all held
// at once in rounds: 150 players at a time hold 150 client ports (towards
// sluice) and sluice holds 150 source ports towards the backend: 300 ports
// from a 200-port range, 600 connections over 4 rounds. A plain connect
// shares ports across destinations, so every one succeeds; a bind before
// connect (the old dial, Dialer.DialTCP with a zero local address) needs a
// port nobody uses and fails from about the 100th (checked below on a
// control socket, so the test knows it could fail).
func TestStormMoreConnectionsThanSourcePorts(t *testing.T) {
	if !inStormNetns(t) {
		return
	}
	be := lineBackend(t)
	l := startRaw(t, be.addr, "")
	const rounds, held = 4, 150
	total := 0
	for round := range rounds {
		conns := make([]net.Conn, 0, held)
		for i := range held {
			c, err := net.DialTimeout("tcp", l.addr("public").String(), 5*time.Second)
			if err != nil {
				t.Fatalf("round %d, player %d: dial sluice: %v", round, i, err)
			}
			conns = append(conns, c)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			msg := fmt.Sprintf("hello %d %d\n", round, i)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatalf("round %d, player %d: write: %v", round, i, err)
			}
			got, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || got != msg {
				t.Fatalf("round %d, player %d: echo %q, %v (sluice: %v)", round, i, got, err, lastAccess(l))
			}
			total++
		}
		if round == 0 {
			// The control: while the players hold their ports, as many
			// bind-before-connect dials to the backend as sluice made
			// cannot all get a port, so the old dial would have failed.
			if n := bindDials(t, be.addr, held); n >= held {
				t.Fatalf("control: %d bind-before-connect dials succeeded beside %d players: the test could not catch the old dial", n, held)
			} else {
				t.Logf("control: bind-before-connect got %d of %d ports beside %d players", n, held, held)
			}
		}
		// The backend closes first (see lineBackend); each player closes
		// once it has seen that end, so it keeps no TIME_WAIT.
		for _, c := range conns {
			c.Write([]byte("bye\n"))
		}
		for _, c := range conns {
			if b, err := readAllTimeout(c, 20*time.Second); err != nil || len(b) != 0 {
				t.Fatalf("round %d: after bye: %q, %v", round, b, err)
			}
			c.Close()
		}
		waitFor(t, "the round's sessions to end", func() bool { return len(l.accessLines()) == total })
	}
	if total <= stormPorts {
		t.Fatalf("only %d connections: not more than the range", total)
	}
	for _, e := range l.accessLines() {
		if r := fieldOf(e, "reason"); r != string(l4.ReasonEOF) {
			t.Fatalf("a session ended with %v: %v", r, e.ContextMap())
		}
	}
	st := l.rt.Load().Pools["p"].Status()[0]
	if !st.Healthy || st.Failures != 0 {
		t.Fatalf("backend after the storm: healthy %v, failures %d", st.Healthy, st.Failures)
	}
	t.Logf("%d connections through a %d-port range, %d held at once; 0 failed", total, stormPorts, held)
}

// When sluice itself has no source port left towards a backend
// (EADDRNOTAVAIL), the connection fails as local_limit, the attempts are
// counted by reason, and the backend stays UP however many fail (max_fails
// is 1 here): as soon as ports free up, players get through again.
func TestStormLocalFailuresDoNotMarkBackendDown(t *testing.T) {
	if !inStormNetns(t) {
		return
	}
	be := lineBackend(t)
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
plain_route = "raw"
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
max_fails = 1
backends = [{ address = %q }]
`, be.addr))
	// The test itself takes every source port towards the backend.
	var hogs []net.Conn
	defer func() {
		for _, c := range hogs {
			c.Close()
		}
	}()
	for range stormPorts + 50 {
		c, err := net.DialTimeout("tcp", be.addr, 5*time.Second)
		if err != nil {
			if !errors.Is(err, syscall.EADDRNOTAVAIL) {
				t.Fatalf("hog dial: %v, want EADDRNOTAVAIL once the range is used up", err)
			}
			break
		}
		hogs = append(hogs, c)
	}
	if len(hogs) > stormPorts {
		t.Fatalf("%d connections from a %d-port range", len(hogs), stormPorts)
	}
	pool := l.rt.Load().Pools["p"]
	const players = 10
	for i := range players {
		c, err := net.DialTimeout("tcp", l.addr("public").String(), 5*time.Second)
		if err != nil {
			t.Fatalf("dial sluice: %v", err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("hello\n"))
		if b, err := readAllTimeout(c, 10*time.Second); len(b) != 0 {
			t.Fatalf("player %d got %q (%v) with no source port left", i, b, err)
		}
		c.Close()
	}
	lines := l.waitAccess(t, players)
	for _, e := range lines {
		if r := fieldOf(e, "reason"); r != string(l4.ReasonLocalLimit) {
			t.Fatalf("reason %v, want %s: %v", r, l4.ReasonLocalLimit, e.ContextMap())
		}
	}
	st := pool.Status()[0]
	if !st.Healthy || st.Failures != 0 {
		t.Fatalf("after %d local failures: healthy %v, failures %d (max_fails 1)", players, st.Healthy, st.Failures)
	}
	if n := st.LocalFailures[balancer.LocalNoSourcePort]; n < players {
		t.Fatalf("no_source_port failures counted: %d, want >= %d", n, players)
	}
	for _, c := range hogs {
		c.(*net.TCPConn).SetLinger(0) // a reset: no TIME_WAIT keeps the port
		c.Close()
	}
	hogs = nil
	// Ports free up at once (the backend closes first: no TIME_WAIT here),
	// and the backend was never marked down: the next player gets through.
	c, err := net.DialTimeout("tcp", l.addr("public").String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("again\n"))
	if got, err := bufio.NewReader(c).ReadString('\n'); got != "again\n" {
		t.Fatalf("after the ports freed up: %q, %v", got, err)
	}
}

// bindDials opens up to n connections to addr that bind to port 0 before
// connecting (as Dialer.DialTCP with a zero local address does), stops at
// the first EADDRINUSE and returns how many succeeded. It closes them with a
// reset, so that they leave no TIME_WAIT behind.
func bindDials(t *testing.T, addr string, n int) int {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{}, Timeout: 5 * time.Second}
	var conns []*net.TCPConn
	defer func() {
		for _, c := range conns {
			c.SetLinger(0)
			c.Close()
		}
	}()
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Fatalf("control: bind-before-connect failed with %v, want EADDRINUSE", err)
			}
			break
		}
		conns = append(conns, c.(*net.TCPConn))
	}
	return len(conns)
}

func lastAccess(l *lb) any {
	lines := l.accessLines()
	if len(lines) == 0 {
		return nil
	}
	return lines[len(lines)-1].ContextMap()
}

// waitFor polls cond every 10 ms for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
