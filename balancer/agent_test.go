package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"sluice/balancer/balancertest"
)

// Agent checks (issue 12, part 5) and placement that N instances agree on
// (part 6), with real sockets: each backend is a sink on its own loopback
// host (127.0.0.N), its agent a listener on the same host and the pool's
// agent port.

func TestParseAgentLine(t *testing.T) {
	unset := AgentReport{Weight: -1, MaxConn: -1, Load: -1}
	with := func(f func(*AgentReport)) AgentReport {
		r := unset
		f(&r)
		return r
	}
	for _, tc := range []struct {
		line string
		want AgentReport
	}{
		{"", unset},
		{" \t, ", unset},
		{"ready", with(func(r *AgentReport) { r.State, r.HasState = Ready, true })},
		{"DRAIN", with(func(r *AgentReport) { r.State, r.HasState = Drain, true })},
		{"maint", with(func(r *AgentReport) { r.State, r.HasState = Maint, true })},
		{"up", with(func(r *AgentReport) { r.Health = AgentUp })},
		{"down", with(func(r *AgentReport) { r.Health = AgentDown })},
		{"fail", with(func(r *AgentReport) { r.Health = AgentDown })},
		{"Stopped # game over", with(func(r *AgentReport) { r.Health, r.Description = AgentDown, "game over" })},
		{"ready 80% maxconn:120", with(func(r *AgentReport) {
			r.State, r.HasState, r.Weight, r.MaxConn = Ready, true, 80, 120
		})},
		{"up,ready,75%,maxconn:30,load:12", with(func(r *AgentReport) {
			r.Health, r.State, r.HasState, r.Weight, r.MaxConn, r.Load = AgentUp, Ready, true, 75, 30, 12
		})},
		{"weight:50%", with(func(r *AgentReport) { r.Weight = 50 })},
		{"weight:7", with(func(r *AgentReport) { r.Weight, r.WeightAbsolute = 7, true })},
		{"weight:7 30%", with(func(r *AgentReport) { r.Weight = 30 })}, // the last wins
		{"drain ready", with(func(r *AgentReport) { r.State, r.HasState = Ready, true })},
		{"down up", with(func(r *AgentReport) { r.Health = AgentUp })},
		{"maxconn:0", with(func(r *AgentReport) { r.MaxConn = 0 })},
		{"0%", with(func(r *AgentReport) { r.Weight = 0 })},
		{"ready # \x01bell", with(func(r *AgentReport) { r.State, r.HasState, r.Description = Ready, true, "?bell" })},
	} {
		got, err := ParseAgentLine(tc.line)
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%q:\n got %+v\nwant %+v", tc.line, got, tc.want)
		}
		again, err := ParseAgentLine(got.String())
		if err != nil || again != got {
			t.Errorf("%q: canonical %q parses to %+v, %v", tc.line, got.String(), again, err)
		}
	}
	for _, bad := range []string{
		"readyy", "ready bogus", "down#broken", "80", "%", "80%%", "-5%", "1234567%", "weight:", "weight:1001",
		"weight:x", "maxconn:", "maxconn:-1", "maxconn:1e3", "maxconn:1234567890", "load:", "load:x",
		"up:1", "ready\x00", "SSH-2.0-OpenSSH_9.6", "HTTP/1.1 400 Bad Request",
	} {
		_, err := ParseAgentLine(bad)
		var ae *AgentError
		if !errors.As(err, &ae) || ae.Reason != AgentInvalid {
			t.Errorf("%q: err %v, want an AgentInvalid error", bad, err)
		}
	}
}

