package balancer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Agent checks (issue 12, part 5): HAProxy's agent-check protocol, which a
// game server implements in a few lines. Every Interval sluice connects to
// the backend's host on AgentConfig.Port and reads one line, such as
//
//	ready 80% maxconn:120 load:97
//
// made of words separated by spaces, tabs or commas, in any order, ended by
// the first CR or LF, optionally followed by a description after '#':
//
//	ready | drain | maint   the agent's admin state ("ready" undoes the
//	                        agent's drain or maint, never the operator's)
//	up | down | fail | stopped
//	                        health: "down" marks the backend DOWN whatever
//	                        the checks say; "up" undoes it (the backend is UP
//	                        again once the checks also say so)
//	N% | weight:N% | weight:N
//	                        the weight: N percent of the configured weight,
//	                        or N (0-1000) itself; 0 counts as drain
//	maxconn:N               at most N connections from this instance (HAProxy:
//	                        the limit is per load balancer); 0: no limit. The
//	                        configured max_connections still applies: the
//	                        lower of the two is in force
//	load:N                  (sluice's, not HAProxy's) the players the server
//	                        has now, from every instance: with maxconn:M the
//	                        backend is full for every instance once N >= M,
//	                        and hash_balance_factor bounds by it (see
//	                        rendezvous)
//
// The words an answer leaves out change nothing (HAProxy), and the last
// word of a kind wins. Unlike HAProxy, which applies the words it knows and
// reports the others, sluice applies nothing from an answer it does not
// wholly understand: a line with an unknown word or a bad number, longer
// than MaxAgentLine, not ended by a newline when the agent closes, or not
// whole within Timeout is ignored, logged (OnChange, EventAgentError) and
// counted (AgentStatus.Errors), never half applied: a different service
// answering on the agent port must not drain a fleet. An agent that cannot
// be reached changes nothing either (HAProxy: connectivity is the health
// checks' business); its last report stays in force.
//
// Precedence: the agent's drain and maint are flags of their own, as in
// HAProxy. The state in force (Backend.AdminState) is the stricter of the
// operator's (admin API, and discovery's removal) and the agent's, maint >
// drain > ready: the operator's "ready" does not undo the agent's drain,
// and the agent's "ready" does not undo the operator's. Only a reload
// without the pool's agent key clears what the agent set. The agent's
// maint does not close live connections (MaintCloseAfter is the operator's
// maint only): the server closes its own players when it wants them gone.

// Agent defaults: HAProxy's agent-inter 2s, and a 1 s timeout like the
// health checks'. MaxAgentLine bounds what sluice reads of an answer.
const (
	DefaultAgentInterval = 2 * time.Second
	DefaultAgentTimeout  = time.Second
	MaxAgentLine         = 1024
)

// maxAgentPercent caps the agent's weight percentage (HAProxy caps the
// resulting weight at 256, its maximum): at most 10 times the configured
// weight.
const maxAgentPercent = 1000

// maxAgentAbsWeight is the highest absolute weight:N, the config's highest
// weight.
const maxAgentAbsWeight = 1000

// AgentConfig configures a pool's agent checks; the zero Port means none.
type AgentConfig struct {
	// Port is the TCP port the agent listens on, on each backend's host.
	Port int
	// Interval between the starts of two checks of one backend, ±10 %
	// jitter. If zero or negative, 2s is used.
	Interval time.Duration
	// Timeout bounds one check: connect and the whole line. If zero or
	// negative, 1s, or Interval when that is shorter.
	Timeout time.Duration
}

func (a AgentConfig) withDefaults() (AgentConfig, error) {
	if a.Port <= 0 || a.Port > 65535 {
		return a, fmt.Errorf("agent port %d: want 1-65535", a.Port)
	}
	a.Interval = orDefault(a.Interval, DefaultAgentInterval)
	a.Timeout = orDefault(a.Timeout, min(DefaultAgentTimeout, a.Interval))
	return a, nil
}

// AgentErrorReason says why an agent answer was not applied.
type AgentErrorReason uint8

