package main

import (
	"cmp"
	"slices"
	"time"

	"sluice/balancer"
)

// The JSON of GET /api/v1/state: what the status page shows and what an
// orchestrator polls (e.g. until a drained backend has no players left).
// Field names are an interface: add freely, rename never.
type stateJSON struct {
	Version        string         `json:"version"`         // of the configuration file
	SluiceVersion  string         `json:"sluice_version"`  // of the binary
	Active         int64          `json:"active"`          // client connections open now, routed or not
	MaxConnections int64          `json:"max_connections"` // the global cap
	Listeners      []listenerJSON `json:"listeners"`
	Routes         []routeJSON    `json:"routes"`
	Pools          []poolJSON     `json:"pools"`
}

type listenerJSON struct {
	Name    string `json:"name"`
	Address string `json:"address"`         // as configured
	Bound   string `json:"bound,omitempty"` // the bound address; "" if not bound
	TLS     bool   `json:"tls"`
}

type routeJSON struct {
	Name      string         `json:"name"`
	Listener  string         `json:"listener"`
	Mode      string         `json:"mode"`
	SNI       []string       `json:"sni"`
	Default   bool           `json:"default,omitempty"` // the listener's default_route
	Plain     bool           `json:"plain,omitempty"`   // the listener's plain_route
	Pool      string         `json:"pool,omitempty"`
	Locations []locationJSON `json:"locations,omitempty"`
	Active    int64          `json:"active"` // live connections on this route
}

type locationJSON struct {
	Path     string `json:"path"`
	Pool     string `json:"pool,omitempty"`
	Root     string `json:"root,omitempty"`
	Redirect string `json:"redirect,omitempty"`
}

type poolJSON struct {
	Name     string        `json:"name"`
	Balance  string        `json:"balance"`
	HashKey  string        `json:"hash_key,omitempty"`
	Backends []backendJSON `json:"backends"`
}

type backendJSON struct {
	ID             string  `json:"id"` // the configured id, or the address
	Address        string  `json:"address"`
	Weight         int     `json:"weight"`
	Backup         bool    `json:"backup"`
	State          string  `json:"state"` // ready | drain | maint: in force (the stricter of the operator's and the agent's)
	Healthy        bool    `json:"healthy"`
	Active         int64   `json:"active"`
	MaxConnections int     `json:"max_connections"` // 0: unlimited
	Dials          uint64  `json:"dials"`
	Failures       uint64  `json:"failures"`
	LastCheckError string  `json:"last_check_error"`
	LastCheckMS    float64 `json:"last_check_ms"`
	// OperatorState is the state set through the API (drain while
	// discovery removed it), without the agent's.
	OperatorState string `json:"operator_state"`
	// EffectiveMaxConnections is the cap in force: the lower of
	// max_connections and the agent's maxconn; 0: unlimited.
	EffectiveMaxConnections int `json:"effective_max_connections"`
	// Agent is what the backend's agent set; absent without an agent key.
	Agent *agentJSON `json:"agent,omitempty"`
	// Removed: discovery took it out of the pool; listed (state drain)
	// while its connections drain, after the pool's current backends.
	Removed bool `json:"removed,omitempty"`
}

// agentJSON is a backend's agent state (pool key agent).
type agentJSON struct {
	State          string  `json:"state"`            // ready | drain | maint: the agent's own flag (0% counts as drain)
	Down           bool    `json:"down"`             // it said down and has not said up since
	Weight         float64 `json:"weight"`           // the weight in force under it
	WeightPercent  *int    `json:"weight_percent"`   // null: none (or an absolute weight)
	MaxConnections *int64  `json:"max_connections"`  // its maxconn; 0: no limit; null: none reported
	Load           *int64  `json:"load"`             // its load:N; null: none reported
	Full           bool    `json:"full"`             // load >= maxconn > 0: full for every instance
	Description    string  `json:"description"`      // after '#' in its last answer
	LastReport     string  `json:"last_report"`      // the last answer applied, canonical
	LastReportTime string  `json:"last_report_time"` // RFC 3339; "" if none
	LastError      string  `json:"last_error"`       // why the last answer was ignored; "" if applied
	Reports        uint64  `json:"reports"`          // answers applied
	Errors         uint64  `json:"errors"`           // answers ignored (sluice_agent_errors_total by reason)
}