func TestReadAgentLine(t *testing.T) {
	long := strings.Repeat("x", MaxAgentLine)
	for _, tc := range []struct {
		in, want string
		reason   AgentErrorReason
	}{
		{"ready\n", "ready", agentOK},
		{"ready 50%\r\n", "ready 50%", agentOK},
		{"drain\rmore\n", "drain", agentOK},
		{"\n", "", agentOK},
		{long + "\n", long, agentOK},
		{long + "x\n", "", AgentTooLong},
		{long + long, "", AgentTooLong},
		{"ready", "", AgentIncomplete},
		{"", "", AgentIncomplete},
	} {
		for _, split := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.in)
			if split {
				r = iotest.OneByteReader(r)
			}
			got, err := readAgentLine(r)
			var ae *AgentError
			switch {
			case tc.reason == agentOK && (err != nil || got != tc.want):
				t.Errorf("%.20q (split %v): %q, %v; want %q", tc.in, split, got, err, tc.want)
			case tc.reason != agentOK && (!errors.As(err, &ae) || ae.Reason != tc.reason):
				t.Errorf("%.20q (split %v): %q, %v; want a %v error", tc.in, split, got, err, tc.reason)
			}
		}
	}
	// A reset before the line end is incomplete too.
	_, err := readAgentLine(iotest.ErrReader(errors.New("connection reset by peer")))
	if ae := (*AgentError)(nil); !errors.As(err, &ae) || ae.Reason != AgentIncomplete {
		t.Errorf("reset: %v", err)
	}
	// No line end before the deadline: timeout.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { _, _ = b.Write([]byte("ready")) }()
	_ = a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = readAgentLine(a)
	if ae := (*AgentError)(nil); !errors.As(err, &ae) || ae.Reason != AgentTimeout {
		t.Errorf("deadline: %v", err)
	}
}

// agentServer is a backend's agent: every connection gets the current
// answer, then is closed, or with hold kept open until the peer closes.
type agentServer struct {
	t     testing.TB
	addr  string
	mu    sync.Mutex
	ln    net.Listener
	ans   string
	hold  bool
	asked atomic.Int64
	wg    sync.WaitGroup
	conns map[net.Conn]bool
}

func startAgent(t testing.TB, host string, port int, answer string) *agentServer {
	t.Helper()
	a := &agentServer{t: t, addr: net.JoinHostPort(host, strconv.Itoa(port)), ans: answer, conns: map[net.Conn]bool{}}
	a.listen()
	t.Cleanup(a.stop)
	return a
}

func (a *agentServer) listen() {
	a.t.Helper()
	ln, err := net.Listen("tcp", a.addr)
	for i := 0; err != nil && i < 100; i++ { // a restart may find the port in TIME_WAIT use
		time.Sleep(20 * time.Millisecond)
		ln, err = net.Listen("tcp", a.addr)
	}
	if err != nil {
		a.t.Fatal(err)
	}
	a.mu.Lock()
	a.ln = ln
	a.mu.Unlock()
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
			ans, hold := a.ans, a.hold
			a.conns[c] = true
			a.mu.Unlock()
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				_, _ = io.WriteString(c, ans)
				if hold {
					_, _ = io.Copy(io.Discard, c) // until sluice gives up and closes
				}
				c.Close()
				a.mu.Lock()
				delete(a.conns, c)
				a.mu.Unlock()
			}()
		}
	}()
}

// set changes the answer; hold keeps connections open after it.
func (a *agentServer) set(answer string, hold bool) {
	a.mu.Lock()
	a.ans, a.hold = answer, hold
	a.mu.Unlock()
}

// stop closes the listener and every connection (the agent is gone).
func (a *agentServer) stop() {
	a.mu.Lock()
	if a.ln != nil {
		a.ln.Close()
		a.ln = nil
	}
	for c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// hostSink is a sink on host (a 127.0.0.N address).
func hostSink(t testing.TB, host string) *sink {
	t.Helper()
	s := &sink{t: t, conns: map[net.Conn]struct{}{}}
	s.listen(host + ":0")
	t.Cleanup(s.stop)
	return s
}

// agentFleet is n backends on hosts 127.0.0.(base+i), each with an agent
// answering answer on one port.
type agentFleet struct {
	sinks  []*sink
	agents []*agentServer
	port   int
}

func startAgentFleet(t testing.TB, base, n int, answer string) *agentFleet {
	t.Helper()
	hosts := make([]string, n)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("127.0.0.%d", base+i)
	}
	f := &agentFleet{port: balancertest.SharedPort(t, hosts...)}
	for _, h := range hosts {
		f.sinks = append(f.sinks, hostSink(t, h))
		f.agents = append(f.agents, startAgent(t, h, f.port, answer))
	}
	return f
}