const (
	agentOK AgentErrorReason = iota
	// AgentConnect: the agent could not be reached (refused, timed out).
	AgentConnect
	// AgentTimeout: no whole line within the timeout.
	AgentTimeout
	// AgentTooLong: no newline in the first MaxAgentLine+1 bytes.
	AgentTooLong
	// AgentIncomplete: the agent closed (or reset) before the newline.
	AgentIncomplete
	// AgentInvalid: a word is unknown or a number is out of range.
	AgentInvalid
	numAgentReasons
)

// AgentErrorReasons lists the reasons, for metrics.
var AgentErrorReasons = []AgentErrorReason{AgentConnect, AgentTimeout, AgentTooLong, AgentIncomplete, AgentInvalid}

// String is the metrics label value.
func (r AgentErrorReason) String() string {
	switch r {
	case agentOK:
		return "ok"
	case AgentConnect:
		return "connect"
	case AgentTimeout:
		return "timeout"
	case AgentTooLong:
		return "too_long"
	case AgentIncomplete:
		return "incomplete"
	case AgentInvalid:
		return "invalid"
	}
	return fmt.Sprintf("AgentErrorReason(%d)", uint8(r))
}

// AgentError is an agent answer that was not applied.
type AgentError struct {
	Reason AgentErrorReason
	Err    error
}

func (e *AgentError) Error() string { return e.Reason.String() + ": " + e.Err.Error() }
func (e *AgentError) Unwrap() error { return e.Err }

func agentErr(r AgentErrorReason, format string, args ...any) *AgentError {
	return &AgentError{Reason: r, Err: fmt.Errorf(format, args...)}
}

// AgentHealth is the health an agent reported.
type AgentHealth uint8

const (
	// AgentHealthUnset: the answer said nothing about health.
	AgentHealthUnset AgentHealth = iota
	// AgentUp: "up".
	AgentUp
	// AgentDown: "down", "fail" or "stopped".
	AgentDown
)

// AgentReport is one agent answer, parsed. What the answer left out is
// unset: HasState false, Health AgentHealthUnset, negative numbers.
type AgentReport struct {
	State    AdminState // with HasState
	HasState bool
	Health   AgentHealth
	// Weight is a percentage of the configured weight, or with
	// WeightAbsolute the weight itself; negative: unset.
	Weight         int
	WeightAbsolute bool
	MaxConn        int64 // maxconn:N; 0 means no limit; negative: unset
	Load           int64 // load:N; negative: unset
	// Description is the text after '#', printable ASCII, at most 128
	// bytes.
	Description string
}

// maxAgentNumber bounds maxconn:N and load:N (9 digits).
const maxAgentNumber = 999_999_999

// maxAgentDescription bounds AgentReport.Description.
const maxAgentDescription = 128

// ParseAgentLine parses one agent answer without its line end. An empty
// line is a valid answer that changes nothing; an unknown word or a bad
// number fails the whole line with an *AgentError (AgentInvalid).
func ParseAgentLine(line string) (AgentReport, error) {
	r := AgentReport{Weight: -1, MaxConn: -1, Load: -1}
	rest := line
	for {
		rest = strings.TrimLeft(rest, " \t,")
		if rest == "" {
			break
		}
		if rest[0] == '#' {
			r.Description = cleanDescription(rest[1:])
			break
		}
		end := strings.IndexAny(rest, " \t,")
		if end < 0 {
			end = len(rest)
		}
		word := rest[:end]
		rest = rest[end:]
		if err := r.word(word); err != nil {
			return AgentReport{}, err
		}
	}
	return r, nil
}

