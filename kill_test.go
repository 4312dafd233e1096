package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runEchoBackend is the test binary re-exec'd as a game server
// (SLUICE_TEST_BACKEND=addr): it answers each read with the same bytes,
// the first answer of a connection prefixed with its id (SLUICE_TEST_ID),
// and a first read of "GET /healthz " with 200 (an HTTP health check),
// until it is killed.
func runEchoBackend(addr string) int {
	id := os.Getenv("SLUICE_TEST_ID")
	// A restart on the same port may find it taken for a moment as the
	// ephemeral source port of one of sluice's outgoing connections.
	ln, err := net.Listen("tcp", addr)
	for deadline := time.Now().Add(5 * time.Second); errors.Is(err, syscall.EADDRINUSE) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 4096)
			prefix := []byte(id)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				if prefix != nil && strings.HasPrefix(string(buf[:n]), "GET /healthz ") {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
					return
				}
				if _, err := c.Write(append(prefix, buf[:n]...)); err != nil {
					return
				}
				prefix = nil
			}
		}()
	}
}

// startEchoProcess runs runEchoBackend in a child process on addr.
func startEchoProcess(t *testing.T, addr, id string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SLUICE_TEST_BACKEND="+addr, "SLUICE_TEST_ID="+id)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	must(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	})
	waitListening(t, addr, &out)
	return cmd
}

// playerConn is a player's connection through sluice to one of the backends.
type playerConn struct {
	c       net.Conn
	backend byte // the id of the backend that answered
}

func openSession(t *testing.T, addr string) (playerConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return playerConn{}, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hi"); err != nil {
		c.Close()
		return playerConn{}, err
	}
	b := make([]byte, 3)
	if _, err := io.ReadFull(c, b); err != nil || string(b[1:]) != "hi" {
		c.Close()
		return playerConn{}, fmt.Errorf("first echo %q: %v", b, err)
	}
	return playerConn{c, b[0]}, nil
}

