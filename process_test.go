package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sluice/balancer/balancertest"
)

// syncBuffer collects a subprocess's output safely.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startProcess runs sluice as a subprocess (this test binary re-exec'd) on
// cfg, with an optional open-file limit, and stops it when the test ends.
func startProcess(t *testing.T, cfg string, nofile int) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sluice.toml")
	must(t, os.WriteFile(path, []byte(cfg), 0o644))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SLUICE_TEST_MAIN=1", "SLUICE_TEST_ARGS=-config "+path)
	if nofile > 0 {
		cmd.Env = append(cmd.Env, "SLUICE_TEST_NOFILE="+strconv.Itoa(nofile))
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	must(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	})
	return cmd, out
}

// freePort returns a loopback address that was free a moment ago.
func freePort(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(balancertest.FreePort(t, "127.0.0.1")))
}

// waitListening waits until sluice accepts on addr, for up to 30 s: a
// child process on a loaded machine once had not written its first log
// line after 5 s. addr is a port freePort released, and a dial to a free
// ephemeral port on loopback can connect to itself (TCP simultaneous open):
// such a dial is not sluice (TestSIGHUPReloads once rewrote its config
// before sluice had read the first one).
func waitListening(t *testing.T, addr string, out *syncBuffer) {
	t.Helper()
	for i := 0; i < 1200; i++ {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			self := c.LocalAddr().String() == c.RemoteAddr().String()
			c.Close()
			if !self {
				return
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("sluice did not listen on %s:\n%s", addr, out.String())
}

// cpuTicks is the user+system CPU time of a process, in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	must(t, err)
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}

// Out of file descriptors, the accept loop backs off instead of spinning,
// logs about once a second, and recovers when descriptors free up
// (RELIABILITY rule 9, T18, E1).
func TestAcceptBacksOffOnEMFILE(t *testing.T) {
	be := echoBackend(t)
	addr := freePort(t)
	cmd, out := startProcess(t, fmt.Sprintf(`
max_connections = 1000 # deliberately above what 64 descriptors allow
[admin]
listen = "off"
[log]
level = "warn"
[listeners.public]
address = %q
max_connections_per_ip = 0 # tests open many connections from 127.0.0.1
new_connections_per_ip = { rate = 0 }
plain_route = "raw"
hello_timeout = "60s" # silent clients each hold a descriptor
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
backends = [{ address = %q }]
`, addr, be.addr), 64)
	waitListening(t, addr, out)

	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range 100 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			continue // the backlog may fill: that is the kernel's to refuse
		}
		clients = append(clients, c)
	}
	time.Sleep(500 * time.Millisecond)
	ticks0, lines0 := cpuTicks(t, cmd.Process.Pid), strings.Count(out.String(), "accept failed")
	time.Sleep(2 * time.Second)
	ticks, lines := cpuTicks(t, cmd.Process.Pid)-ticks0, strings.Count(out.String(), "accept failed")-lines0
	if lines0 == 0 {
		t.Fatalf("the descriptor limit was never hit; the test proves nothing:\n%s", out.String())
	}
	// A spinning loop burns the whole 2 s (200 ticks at 100 Hz); backing off
	// costs a few. The bound is deliberately loose for a shared machine.
	if ticks > 100 {
		t.Errorf("sluice used %d CPU ticks in 2 s while out of descriptors: the accept loop spins", ticks)
	}
	if lines > 4 {
		t.Errorf("%d 'accept failed' lines in 2 s, want about one per second", lines)
	}

	for _, c := range clients {
		c.Close()
	}
	clients = nil
	// Recovered: a new client is served.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			c.Write([]byte("ping"))
			b := make([]byte, 4)
			_, err = io.ReadFull(c, b)
			c.Close()
			if err == nil && string(b) == "ping" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after descriptors freed: %v\n%s", err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SIGTERM: new connections are refused at once, live ones continue until
// drain_timeout and are then closed, and sluice exits 0 (RELIABILITY T25).
func TestSIGTERMDrains(t *testing.T) {
	t.Parallel()
	be := echoBackend(t)
	addr := freePort(t)
	cmd, out := startProcess(t, fmt.Sprintf(`
drain_timeout = "3s"
[admin]
listen = "off"
[listeners.public]
address = %q
max_connections_per_ip = 0 # tests open many connections from 127.0.0.1
new_connections_per_ip = { rate = 0 }
plain_route = "raw"
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
backends = [{ address = %q }]
`, addr, be.addr), 0)
	waitListening(t, addr, out)

	live, err := net.Dial("tcp", addr)
	must(t, err)
	defer live.Close()
	echo := func() error {
		live.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := live.Write([]byte("ping")); err != nil {
			return err
		}
		_, err := io.ReadFull(live, make([]byte, 4))
		return err
	}
	must(t, echo())

	start := time.Now()
	must(t, cmd.Process.Signal(syscall.SIGTERM))
	// Listeners close at once.
	refused := false
	for i := 0; i < 100 && !refused; i++ {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err != nil {
			refused = true
		} else {
			c.Close()
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !refused {
		t.Fatal("still accepting after SIGTERM")
	}
	// The live session keeps flowing during the drain...
	if err := echo(); err != nil {
		t.Fatalf("live session broken during drain: %v\n%s", err, out.String())
	}
	// ...and is closed when drain_timeout ends.
	live.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(live); err != nil {
		t.Fatalf("live session at drain end: %v", err)
	}
	if el := time.Since(start); el < 2900*time.Millisecond {
		t.Fatalf("session closed after %v, before drain_timeout", el)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sluice did not exit after the drain")
	}
	if !strings.Contains(out.String(), `"reason":"drain"`) {
		t.Fatalf("no access line with reason drain:\n%s", out.String())
	}
}

// SIGHUP reloads the file: an added listener starts serving, the existing
// one keeps its socket.
func TestSIGHUPReloads(t *testing.T) {
	t.Parallel()
	be := echoBackend(t)
	a1, a2 := freePort(t), freePort(t)
	cfg := func(extra string) string {
		return fmt.Sprintf(`
[admin]
listen = "off"
[listeners.one]
address = %q
max_connections_per_ip = 0 # tests open many connections from 127.0.0.1
new_connections_per_ip = { rate = 0 }
plain_route = "r1"
[routes.r1]
listener = "one"
pool = "p"
[pools.p]
backends = [{ address = %q }]
`, a1, be.addr) + extra
	}
	cmd, out := startProcess(t, cfg(""), 0)
	waitListening(t, a1, out)
	path := strings.Fields(cmdEnv(cmd, "SLUICE_TEST_ARGS"))[1]
	must(t, os.WriteFile(path, []byte(cfg(fmt.Sprintf(`
[listeners.two]
address = %q
max_connections_per_ip = 0 # tests open many connections from 127.0.0.1
new_connections_per_ip = { rate = 0 }
plain_route = "r2"
[routes.r2]
listener = "two"
pool = "p"
`, a2))), 0o644))
	must(t, cmd.Process.Signal(syscall.SIGHUP))
	waitListening(t, a2, out)
	c, err := net.Dial("tcp", a2)
	must(t, err)
	defer c.Close()
	echoOnce(t, c)
	if !strings.Contains(out.String(), `"msg":"config reloaded"`) {
		t.Fatalf("no reload line:\n%s", out.String())
	}
}

func cmdEnv(cmd *exec.Cmd, key string) string {
	for _, kv := range cmd.Env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}