// word applies one word to r.
func (r *AgentReport) word(w string) error {
	switch strings.ToLower(w) {
	case "ready":
		r.State, r.HasState = Ready, true
		return nil
	case "drain":
		r.State, r.HasState = Drain, true
		return nil
	case "maint":
		r.State, r.HasState = Maint, true
		return nil
	case "up":
		r.Health = AgentUp
		return nil
	case "down", "fail", "stopped":
		r.Health = AgentDown
		return nil
	}
	key, val, hasColon := strings.Cut(w, ":")
	switch {
	case !hasColon && strings.HasSuffix(w, "%"):
		n, ok := agentNumber(w[:len(w)-1], 6)
		if !ok {
			return agentErr(AgentInvalid, "bad weight %q", clip(w))
		}
		r.Weight, r.WeightAbsolute = int(n), false
		return nil
	case !hasColon:
	case strings.EqualFold(key, "weight"):
		if pct, isPct := strings.CutSuffix(val, "%"); isPct {
			n, ok := agentNumber(pct, 6)
			if !ok {
				return agentErr(AgentInvalid, "bad weight %q", clip(w))
			}
			r.Weight, r.WeightAbsolute = int(n), false
			return nil
		}
		n, ok := agentNumber(val, 4)
		if !ok || n > maxAgentAbsWeight {
			return agentErr(AgentInvalid, "bad weight %q: want 0-%d or a percentage", clip(w), maxAgentAbsWeight)
		}
		r.Weight, r.WeightAbsolute = int(n), true
		return nil
	case strings.EqualFold(key, "maxconn"):
		n, ok := agentNumber(val, 9)
		if !ok {
			return agentErr(AgentInvalid, "bad maxconn %q", clip(w))
		}
		r.MaxConn = n
		return nil
	case strings.EqualFold(key, "load"):
		n, ok := agentNumber(val, 9)
		if !ok {
			return agentErr(AgentInvalid, "bad load %q", clip(w))
		}
		r.Load = n
		return nil
	}
	return agentErr(AgentInvalid, "unknown word %q", clip(w))
}