// state builds the state document from the Runtime serving now.
func (a *admin) state() stateJSON {
	rt := a.s.rt.Load()
	st := stateJSON{
		Version:        rt.Version,
		SluiceVersion:  version,
		Active:         a.s.active.Load(),
		MaxConnections: a.s.maxConns.Load(),
		Listeners:      []listenerJSON{},
		Routes:         []routeJSON{},
		Pools:          []poolJSON{},
	}
	for _, name := range sortedKeys(rt.Listeners) {
		lr := rt.Listeners[name]
		lj := listenerJSON{Name: name, Address: lr.address, TLS: lr.tls}
		if addr := a.s.addr(name); addr != nil {
			lj.Bound = addr.String()
		}
		st.Listeners = append(st.Listeners, lj)
		for _, r := range listenerRoutes(lr) {
			st.Routes = append(st.Routes, a.routeState(lr, r))
		}
	}
	for _, name := range sortedKeys(rt.Pools) {
		p := rt.Pools[name]
		pj := poolJSON{Name: name, Balance: p.Balance().String(), Backends: []backendJSON{}}
		if k := p.HashKey(); k.Kind != "" {
			pj.HashKey = k.String()
		}
		for _, b := range p.Status() {
			pj.Backends = append(pj.Backends, backendState(b))
		}
		for _, b := range p.RemovedStatus() {
			bj := backendState(b)
			bj.Removed = true
			pj.Backends = append(pj.Backends, bj)
		}
		st.Pools = append(st.Pools, pj)
	}
	return st
}

// listenerRoutes returns the routes a listener reaches, by name.
func listenerRoutes(lr *listenerRuntime) []*route {
	var rs []*route
	add := func(r *route) {
		if r != nil && !slices.Contains(rs, r) {
			rs = append(rs, r)
		}
	}
	for _, r := range lr.table.names.All() {
		add(r)
	}
	add(lr.table.def)
	add(lr.table.plain)
	slices.SortFunc(rs, func(a, b *route) int { return cmp.Compare(a.name, b.name) })
	return rs
}

func (a *admin) routeState(lr *listenerRuntime, r *route) routeJSON {
	rj := routeJSON{
		Name:     r.name,
		Listener: lr.name,
		Mode:     r.mode,
		SNI:      []string{},
		Default:  lr.table.def == r,
		Plain:    lr.table.plain == r,
		Active:   a.m.activeOn(lr.name, r.name),
	}
	for p, x := range lr.table.names.All() {
		if x == r {
			rj.SNI = append(rj.SNI, p.String())
		}
	}
	slices.Sort(rj.SNI)
	if r.pool != nil {
		rj.Pool = r.pool.Name()
	}
	for _, l := range r.locations {
		lj := locationJSON{Path: l.Path, Root: l.Root, Redirect: l.Redirect}
		if l.Pool != nil {
			lj.Pool = l.Pool.Name()
		}
		rj.Locations = append(rj.Locations, lj)
	}
	return rj
}

func backendState(b balancer.BackendStatus) backendJSON {
	return backendJSON{
		ID:             b.ID,
		Address:        b.Address,
		Weight:         b.Weight,
		Backup:         b.Backup,
		State:          b.AdminState.String(),
		Healthy:        b.Healthy,
		Active:         b.Active,
		MaxConnections: b.MaxConnections,
		Dials:          b.Dials,
		Failures:       b.Failures,
		LastCheckError: b.LastCheckError,
		LastCheckMS:    float64(b.LastCheckDuration.Microseconds()) / 1000,

		OperatorState:           b.OperatorState.String(),
		EffectiveMaxConnections: b.EffectiveMaxConnections,
		Agent:                   agentState(b.Agent),
	}
}

func agentState(a *balancer.AgentStatus) *agentJSON {
	if a == nil {
		return nil
	}
	aj := &agentJSON{
		State:       a.State.String(),
		Down:        a.Down,
		Weight:      a.Weight,
		Full:        a.Full,
		Description: a.Description,
		LastReport:  a.LastReport,
		LastError:   a.LastError,
		Reports:     a.Reports,
	}
	if a.WeightPercent >= 0 {
		aj.WeightPercent = &a.WeightPercent
	}
	if a.MaxConnections >= 0 {
		aj.MaxConnections = &a.MaxConnections
	}
	if a.Load >= 0 {
		aj.Load = &a.Load
	}
	if !a.LastReportTime.IsZero() {
		aj.LastReportTime = a.LastReportTime.UTC().Format(time.RFC3339Nano)
	}
	for _, n := range a.Errors {
		aj.Errors += n
	}
	return aj
}