func (f *agentFleet) configs() []BackendConfig { return sinkConfigs(f.sinks) }

// agentCfg is a fast agent for tests.
func (f *agentFleet) agentCfg() AgentConfig {
	return AgentConfig{Port: f.port, Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond}
}

// statusOf returns b's status in p.
func statusOf(p *Pool, id string) BackendStatus {
	for _, st := range p.Status() {
		if st.ID == id {
			return st
		}
	}
	return BackendStatus{}
}

// reportsOf returns how many answers b's agent had applied.
func reportsOf(p *Pool, id string) uint64 {
	if a := statusOf(p, id).Agent; a != nil {
		return a.Reports
	}
	return 0
}

// waitReports waits until b's agent applied n more answers than now.
func waitReports(t testing.TB, p *Pool, id string, n uint64) {
	t.Helper()
	from := reportsOf(p, id)
	waitFor(t, 5*time.Second, fmt.Sprintf("%d answers from %s's agent", n, id), func() bool { return reportsOf(p, id) >= from+n })
}

// TestAgentState: drain, maint and ready from the agent apply to new
// players; the agent's flags and the operator's are separate, and the
// stricter is in force; an agent's 0% drains.
func TestAgentState(t *testing.T) {
	f := startAgentFleet(t, 20, 2, "ready up 100%\n")
	var ev events
	p := mustPool(t, PoolConfig{Name: "ag", Backends: f.configs(), Agent: f.agentCfg(), OnChange: ev.record})
	p.Start()
	defer p.Close()
	a, b := p.backends()[0], p.backends()[1]
	waitReports(t, p, a.ID(), 1)

	f.agents[0].set("drain\n", false)
	waitFor(t, 5*time.Second, "the agent's drain", func() bool { return a.AdminState() == Drain })
	for range 20 {
		if got := dialDone(t, p, DialRequest{}); got != b {
			t.Fatalf("a new player went to the draining %s", got.ID())
		}
	}
	st := statusOf(p, a.ID())
	if st.OperatorState != Ready || st.Agent == nil || st.Agent.State != Drain || st.Agent.LastReport != "drain" {
		t.Fatalf("status %+v, agent %+v", st, st.Agent)
	}
	// The operator's ready does not undo the agent's drain.
	must(t, p.SetState(a.ID(), Ready))
	if a.AdminState() != Drain {
		t.Fatalf("the operator's ready undid the agent's drain: %v", a.AdminState())
	}
	// The agent's maint is stricter than the operator's drain.
	must(t, p.SetState(a.ID(), Drain))
	f.agents[0].set("maint\n", false)
	waitFor(t, 5*time.Second, "the agent's maint", func() bool { return a.AdminState() == Maint })
	// The agent's ready does not undo the operator's drain.
	f.agents[0].set("ready\n", false)
	waitReports(t, p, a.ID(), 2)
	if a.AdminState() != Drain || p.OperatorState(a) != Drain {
		t.Fatalf("after the agent's ready over the operator's drain: %v / %v", a.AdminState(), p.OperatorState(a))
	}
	must(t, p.SetState(a.ID(), Ready))
	if a.AdminState() != Ready {
		t.Fatalf("both ready: %v", a.AdminState())
	}
	// 0 % is drain; a weight again is ready.
	f.agents[0].set("0%\n", false)
	waitFor(t, 5*time.Second, "0% as drain", func() bool { return a.AdminState() == Drain })
	f.agents[0].set("100%\n", false)
	waitFor(t, 5*time.Second, "100% as ready", func() bool { return a.AdminState() == Ready })

	var agentEvents int
	for _, e := range ev.list() {
		if e.Kind == EventAgent && e.Backend == a.ID() {
			agentEvents++
		}
	}
	if agentEvents < 4 {
		t.Errorf("%d agent events for drain, maint, ready, 0%%, 100%%: %v", agentEvents, ev.list())
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestAgentDownUp: the agent's down marks a backend DOWN whatever the
// checks say; its up brings it back only while the checks pass; an agent
// that cannot be reached changes nothing.
func TestAgentDownUp(t *testing.T) {
	f := startAgentFleet(t, 30, 1, "up\n")
	var checkFails atomic.Bool
	var ev events
	p := mustPool(t, PoolConfig{
		Name: "ag", Backends: f.configs(), Agent: f.agentCfg(), OnChange: ev.record,
		Health: HealthConfig{Interval: 20 * time.Millisecond, Rise: 1, Fall: 1, checkFunc: func(context.Context, *Backend) error {
			if checkFails.Load() {
				return errors.New("scripted failure")
			}
			return nil
		}},
	})
	p.Start()
	defer p.Close()
	b := p.backends()[0]
	waitReports(t, p, b.ID(), 1)

	f.agents[0].set("down # out of memory\n", false)
	waitFor(t, 5*time.Second, "the agent's down", func() bool { return !b.Healthy() })
	if _, err := p.Dial(context.Background(), DialRequest{}); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("dial with the only backend down: %v", err)
	}
	if st := statusOf(p, b.ID()); !st.Agent.Down || st.Agent.Description != "out of memory" {
		t.Fatalf("agent status %+v", st.Agent)
	}
	// Checks failing, then the agent's up: still DOWN.
	checkFails.Store(true)
	time.Sleep(100 * time.Millisecond)
	f.agents[0].set("up\n", false)
	waitReports(t, p, b.ID(), 2)
	if b.Healthy() {
		t.Fatal("the agent's up overrode failing checks")
	}
	// Checks pass again: UP.
	checkFails.Store(false)
	waitFor(t, 5*time.Second, "UP once the checks pass", b.Healthy)

	// Down, then the agent vanishes: still DOWN (nothing changes).
	f.agents[0].set("down\n", false)
	waitFor(t, 5*time.Second, "down again", func() bool { return !b.Healthy() })
	f.agents[0].stop()
	waitFor(t, 5*time.Second, "connect errors", func() bool { return statusOf(p, b.ID()).Agent.Errors[AgentConnect] >= 3 })
	if b.Healthy() {
		t.Fatal("an unreachable agent undid its down")
	}
	var downs, ups int
	for _, e := range ev.list() {
		if e.Kind == EventHealth && strings.Contains(e.Reason, "agent reports") {
			if e.Healthy {
				ups++
			} else {
				downs++
			}
		}
	}
	if downs != 2 {
		t.Errorf("%d DOWN events from the agent, want 2: %v", downs, ev.list())
	}
}

// TestAgentSlots: maxconn caps this instance's connections (the lower of
// it and max_connections), maxconn:0 lifts the agent's cap, and load >=
// maxconn is full for every instance.
func TestAgentSlots(t *testing.T) {
	f := startAgentFleet(t, 40, 1, "maxconn:1\n")
	cfgs := f.configs()
	cfgs[0].MaxConnections = 3
	p := mustPool(t, PoolConfig{Name: "ag", Backends: cfgs, Agent: f.agentCfg()})
	p.Start()
	defer p.Close()
	b := p.backends()[0]
	waitFor(t, 5*time.Second, "maxconn:1", func() bool { return b.EffectiveMaxConnections() == 1 })
	dialHold(t, p, DialRequest{})
	if _, err := p.Dial(context.Background(), DialRequest{}); !errors.Is(err, ErrFull) {
		t.Fatalf("a 2nd player with maxconn:1: %v", err)
	}
	f.agents[0].set("maxconn:0\n", false)
	waitFor(t, 5*time.Second, "maxconn:0", func() bool { return b.EffectiveMaxConnections() == 3 })
	dialHold(t, p, DialRequest{})
	dialHold(t, p, DialRequest{})
	if _, err := p.Dial(context.Background(), DialRequest{}); !errors.Is(err, ErrFull) {
		t.Fatalf("a 4th player over max_connections = 3 with maxconn:0: %v", err)
	}
	f.agents[0].set("maxconn:50\n", false)
	waitReports(t, p, b.ID(), 2)
	if got := b.EffectiveMaxConnections(); got != 3 {
		t.Fatalf("maxconn:50 over max_connections = 3: cap %d", got)
	}
	// Full by the server's own count, whatever this instance holds.
	f.agents[0].set("maxconn:50 load:50\n", false)
	waitFor(t, 5*time.Second, "full by load", func() bool { return statusOf(p, b.ID()).Agent.Full })
	for _, l := range slices.Clone(b.liveLeases()) {
		l.Conn.Close()
		l.Release()
	}
	if _, err := p.Dial(context.Background(), DialRequest{}); !errors.Is(err, ErrFull) {
		t.Fatalf("a player while the agent reports load:50 of maxconn:50: %v", err)
	}
	f.agents[0].set("maxconn:50 load:49\n", false)
	waitFor(t, 5*time.Second, "a slot free", func() bool { return !statusOf(p, b.ID()).Agent.Full })
	dialDone(t, p, DialRequest{})
}

// liveLeases lists b's live leases (tests).
func (b *Backend) liveLeases() []*Lease {
	b.live.lmu.Lock()
	defer b.live.lmu.Unlock()
	var out []*Lease
	for l := b.live.leases; l != nil; l = l.next {
		out = append(out, l)
	}
	return out
}

// TestAgentWeight: a percentage scales the configured weight for the
// weighted algorithms; an absolute weight replaces it.
func TestAgentWeight(t *testing.T) {
	f := startAgentFleet(t, 50, 2, "100%\n")
	cfgs := f.configs()
	cfgs[0].Weight, cfgs[1].Weight = 2, 2
	p := mustPool(t, PoolConfig{Name: "ag", Backends: cfgs, Agent: f.agentCfg()})
	p.Start()
	defer p.Close()
	a, b := p.backends()[0], p.backends()[1]
	f.agents[0].set("50%\n", false)
	f.agents[1].set("weight:3\n", false)
	waitFor(t, 5*time.Second, "the agents' weights", func() bool {
		sa, sb := statusOf(p, a.ID()).Agent, statusOf(p, b.ID()).Agent
		return sa.Weight == 1 && sa.WeightPercent == 50 && sb.Weight == 3 && sb.WeightPercent == -1
	})
	n := map[*Backend]int{}
	for range 400 {
		n[p.backends()[p.pickOnce(&DialRequest{})]]++
	}
	if n[a] != 100 || n[b] != 300 {
		t.Fatalf("round robin over weights 1 and 3: %d and %d of 400", n[a], n[b])
	}
}

// TestAgentBadAnswers: an answer that is unknown, too long, not ended by a
// line end, or late is ignored (nothing of it applied), counted by reason
// and reported once per streak; an agent that cannot be reached changes
// nothing.
func TestAgentBadAnswers(t *testing.T) {
	f := startAgentFleet(t, 60, 1, "drain maxconn:7\n")
	var ev events
	cfg := f.agentCfg()
	p := mustPool(t, PoolConfig{Name: "ag", Backends: f.configs(), Agent: cfg, OnChange: ev.record})
	p.Start()
	defer p.Close()
	b := p.backends()[0]
	waitFor(t, 5*time.Second, "the first answer", func() bool { return b.AdminState() == Drain })
	for _, tc := range []struct {
		answer string
		hold   bool
		reason AgentErrorReason
	}{
		{"ready bogus maxconn:1\n", false, AgentInvalid},
		{"ready maxconn:x\n", false, AgentInvalid},
		{"ready " + strings.Repeat(" ", MaxAgentLine) + "\n", false, AgentTooLong},
		{"ready", false, AgentIncomplete},
		{"ready", true, AgentTimeout},
		{"", true, AgentTimeout},
	} {
		before := statusOf(p, b.ID()).Agent.Errors[tc.reason]
		f.agents[0].set(tc.answer, tc.hold)
		waitFor(t, 5*time.Second, fmt.Sprintf("%.20q counted as %v", tc.answer, tc.reason), func() bool {
			return statusOf(p, b.ID()).Agent.Errors[tc.reason] >= before+3
		})
		st := statusOf(p, b.ID())
		if b.AdminState() != Drain || st.EffectiveMaxConnections != 7 || st.Agent.LastReport != "drain maxconn:7" {
			t.Fatalf("after %.20q: state %v, cap %d, last report %q", tc.answer, b.AdminState(), st.EffectiveMaxConnections, st.Agent.LastReport)
		}
		if !strings.HasPrefix(st.Agent.LastError, tc.reason.String()+": ") {
			t.Fatalf("after %.20q: last error %q", tc.answer, st.Agent.LastError)
		}
	}
	f.agents[0].stop()
	before := statusOf(p, b.ID()).Agent.Errors[AgentConnect]
	waitFor(t, 5*time.Second, "connect errors", func() bool { return statusOf(p, b.ID()).Agent.Errors[AgentConnect] >= before+3 })
	if b.AdminState() != Drain {
		t.Fatal("an unreachable agent changed the state")
	}
	// One event per streak: one per answer above, maybe an incomplete
	// answer as the agent stops, then the connect errors.
	var errs []string
	for _, e := range ev.list() {
		if e.Kind == EventAgentError {
			errs = append(errs, e.Reason)
		}
	}
	if len(errs) < 7 || len(errs) > 8 {
		t.Errorf("%d agent error events, want one per streak:\n%s", len(errs), strings.Join(errs, "\n"))
	}
	// The agent comes back: applied, and said so.
	f.agents[0].set("ready\n", false)
	f.agents[0].listen()
	// The event follows the state change (it is emitted after the pool's
	// lock is released): wait for both.
	var last Event
	waitFor(t, 5*time.Second, "the agent's return, and an event saying so", func() bool {
		l := ev.list()
		last = l[len(l)-1]
		return b.AdminState() == Ready && last.Kind == EventAgent
	})
	if !strings.Contains(last.Reason, "answering again") {
		t.Errorf("last event %+v", last)
	}
}

// TestAgentDiscovery: a discovered backend gets an agent loop, a removed
// one's stops; Close stops them all (goleak checks in TestMain).
func TestAgentDiscovery(t *testing.T) {
	f := startAgentFleet(t, 70, 3, "ready\n")
	src := &fakeSource{}
	src.set(nil, f.configs()[:2]...)
	p := mustPool(t, PoolConfig{Name: "ag", Discover: src, ResolveInterval: time.Second, Agent: f.agentCfg(),
		DrainTimeout: 100 * time.Millisecond}) // the removed one's key window
	p.disc.minDelay = 10 * time.Millisecond
	p.Start()
	defer p.Close()
	waitFor(t, 5*time.Second, "two backends", func() bool { return len(p.Backends()) == 2 })
	for _, b := range p.Backends() {
		waitReports(t, p, b.ID(), 2)
	}
	if f.agents[2].asked.Load() != 0 {
		t.Fatal("an agent outside the set was asked")
	}
	// The third joins, the first leaves.
	src.set(nil, f.configs()[1:]...)
	p.Rediscover(context.Background())
	third := f.configs()[2].Address
	waitReports(t, p, third, 2)
	// The removed one's agent is asked for its key window, then no more.
	asked := f.agents[0].asked.Load()
	waitFor(t, 5*time.Second, "the removed backend's agent, asked in its key window", func() bool { return f.agents[0].asked.Load() > asked })
	waitFor(t, 5*time.Second, "the end of its key window", func() bool { return len(p.RemovedStatus()) == 0 })
	asked = f.agents[0].asked.Load()
	time.Sleep(200 * time.Millisecond) // 10 intervals
	if n := f.agents[0].asked.Load(); n > asked+1 {
		t.Fatalf("the removed backend's agent was asked %d more times", n-asked)
	}
	// A changed weight rebuilds the backend: its agent state carries over.
	f.agents[2].set("drain\n", false)
	waitFor(t, 5*time.Second, "the third drains", func() bool { return p.Lookup(third).AdminState() == Drain })
	cfgs := f.configs()[1:]
	cfgs[1].Weight = 5
	src.set(nil, cfgs...)
	p.Rediscover(context.Background())
	if b := p.Lookup(third); b.Weight() != 5 || b.AdminState() != Drain {
		t.Fatalf("rebuilt: weight %d, state %v", b.Weight(), b.AdminState())
	}
	waitReports(t, p, third, 2)
}

// TestAgentAdopt: a reload keeps what the agents set until they answer
// the new pool; a pool without the agent key drops it.
func TestAgentAdopt(t *testing.T) {
	f := startAgentFleet(t, 80, 1, "drain maxconn:4 load:1\n")
	cfg := PoolConfig{Name: "ag", Backends: f.configs(), Agent: f.agentCfg()}
	old := mustPool(t, cfg)
	old.Start()
	b := old.backends()[0]
	waitFor(t, 5*time.Second, "the first answer", func() bool { return b.AdminState() == Drain })
	old.Close()

	cfg.Agent.Interval = time.Hour // the new pool's first check is far away
	p := mustPool(t, cfg)
	p.Adopt(old)
	nb := p.backends()[0]
	if st := statusOf(p, nb.ID()); nb.AdminState() != Drain || st.EffectiveMaxConnections != 4 || st.Agent.Load != 1 || st.Agent.Reports == 0 {
		t.Fatalf("adopted: %v, %+v, agent %+v", nb.AdminState(), st, st.Agent)
	}
	cfg.Agent = AgentConfig{}
	q := mustPool(t, cfg)
	q.Adopt(old)
	if qb := q.backends()[0]; qb.AdminState() != Ready || qb.EffectiveMaxConnections() != 0 || statusOf(q, qb.ID()).Agent != nil {
		t.Fatalf("adopted without an agent: %v", qb.AdminState())
	}
}

// TestHashIdentityFromID (part 6): a key's backend depends on the
// backends' ids, not their addresses: a server that keeps its id keeps its
// keys at a new address; without ids nothing changes (the id is the
// address).
func TestHashIdentityFromID(t *testing.T) {
	const keys = 2000
	addrs := fakeAddrs(5)
	withIDs := func(addrs []string, ids ...string) *Pool {
		bs := backendsOf(addrs...)
		for i := range bs {
			if i < len(ids) {
				bs[i].ID = ids[i]
			}
		}
		return mustPool(t, PoolConfig{Name: "hash", Backends: bs, Balance: Hash})
	}
	ids := []string{"gs-a", "gs-b", "gs-c", "gs-d", "gs-e"}
	byID := func(p *Pool) []string {
		out := make([]string, keys)
		for k := range out {
			out[k] = p.backends()[p.pickOnce(keyReq(k))].ID()
		}
		return out
	}
	moved := slices.Clone(addrs)
	slices.Reverse(moved)
	moved[0] = "10.9.9.9:7000"
	if a, b := byID(withIDs(addrs, ids...)), byID(withIDs(moved, ids...)); !slices.Equal(a, b) {
		t.Fatal("new addresses under the same ids moved keys")
	}
	if a, b := mapKeys(hashPool(t, addrs), keys), mapKeys(withIDs(addrs, addrs...), keys); !slices.Equal(a, b) {
		t.Fatal("ids equal to the addresses changed the placement")
	}
}

// TestHashBoundAgreesWithAgent (part 6): with hash_balance_factor, two
// instances holding different live connections place keys alike when the
// pool has an agent (the bound uses the agents' loads), and only then.
func TestHashBoundAgreesWithAgent(t *testing.T) {
	const keys = 1000
	f := startAgentFleet(t, 90, 4, "load:10\n")
	f.agents[0].set("load:100\n", false) // over the bound for any factor up to 3
	instance := func(agent bool) *Pool {
		cfg := PoolConfig{Name: "rooms", Backends: f.configs(), Balance: Hash, HashBalanceFactor: 1.25}
		if agent {
			cfg.Agent = f.agentCfg()
		}
		p := mustPool(t, cfg)
		p.Start()
		t.Cleanup(p.Close)
		if agent {
			for i, b := range p.backends() {
				want := int64(10)
				if i == 0 {
					want = 100
				}
				waitFor(t, 5*time.Second, "the agents' loads", func() bool { return statusOf(p, b.ID()).Agent.Load == want })
			}
		}
		return p
	}
	byID := func(p *Pool) []string {
		out := make([]string, keys)
		for k := range out {
			out[k] = p.backends()[p.pickOnce(keyReq(k))].ID()
		}
		return out
	}
	// Instance 1 holds 40 players on its second backend, instance 2 on
	// its third (live counts differ between instances).
	hold := func(p *Pool, i int, n int64) { p.backends()[i].live.active.Add(n) }
	unbounded := byID(mustPool(t, PoolConfig{Name: "rooms", Backends: f.configs(), Balance: Hash}))

	a1, a2 := instance(true), instance(true)
	hold(a1, 1, 40)
	hold(a2, 2, 40)
	m1, m2 := byID(a1), byID(a2)
	if !slices.Equal(m1, m2) {
		t.Fatal("with an agent, instances with different live counts disagree")
	}
	first := f.configs()[0].Address
	moved := 0
	for k := range m1 {
		if m1[k] != unbounded[k] {
			moved++
			if unbounded[k] != first {
				t.Fatalf("key %d moved from %s, not from the backend its agent reports over the bound", k, unbounded[k])
			}
		}
		if m1[k] == first {
			t.Fatalf("key %d stayed on the backend over the bound", k)
		}
	}
	if moved == 0 {
		t.Fatal("the agent's load bounded nothing")
	}

	// The control: without an agent the bound uses live counts, and the
	// instances disagree.
	l1, l2 := instance(false), instance(false)
	hold(l1, 1, 40)
	hold(l2, 2, 40)
	if slices.Equal(byID(l1), byID(l2)) {
		t.Fatal("without an agent, instances with different live counts agree: the test proves nothing")
	}
	for _, p := range []*Pool{a1, a2, l1, l2} {
		hold(p, 1, -40)
		hold(p, 2, -40)
	}
}

// TestAgentConfig: the port is required; the timeout defaults to 1 s or
// the interval when that is shorter.
func TestAgentConfig(t *testing.T) {
	if _, err := NewPool(PoolConfig{Name: "x", Backends: backendsOf("10.0.0.1:1"), Agent: AgentConfig{Port: 70000}}); err == nil {
		t.Fatal("port 70000 accepted")
	}
	a, err := AgentConfig{Port: 7001}.withDefaults()
	if err != nil || a.Interval != 2*time.Second || a.Timeout != time.Second {
		t.Fatalf("defaults %+v, %v", a, err)
	}
	a, _ = AgentConfig{Port: 7001, Interval: 300 * time.Millisecond}.withDefaults()
	if a.Timeout != 300*time.Millisecond {
		t.Fatalf("timeout %v with a 300ms interval", a.Timeout)
	}
}