// agentNumber parses 1 to digits decimal digits.
func agentNumber(s string, digits int) (int64, bool) {
	if s == "" || len(s) > digits {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// clip shortens and sanitizes a word quoted in an error.
func clip(w string) string { return truncate(w, 32) }

// cleanDescription keeps the printable ASCII of s (others become '?'),
// trimmed, at most maxAgentDescription bytes.
func cleanDescription(s string) string {
	s = strings.TrimSpace(truncate(s, maxAgentDescription*2))
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return strings.TrimSpace(truncate(string(b), maxAgentDescription))
}

// String returns the answer in canonical form, which ParseAgentLine parses
// back to r.
func (r AgentReport) String() string {
	var w []string
	if r.HasState {
		w = append(w, r.State.String())
	}
	switch r.Health {
	case AgentUp:
		w = append(w, "up")
	case AgentDown:
		w = append(w, "down")
	}
	switch {
	case r.Weight >= 0 && r.WeightAbsolute:
		w = append(w, "weight:"+strconv.Itoa(r.Weight))
	case r.Weight >= 0:
		w = append(w, strconv.Itoa(r.Weight)+"%")
	}
	if r.MaxConn >= 0 {
		w = append(w, "maxconn:"+strconv.FormatInt(r.MaxConn, 10))
	}
	if r.Load >= 0 {
		w = append(w, "load:"+strconv.FormatInt(r.Load, 10))
	}
	if r.Description != "" {
		w = append(w, "# "+r.Description)
	}
	return strings.Join(w, " ")
}

var (
	errAgentTooLong    = fmt.Errorf("no line end in the first %d bytes", MaxAgentLine+1)
	errAgentIncomplete = errors.New("the agent closed before the line end")
)

// readAgentLine reads one line, ended by the first CR or LF, of at most
// MaxAgentLine bytes before that, and returns it without the line end.
// What follows the line end is left unread. Errors are *AgentError.
func readAgentLine(r io.Reader) (string, error) {
	var buf [MaxAgentLine + 1]byte
	n := 0
	for {
		m, err := r.Read(buf[n:])
		if i := bytes.IndexAny(buf[n:n+m], "\r\n"); i >= 0 {
			return string(buf[:n+i]), nil
		}
		n += m
		switch {
		case n == len(buf):
			return "", &AgentError{AgentTooLong, errAgentTooLong}
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
			return "", agentErr(AgentTimeout, "no whole line in time (%d bytes read)", n)
		case errors.Is(err, io.EOF):
			return "", &AgentError{AgentIncomplete, errAgentIncomplete}
		default:
			return "", &AgentError{AgentIncomplete, err}
		}
	}
}

// agentState is what a backend's agent has set, under the pool's mu. A
// reload or a rebuild by discovery carries it over (backendState).
type agentState struct {
	admin      AdminState // the agent's own drain/maint flag; Ready: none
	down       bool       // the agent said down (until it says up)
	weight     int        // negative: unset; see AgentReport.Weight
	weightAbs  bool
	maxConn    int64 // negative: unset
	load       int64 // negative: unset
	desc       string
	line       string    // the last answer applied, canonical
	at         time.Time // when it was applied; zero if none was
	lastErr    string    // of the last answer, "" if it was applied
	lastErrAt  time.Time
	lastReason AgentErrorReason
	stats      *agentStats // shared across reloads
}

// agentStats counts answers, applied and not. Atomic: during a reload the
// old pool's agent loops may still count while the new pool's start.
type agentStats struct {
	reports atomic.Uint64 // applied
	errors  [numAgentReasons]atomic.Uint64
}

func newAgentState() *agentState {
	return &agentState{weight: -1, maxConn: -1, load: -1, stats: new(agentStats)}
}

// AgentStatus is a snapshot of a backend's agent (BackendStatus.Agent).
type AgentStatus struct {
	// State is the agent's admin state: Drain or Maint while its last word
	// on it was drain or maint (or its weight is 0); Ready otherwise.
	State AdminState
	// Down: the agent said down and has not said up since.
	Down bool
	// Weight is the weight in force (the configured weight scaled by the
	// agent's percentage, or its absolute weight), in units of the
	// configured weight's; WeightPercent the percentage reported, negative
	// if none (or an absolute weight).
	Weight        float64
	WeightPercent int
	// MaxConnections is the agent's maxconn: 0 for no limit, negative if
	// it reported none.
	MaxConnections int64
	// Load is the agent's load:N, negative if it reported none.
	Load int64
	// Full: Load >= MaxConnections > 0.
	Full bool
	// Description is the text after '#' in the last answer applied.
	Description string
	// LastReport is the last answer applied, in canonical form (see
	// AgentReport.String), and when; zero if none was.
	LastReport     string
	LastReportTime time.Time
	// LastError is why the last answer was not applied; "" if it was.
	LastError     string
	LastErrorTime time.Time
	// Reports counts the answers applied; Errors the others, by reason
	// (indexed by AgentErrorReason).
	Reports uint64
	Errors  [numAgentReasons]uint64
}

// agentStatusLocked snapshots b's agent; nil without one. b's pool's mu is
// held.
func agentStatusLocked(b *Backend) *AgentStatus {
	a := b.agent
	if a == nil {
		return nil
	}
	st := &AgentStatus{
		State:          a.effAdmin(),
		Down:           a.down,
		Weight:         float64(b.effWeight.Load()) / weightScale,
		WeightPercent:  -1,
		MaxConnections: a.maxConn,
		Load:           a.load,
		Full:           b.agentFull.Load(),
		Description:    a.desc,
		LastReport:     a.line,
		LastReportTime: a.at,
		LastError:      a.lastErr,
		LastErrorTime:  a.lastErrAt,
		Reports:        a.stats.reports.Load(),
	}
	for _, r := range AgentErrorReasons {
		st.Errors[r] = a.stats.errors[r].Load()
	}
	if a.weight >= 0 && !a.weightAbs {
		st.WeightPercent = a.weight
	}
	return st
}

// agentDown reports whether b's agent holds it DOWN; b's pool's mu is
// held.
func (b *Backend) agentDown() bool { return b.agent != nil && b.agent.down }

// effAdmin is the agent's admin state, a weight of 0 counting as drain
// (HAProxy reports a zero weight as DRAIN).
func (a *agentState) effAdmin() AdminState {
	if a.weight == 0 {
		return max(a.admin, Drain)
	}
	return a.admin
}

// OperatorState returns the admin state set by the operator (Pool.SetState)
// or by discovery (Drain while removed), without the agent's.
func (p *Pool) OperatorState(b *Backend) AdminState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return b.opAdmin
}

// setOperatorLocked sets b's operator state and refreshes the state in
// force. p.mu is held; the caller recounts.
func (p *Pool) setOperatorLocked(b *Backend, s AdminState) {
	b.opAdmin = s
	p.refreshAdminLocked(b)
}

// refreshAdminLocked sets the admin state the picks read: the stricter of
// the operator's and the agent's. p.mu is held.
func (p *Pool) refreshAdminLocked(b *Backend) {
	s := b.opAdmin
	if b.agent != nil {
		s = max(s, b.agent.effAdmin())
	}
	b.admin.Store(uint32(s))
}

// refreshAgentLocked recomputes from b.agent what the picks read: admin
// state, weight, connection cap, fullness, load (health: see
// refreshHealthLocked). p.mu is held.
func (p *Pool) refreshAgentLocked(b *Backend) {
	a := b.agent
	w := int64(b.weight) * weightScale
	capConns := b.maxConns
	load, full := int64(-1), false
	if a != nil {
		switch {
		case a.weight < 0:
		case a.weightAbs:
			w = int64(a.weight) * weightScale
		default:
			w = int64(b.weight) * weightScale * int64(min(a.weight, maxAgentPercent)) / 100
		}
		if a.maxConn > 0 && (capConns == 0 || a.maxConn < capConns) {
			capConns = a.maxConn
		}
		load = a.load
		full = a.maxConn > 0 && a.load >= a.maxConn
	}
	b.effWeight.Store(w)
	b.capConns.Store(capConns)
	b.agentLoad.Store(load)
	b.agentFull.Store(full)
	p.refreshAdminLocked(b)
	p.recountLocked()
}

// restoreAgentLocked gives b the agent state s (nil: none) when p has an
// agent, and refreshes what the picks read without an event (b is in no
// set yet). p.mu is held.
func (p *Pool) restoreAgentLocked(b *Backend, s *agentState) {
	b.agent = nil
	if p.agent != nil && s != nil {
		c := *s
		b.agent = &c
	}
	p.refreshAgentLocked(b)
	b.healthy.Store(b.checkUp && !b.agentDown())
}

// snapshotAgentLocked copies b's agent state for backendState; nil without
// one. b's pool's mu is held.
func snapshotAgentLocked(b *Backend) *agentState {
	if b.agent == nil {
		return nil
	}
	c := *b.agent
	return &c
}

// startAgentLocked starts b's agent goroutine when the pool runs agent
// checks; the first check comes after first, or at a random point of the
// first interval when first is negative. p.mu is held.
func (p *Pool) startAgentLocked(b *Backend, first time.Duration) {
	if !p.agenting || b.stopAgent != nil {
		return
	}
	if b.agent == nil {
		b.agent = newAgentState()
	}
	if first < 0 {
		first = time.Duration(rand.Int64N(int64(p.agent.Interval)) + 1)
	}
	ctx, cancel := context.WithCancel(p.ctx)
	b.stopAgent = cancel
	p.wg.Add(1)
	go p.agentLoop(ctx, b, first)
}

// stopAgentLocked ends b's agent checks; what the agent set stays. p.mu is
// held.
func (p *Pool) stopAgentLocked(b *Backend) {
	if b.stopAgent != nil {
		b.stopAgent()
		b.stopAgent = nil
	}
}

// agentLoop asks b's agent every Interval, one check at a time, until ctx
// ends.
func (p *Pool) agentLoop(ctx context.Context, b *Backend, first time.Duration) {
	defer p.wg.Done()
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		rep, err := p.askAgent(ctx, b)
		if ctx.Err() != nil {
			return
		}
		if ClassifyLocal(err) == NotLocal {
			p.recordAgent(ctx, b, rep, err)
		} // else no verdict: sluice had no port or descriptor to ask with
		t.Reset(max(jitter(p.agent.Interval)-time.Since(start), 0))
	}
}

