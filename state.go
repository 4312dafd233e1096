package main

import (
	"cmp"
	"slices"

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
	State          string  `json:"state"` // ready | drain | maint
	Healthy        bool    `json:"healthy"`
	Active         int64   `json:"active"`
	MaxConnections int     `json:"max_connections"` // 0: unlimited
	Dials          uint64  `json:"dials"`
	Failures       uint64  `json:"failures"`
	LastCheckError string  `json:"last_check_error"`
	LastCheckMS    float64 `json:"last_check_ms"`
	// Removed: discovery took it out of the pool; listed (state drain)
	// while its connections drain, after the pool's current backends.
	Removed bool `json:"removed,omitempty"`
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
	}
}
