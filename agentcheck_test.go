package main

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sluice/balancer/balancertest"
)

// Agent checks through a running sluice (issue 12, part 5): the pool's
// agent key, the state API, the metrics and the log lines.

// gameAgent is a game server's agent (HAProxy agent-check protocol): every
// connection gets the current answer, then is closed.
type gameAgent struct {
	addr  string
	mu    sync.Mutex
	ln    net.Listener
	ans   string
	asked atomic.Int64
	wg    sync.WaitGroup
}

// startGameAgent serves answer on addr until stop or the test's end.
func startGameAgent(t testing.TB, addr, answer string) *gameAgent {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	a := &gameAgent{addr: addr, ln: ln, ans: answer}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.asked.Add(1)
			a.mu.Lock()
			ans := a.ans
			a.mu.Unlock()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			io.WriteString(c, ans)
			c.Close()
		}
	}()
	t.Cleanup(a.stop)
	return a
}

func (a *gameAgent) set(answer string) {
	a.mu.Lock()
	a.ans = answer
	a.mu.Unlock()
}

// stop closes the listener: the agent is unreachable.
func (a *gameAgent) stop() {
	a.mu.Lock()
	if a.ln != nil {
		a.ln.Close()
		a.ln = nil
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// echoOn is an echo backend listening on host.
func echoOn(t *testing.T, host string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	return startBackend(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.Copy(c, c)
	})
}

func TestAgentThroughSluice(t *testing.T) {
	t.Parallel()
	h1, h2 := "127.0.0.41", "127.0.0.42"
	port := balancertest.SharedPort(t, h1, h2)
	b1, b2 := echoOn(t, h1), echoOn(t, h2)
	a1 := startGameAgent(t, net.JoinHostPort(h1, strconv.Itoa(port)), "drain maxconn:5 load:2 # deploying\n")
	a2 := startGameAgent(t, net.JoinHostPort(h2, strconv.Itoa(port)), "ready 50% bogus\n")
	l := startAdmin(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
plain_route = "raw"
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
agent = { port = %d, interval = "100ms" }
backends = [{ id = "gs-1", address = %q, max_connections = 10 }, { id = "gs-2", address = %q }]
`, port, b1.addr, b2.addr), nil)

	waitUntil(t, 10*time.Second, "both agents asked twice", func() bool { return a1.asked.Load() >= 2 && a2.asked.Load() >= 2 })
	var g1, g2 *backendJSON
	waitUntil(t, 10*time.Second, "the agents' state in the API", func() bool {
		st := l.state(t)
		g1, g2 = findBackend(st, "p", b1.addr), findBackend(st, "p", b2.addr)
		return g1.Agent != nil && g1.Agent.Reports > 0 && g2.Agent != nil && g2.Agent.Errors > 0
	})
	if g1.State != "drain" || g1.OperatorState != "ready" || g1.Agent.State != "drain" || g1.EffectiveMaxConnections != 5 ||
		g1.MaxConnections != 10 || *g1.Agent.MaxConnections != 5 || *g1.Agent.Load != 2 || g1.Agent.Description != "deploying" ||
		g1.Agent.LastReport != "drain maxconn:5 load:2 # deploying" {
		t.Errorf("gs-1: %+v, agent %+v", g1, g1.Agent)
	}
	if g2.State != "ready" || g2.Agent.Weight != 1 || g2.Agent.WeightPercent != nil || !strings.HasPrefix(g2.Agent.LastError, `invalid: unknown word "bogus"`) {
		t.Errorf("gs-2 (answer ignored): %+v, agent %+v", g2, g2.Agent)
	}

	// New players avoid the backend its agent drains.
	for range 5 {
		c := dial(t, l.addr("public"))
		echoOnce(t, c)
		c.Close()
	}
	if b1.accepts() != 0 || b2.accepts() != 5 {
		t.Errorf("players on gs-1 / gs-2: %d / %d", b1.accepts(), b2.accepts())
	}

	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sluice_backend_agent_maxconn", []string{"backend=gs-1"}, 5},
		{"sluice_backend_agent_load", []string{"backend=gs-1"}, 2},
		{"sluice_backend_agent_state", []string{"backend=gs-1", "state=drain"}, 1},
		{"sluice_backend_admin_state", []string{"backend=gs-1", "state=drain"}, 1},
		{"sluice_backend_agent_down", []string{"backend=gs-1"}, 0},
		{"sluice_backend_agent_weight", []string{"backend=gs-2"}, 1},
		{"sluice_backend_agent_maxconn", []string{"backend=gs-2"}, 0},
	} {
		if got := value(t, l.m, m.name, append(m.labels, "pool=p")...); got != m.want {
			t.Errorf("%s{%s} = %v, want %v", m.name, strings.Join(m.labels, ","), got, m.want)
		}
	}
	if v := value(t, l.m, "sluice_agent_errors_total", "pool=p", "backend=gs-2", "reason=invalid"); v < 2 {
		t.Errorf("sluice_agent_errors_total{gs-2,invalid} = %v", v)
	}
	if v := value(t, l.m, "sluice_agent_reports_total", "pool=p", "backend=gs-1"); v < 2 {
		t.Errorf("sluice_agent_reports_total{gs-1} = %v", v)
	}
	if _, ok := lookup(gather(t, l.m), "sluice_backend_agent_load", "backend=gs-2"); ok {
		t.Error("a load for gs-2, whose agent reported none")
	}

	// The agent comes back to ready; the other one is fixed.
	a1.set("ready\n")
	a2.set("up 50%\n")
	waitUntil(t, 10*time.Second, "the agents' new answers", func() bool {
		st := l.state(t)
		g1, g2 = findBackend(st, "p", b1.addr), findBackend(st, "p", b2.addr)
		return g1.State == "ready" && g2.Agent.LastError == "" && g2.Agent.Weight == 0.5
	})
	// Logged: the agent's drain and ready, and gs-2's bad answer once for
	// its streak, then its recovery.
	changed := l.logs.FilterMessage("agent changed backend state").AllUntimed()
	ignored := l.logs.FilterMessage("agent answer ignored").AllUntimed()
	var drains, readies, recovered int
	for _, e := range changed {
		r, _ := fieldOf(e, "reason").(string)
		switch {
		case fieldOf(e, "backend") == "gs-1" && strings.Contains(r, "agent state drain"):
			drains++
		case fieldOf(e, "backend") == "gs-1" && strings.Contains(r, "agent state ready"):
			readies++
		case fieldOf(e, "backend") == "gs-2" && strings.Contains(r, "answering again"):
			recovered++
		}
	}
	if drains != 1 || readies != 1 || recovered != 1 || len(ignored) != 1 || fieldOf(ignored[0], "backend") != "gs-2" {
		t.Errorf("log lines: %d drain, %d ready, %d recovered, %d ignored", drains, readies, recovered, len(ignored))
	}
}

// TestAgentConfigKeys: the agent key's checks, each with its key path.
func TestAgentConfigKeys(t *testing.T) {
	for _, tc := range []struct{ agent, want string }{
		{`{ interval = "2s" }`, "pools.p.agent.port: want the agent's TCP port"},
		{`{ port = 70000 }`, "pools.p.agent.port: want the agent's TCP port"},
		{`{ port = 7001, interval = "2s", timeout = "3s" }`, "pools.p.agent.timeout: 3s is longer than the interval 2s"},
		{`{ port = 7001, interval = "10ms" }`, `pools.p.agent.interval: must be at least 100ms, got "10ms"`},
		{`{ port = 7001, interval = "soon" }`, `pools.p.agent.interval: invalid duration "soon"`},
		{`{ port = 7001, hello = 1 }`, "hello"},
	} {
		c, err := DecodeConfig([]byte(`
[listeners.l]
address = "127.0.0.1:0"
plain_route = "r"
[routes.r]
listener = "l"
pool = "p"
[pools.p]
backends = [{ address = "127.0.0.1:9001" }]
agent = ` + tc.agent + "\n"))
		if err == nil {
			_, err = c.Compile()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("agent = %s: %v, want %q", tc.agent, err, tc.want)
		}
	}
	// A 500ms interval without a timeout: the timeout is the interval.
	c, err := DecodeConfig([]byte(`
[listeners.l]
address = "127.0.0.1:0"
plain_route = "r"
[routes.r]
listener = "l"
pool = "p"
[pools.p]
backends = [{ address = "127.0.0.1:9001" }]
agent = { port = 7001, interval = "500ms" }
`))
	must(t, err)
	cc, err := c.Compile()
	must(t, err)
	if a := cc.poolSpecs["p"].Agent; a.Port != 7001 || a.Interval != 500*time.Millisecond || a.Timeout != 500*time.Millisecond {
		t.Errorf("compiled agent %+v", a)
	}
}