// agentAddr is b's host with the agent's port.
func (p *Pool) agentAddr(b *Backend) string {
	host, _, err := net.SplitHostPort(b.addr)
	if err != nil {
		host = b.addr
	}
	return net.JoinHostPort(host, strconv.Itoa(p.agent.Port))
}

// askAgent connects to b's agent and reads and parses one answer, within
// the agent's Timeout.
func (p *Pool) askAgent(ctx context.Context, b *Backend) (AgentReport, error) {
	ctx, cancel := context.WithTimeout(ctx, p.agent.Timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.agentAddr(b))
	if err != nil {
		if ClassifyLocal(err) != NotLocal {
			return AgentReport{}, err
		}
		return AgentReport{}, &AgentError{AgentConnect, err}
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return AgentReport{}, &AgentError{AgentConnect, err}
		}
	}
	line, err := readAgentLine(c)
	if err != nil {
		return AgentReport{}, err
	}
	return ParseAgentLine(line)
}

// recordAgent applies one answer of b's agent, or counts and reports why
// it was not applied. ctx is the agent loop's: an answer that arrives
// after the loop was stopped (b removed, the pool closed) is dropped.
func (p *Pool) recordAgent(ctx context.Context, b *Backend, rep AgentReport, err error) {
	now := time.Now()
	var evs []Event
	p.mu.Lock()
	a := b.agent
	if ctx.Err() != nil || a == nil { // stopped under mu: no race with the stop
		p.mu.Unlock()
		return
	}
	if err != nil {
		reason := AgentInvalid
		var ae *AgentError
		if errors.As(err, &ae) {
			reason = ae.Reason
		}
		a.stats.errors[reason].Add(1)
		msg := err.Error()
		if msg != a.lastErr { // one line per streak of the same error
			evs = append(evs, Event{Pool: p.name, Backend: b.id, Kind: EventAgentError, Healthy: b.healthy.Load(), Time: now,
				Reason: fmt.Sprintf("agent %s: %s; answer ignored, nothing changed", p.agentAddr(b), msg)})
		}
		a.lastErr, a.lastErrAt, a.lastReason = msg, now, reason
		p.mu.Unlock()
		p.deliver(b, evs)
		return
	}
	a.stats.reports.Add(1)
	recovered := a.lastErr != ""
	a.lastErr, a.lastReason = "", agentOK
	prevAdmin, prevDown, first := a.effAdmin(), a.down, a.at.IsZero()
	if rep.HasState {
		a.admin = rep.State
	}
	switch rep.Health {
	case AgentUp:
		a.down = false
	case AgentDown:
		a.down = true
	}
	if rep.Weight >= 0 {
		a.weight, a.weightAbs = rep.Weight, rep.WeightAbsolute
	}
	if rep.MaxConn >= 0 {
		a.maxConn = rep.MaxConn
	}
	if rep.Load >= 0 {
		a.load = rep.Load
	}
	a.desc = rep.Description
	a.line, a.at = rep.String(), now
	why := "agent reports " + strconv.Quote(a.line)
	p.refreshAgentLocked(b)
	ev, ok := p.refreshHealthLocked(b, why)
	if ok {
		evs = append(evs, ev)
	}
	// Admin state changes are logged; weight, slots and load, which a game
	// server may change with every player, are in the metrics and the
	// state API only.
	if a.effAdmin() != prevAdmin || (first && a.effAdmin() != Ready) || recovered || (a.down != prevDown && !ok) {
		reason := fmt.Sprintf("agent %s: %s; agent state %s, state in force %s", p.agentAddr(b), why, a.effAdmin(), b.AdminState())
		if recovered {
			reason += " (answering again)"
		}
		evs = append(evs, Event{Pool: p.name, Backend: b.id, Kind: EventAgent, Healthy: b.healthy.Load(), Time: now, Reason: reason})
	}
	p.mu.Unlock()
	p.deliver(b, evs)
}

// deliver emits events: health transitions through emit (CloseOnDown),
// the others straight to OnChange. No lock is held.
func (p *Pool) deliver(b *Backend, evs []Event) {
	for _, ev := range evs {
		if ev.Kind == EventHealth {
			p.emit(b, ev)
		} else if p.onChange != nil {
			p.onChange(ev)
		}
	}
}