func (s playerConn) echo() error {
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(s.c, "ping"); err != nil {
		return err
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(s.c, b); err != nil {
		return err
	}
	if string(b) != "ping" {
		return fmt.Errorf("echo %q", b)
	}
	return nil
}

// gameFleet is two game servers, "1" and "2" (child processes running
// runEchoBackend), behind an in-process sluice's plain_route, pool "p".
type gameFleet struct {
	lb      *lb
	addr    string    // sluice's listener
	server1 *exec.Cmd // game server "1"
	addr1   string    // its address
}

// startGameFleet starts the fleet with pool p's health table health and
// waits until both servers are up.
func startGameFleet(t *testing.T, health string) gameFleet {
	t.Helper()
	a1, a2 := freePort(t), freePort(t)
	b1 := startEchoProcess(t, a1, "1")
	startEchoProcess(t, a2, "2")
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
max_connections_per_ip = 0 # tests open many connections from 127.0.0.1
new_connections_per_ip = { rate = 0 }
plain_route = "raw"
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
health = %s
backends = [{ address = %q }, { address = %q }]
`, health, a1, a2))
	b := l.rt.Load().Pools["p"].Backends()
	waitUntil(t, 10*time.Second, "both backends up", func() bool { return b[0].Healthy() && b[1].Healthy() })
	return gameFleet{lb: l, addr: l.addr("public").String(), server1: b1, addr1: a1}
}

// sessions opens n sessions (closed when the test ends) and sorts them by
// the server that answered; round robin must have used both.
func (f gameFleet) sessions(t *testing.T, n int) (on1, on2 []playerConn) {
	t.Helper()
	for i := range n {
		s, err := openSession(t, f.addr)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		t.Cleanup(func() { s.c.Close() })
		if s.backend == '1' {
			on1 = append(on1, s)
		} else {
			on2 = append(on2, s)
		}
	}
	if len(on1) == 0 || len(on2) == 0 {
		t.Fatalf("sessions per backend %d/%d: round robin should use both", len(on1), len(on2))
	}
	return on1, on2
}

// RELIABILITY J1: SIGKILL a game server with live sessions. Its players see
// their connection end at once (here: measured, and bounded generously);
// the other server's players carry on; new players land on the survivor
// with no failure (retries and passive health work before the active check
// says DOWN); the active check marks it DOWN, and after a restart UP, and it
// takes players again.
func TestKillBackendWithLiveSessions(t *testing.T) {
	f := startGameFleet(t, `{ check = "tcp", interval = "200ms", timeout = "200ms", rise = 2, fall = 2 }`)
	addr, b1, a1 := f.addr, f.server1, f.addr1
	pool := f.lb.rt.Load().Pools["p"]
	on1, on2 := f.sessions(t, 100)

	killed := time.Now()
	must(t, b1.Process.Signal(syscall.SIGKILL))
	b1.Wait()

	// Every session of the killed server ends: EOF or reset, no hang.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	hung := 0
	for _, s := range on1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, s.c)
			mu.Lock()
			defer mu.Unlock()
			if os.IsTimeout(err) {
				hung++
			}
			slowest = max(slowest, time.Since(killed))
		}()
	}
	wg.Wait()
	if hung > 0 || slowest > 5*time.Second {
		t.Fatalf("%d of %d sessions of the killed server still open after 10s; the last ended after %v", hung, len(on1), slowest)
	}
	t.Logf("%d sessions of the killed server all ended within %v", len(on1), slowest)

	for i, s := range on2 {
		if err := s.echo(); err != nil {
			t.Fatalf("session %d on the surviving server: %v", i, err)
		}
	}
	for i := range 40 {
		s, err := openSession(t, addr)
		if err != nil {
			t.Fatalf("new player %d after the kill: %v", i, err)
		}
		if s.backend != '2' {
			t.Fatalf("new player %d answered by %q", i, s.backend)
		}
		s.c.Close()
	}
	waitUntil(t, 10*time.Second, "killed backend DOWN", func() bool { return !pool.Backends()[0].Healthy() })
	t.Logf("DOWN %v after the kill", time.Since(killed))

	startEchoProcess(t, a1, "1")
	restarted := time.Now()
	waitUntil(t, 10*time.Second, "restarted backend UP", func() bool { return pool.Backends()[0].Healthy() })
	t.Logf("UP %v after the restart", time.Since(restarted))
	seen1 := false
	for range 10 {
		s, err := openSession(t, addr)
		if err != nil {
			t.Fatal(err)
		}
		seen1 = seen1 || s.backend == '1'
		s.c.Close()
	}
	if !seen1 {
		t.Fatal("the restarted backend takes no players")
	}
}

// RELIABILITY J3: SIGSTOP a game server (a long GC pause, a frozen VM),
// then SIGCONT. Its sessions survive (they are under idle_timeout and
// write_stall_timeout), a message sent while it is stopped is answered
// after; the HTTP health check marks it DOWN, new players go to the other
// server meanwhile, and it is UP again after SIGCONT. No session moves.
func TestStopBackendThenContinue(t *testing.T) {
	f := startGameFleet(t, `{ check = "http", path = "/healthz", interval = "200ms", timeout = "200ms", rise = 2, fall = 2 }`)
	addr, b1 := f.addr, f.server1
	b := f.lb.rt.Load().Pools["p"].Backends()
	on1, on2 := f.sessions(t, 10)

	must(t, b1.Process.Signal(syscall.SIGSTOP))
	stopped := time.Now()
	continued := false
	defer func() {
		if !continued {
			b1.Process.Signal(syscall.SIGCONT)
		}
	}()
	// A message to the stopped server waits in the kernel.
	s := on1[0]
	s.c.SetDeadline(time.Now().Add(20 * time.Second))
	_, err := io.WriteString(s.c, "ping")
	must(t, err)
	waitUntil(t, 10*time.Second, "stopped backend DOWN", func() bool { return !b[0].Healthy() })
	t.Logf("DOWN %v after SIGSTOP", time.Since(stopped))
	for i := range 10 {
		ns, err := openSession(t, addr)
		if err != nil || ns.backend != '2' {
			t.Fatalf("new player %d while server 1 is stopped: backend %q, %v", i, ns.backend, err)
		}
		ns.c.Close()
	}
	for i, s := range on2 {
		if err := s.echo(); err != nil {
			t.Fatalf("session %d on the running server: %v", i, err)
		}
	}

	must(t, b1.Process.Signal(syscall.SIGCONT))
	continued = true
	resumed := time.Now()
	got := make([]byte, 4)
	if _, err := io.ReadFull(s.c, got); err != nil || string(got) != "ping" {
		t.Fatalf("the message sent during the stop: %q, %v", got, err)
	}
	for i, s := range on1 {
		if err := s.echo(); err != nil {
			t.Fatalf("session %d on the resumed server: %v", i, err)
		}
	}
	waitUntil(t, 10*time.Second, "resumed backend UP", func() bool { return b[0].Healthy() })
	t.Logf("UP %v after SIGCONT", time.Since(resumed))
}

// RELIABILITY J2: SIGKILL sluice itself. The game server and the player
// see their connections end, and a restarted sluice binds the same port at
// once and serves.
func TestKillSluice(t *testing.T) {
	ended := make(chan time.Time, 4)
	be := startBackend(t, listenTCP(t), func(c net.Conn) {
		buf := make([]byte, 4096)
		prefix := []byte("1")
		for {
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				if prefix == nil { // a session, not sluice's start-up probe
					ended <- time.Now()
				}
				return
			}
			c.Write(append(prefix, buf[:n]...))
			prefix = nil
		}
	})
	laddr := freePort(t)
	cfg := fmt.Sprintf(`
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
health = { check = "none" }
backends = [{ address = %q }]
`, laddr, be.addr)
	cmd, out := startProcess(t, cfg, 0)
	waitListening(t, laddr, out)
	s, err := openSession(t, laddr)
	must(t, err)
	defer s.c.Close()

	killed := time.Now()
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	cmd.Wait()
	select {
	case at := <-ended:
		t.Logf("the game server saw the session end %v after the kill", at.Sub(killed))
	case <-time.After(10 * time.Second):
		t.Fatal("the game server's connection outlived sluice by 10s")
	}
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, s.c); os.IsTimeout(err) {
		t.Fatal("the player's connection outlived sluice by 10s")
	}

	_, out2 := startProcess(t, cfg, 0)
	restarted := time.Now()
	waitListening(t, laddr, out2)
	t.Logf("a restarted sluice listened on the same port after %v", time.Since(restarted))
	s2, err := openSession(t, laddr)
	if err != nil {
		t.Fatalf("restarted sluice: %v\n%s", err, out2.String())
	}
	s2.c.Close()
}

// waitUntil polls cond every 20 ms for up to d and returns how long it took.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}
