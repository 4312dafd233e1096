package main

import (
	"cmp"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"sluice/balancer"
	"sluice/balancer/discover"
)

// pools checks every [pools.NAME] and compiles it to the balancer's config.
func (cp *compiler) pools() {
	for _, name := range sortedKeys(cp.cfg.Pools) {
		if pc := cp.cfg.Pools[name]; pc != nil {
			cp.pool(name, pc)
		}
	}
}

func (cp *compiler) pool(name string, pc *PoolConfig) {
	path := "pools." + name
	pp, err := balancer.ParseProxyProtocol(pc.ProxyProtocol)
	if err != nil {
		cp.errorf(path+".proxy_protocol", "must be \"\", \"v1\" or \"v2\"; got %q", pc.ProxyProtocol)
	}
	spec := balancer.PoolConfig{
		Name:              name,
		ProxyProtocol:     pp,
		ConnectTimeout:    cp.duration(path+".connect_timeout", pc.ConnectTimeout, defaultConnectTimeout, false),
		MaxAttempts:       defaultConnectAttempts,
		ConnectBudget:     defaultConnectBudget,
		HashBalanceFactor: pc.HashBalanceFactor,
		MaxFails:          pc.MaxFails,
		FailTimeout:       cp.duration(path+".fail_timeout", pc.FailTimeout, balancer.DefaultFailTimeout, false),
		SlowStart:         cp.duration(path+".slow_start", pc.SlowStart, 0, true),
		CloseOnDown:       pc.CloseOnDown,
		MaintCloseAfter:   cp.out.DrainTimeout,
	}
	cp.balancing(path, pc, &spec)
	spec.Health = cp.health(path+".health", pc.Health)
	spec.Agent = cp.agent(path+".agent", pc.Agent)
	cp.discovery(path, pc, &spec)
	spec.Backends = cp.backends(path, pc.Backends, pc.Discover != "")
	if len(spec.Backends) != len(pc.Backends) || (len(pc.Backends) == 0 && spec.Discover == nil) {
		return // reported
	}
	// The balancer's own check of its config is NewPool, which allocates
	// and starts nothing (health checks start in Pool.Start): the pool is
	// dropped here, and Build makes the one that serves.
	if _, err := balancer.NewPool(spec); err != nil {
		cp.errorf(path, "%v", err)
		return
	}
	cp.out.poolSpecs[name] = spec
}

// balancing checks how a pool picks a backend and when it stops using one.
func (cp *compiler) balancing(path string, pc *PoolConfig, spec *balancer.PoolConfig) {
	var err error
	if spec.Balance, err = balancer.ParseAlgorithm(pc.Balance); err != nil {
		cp.errorf(path+".balance", "must be round_robin, least_conn, random_two or hash; got %q", pc.Balance)
	}
	switch {
	case spec.Balance == balancer.Hash && pc.HashKey == "":
		cp.errorf(path+".hash_key", "balance = \"hash\" needs a hash_key (client_ip, sni, query:NAME, header:NAME, cookie:NAME, path_prefix)")
	case pc.HashKey != "" && spec.Balance != balancer.Hash:
		cp.errorf(path+".hash_key", "only used with balance = \"hash\"")
	case pc.HashKey != "":
		if spec.HashKey, err = balancer.ParseHashKey(pc.HashKey); err != nil {
			cp.errorf(path+".hash_key", "%v", err)
		}
	}
	if f := pc.HashBalanceFactor; f != 0 && (f < 1 || f > 100) {
		cp.errorf(path+".hash_balance_factor", "must be 0 (off) or between 1 and 100, got %v", f)
	}
	if pc.MaxFails < 0 {
		cp.errorf(path+".max_fails", "must be >= 0, got %d", pc.MaxFails)
	}
	if spec.OnAllUnhealthy, err = balancer.ParseAllUnhealthy(pc.OnAllUnhealthy); err != nil {
		cp.errorf(path+".on_all_unhealthy", "must be reject or try_all; got %q", pc.OnAllUnhealthy)
	}
	if st := pc.SecondChanceStatus; st != 0 {
		switch {
		case st < 400 || st > 599:
			cp.errorf(path+".second_chance_status", "must be 0 (off) or a status from 400 to 599, got %d", st)
		case spec.Balance != balancer.Hash:
			cp.errorf(path+".second_chance_status", "only used with balance = \"hash\"")
		default:
			spec.SecondChanceStatus = st
		}
	}
	spec.SecondChanceWindow = cp.duration(path+".second_chance_window", pc.SecondChanceWindow, balancer.DefaultSecondChanceWindow, false)
	if pc.StickyCookie != "" {
		if (&http.Cookie{Name: pc.StickyCookie, Value: "0"}).Valid() != nil {
			cp.errorf(path+".sticky_cookie", "%q is not a valid cookie name (RFC 6265 token)", pc.StickyCookie)
		}
		spec.StickyCookie = pc.StickyCookie
	}
}

// health checks a pool's health table (path "pools.NAME.health").
func (cp *compiler) health(path string, h HealthConfig) balancer.HealthConfig {
	check := h.Check
	if check == "" {
		check = "tcp" // a dead game server must stop getting players within seconds
	}
	hc := balancer.HealthConfig{
		Interval: cp.duration(path+".interval", h.Interval, balancer.DefaultHealthInterval, false),
		Timeout:  cp.duration(path+".timeout", h.Timeout, balancer.DefaultHealthTimeout, false),
		Rise:     h.Rise,
		Fall:     h.Fall,
		Path:     h.Path,
		Host:     h.Host,
		SNI:      h.SNI,
		TLS:      h.TLS,
	}
	var err error
	if hc.Check, err = balancer.ParseCheckType(check); err != nil {
		cp.errorf(path+".check", "must be tcp, tls, http, websocket or none; got %q", h.Check)
	}
	if h.Rise < 0 || h.Fall < 0 {
		cp.errorf(path, "rise and fall must be >= 1")
	}
	if hc.Timeout > hc.Interval {
		cp.errorf(path+".timeout", "%v is longer than the interval %v", hc.Timeout, hc.Interval)
	}
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		cp.errorf(path+".path", "must start with \"/\", got %q", h.Path)
	}
	if h.Status != "" {
		lo, hi, ok := parseStatusRange(h.Status)
		if !ok {
			cp.errorf(path+".status", "want a status or a range like \"200-399\", got %q", h.Status)
		}
		hc.StatusMin, hc.StatusMax = lo, hi
	}
	return hc
}

// agent checks a pool's agent table (path "pools.NAME.agent"); the zero
// AgentConfig (no agent) without one.
func (cp *compiler) agent(path string, a *AgentConfig) balancer.AgentConfig {
	if a == nil {
		return balancer.AgentConfig{}
	}
	if a.Port < 1 || a.Port > 65535 {
		cp.errorf(path+".port", "want the agent's TCP port on each backend's host, 1-65535; got %d", a.Port)
	}
	ac := balancer.AgentConfig{
		Port:     a.Port,
		Interval: cp.duration(path+".interval", a.Interval, balancer.DefaultAgentInterval, false),
	}
	ac.Timeout = cp.duration(path+".timeout", a.Timeout, min(balancer.DefaultAgentTimeout, ac.Interval), false)
	if ac.Interval > 0 && ac.Interval < minAgentInterval {
		cp.errorf(path+".interval", "must be at least %v, got %q", minAgentInterval, a.Interval)
	}
	if ac.Timeout > ac.Interval {
		cp.errorf(path+".timeout", "%v is longer than the interval %v", ac.Timeout, ac.Interval)
	}
	return ac
}

// minAgentInterval keeps a fleet's agents from being asked in a busy loop.
const minAgentInterval = 100 * time.Millisecond

// backends checks a pool's backends and returns the valid ones. With
// discover, the list may be empty.
func (cp *compiler) backends(path string, list []BackendConfig, discovered bool) []balancer.BackendConfig {
	if len(list) == 0 && !discovered {
		cp.errorf(path+".backends", "pool has no backends (list some, or set discover)")
	}
	var out []balancer.BackendConfig
	seen := map[string]bool{}
	ids := map[string]int{}
	for i, b := range list {
		bpath := fmt.Sprintf("%s.backends[%d]", path, i)
		if err := checkHostPort(b.Address, false); err != nil {
			cp.errorf(bpath+".address", "%v", err)
			continue
		}
		if seen[b.Address] {
			cp.errorf(bpath+".address", "duplicate backend %q", b.Address)
			continue
		}
		seen[b.Address] = true
		bc := balancer.BackendConfig{ID: b.ID, Address: b.Address, Weight: 1, MaxConnections: b.MaxConnections, Backup: b.Backup}
		if b.ID != "" && !validBackendID(b.ID) {
			cp.errorf(bpath+".id", "%q: use 1 to 64 letters, digits, '.', '_', '-' or ':'", b.ID)
		}
		// The admin API finds a backend by id or address: neither may
		// name two backends.
		id := cmp.Or(b.ID, b.Address)
		if j, dup := ids[id]; dup {
			cp.errorf(bpath+".id", "id %q is also backends[%d]'s id or address", id, j)
		}
		ids[id] = i
		if _, dup := ids[b.Address]; !dup {
			ids[b.Address] = i
		}
		if b.Weight != nil {
			bc.Weight = *b.Weight
			if bc.Weight < 1 || bc.Weight > 1000 {
				cp.errorf(bpath+".weight", "must be between 1 and 1000, got %d", bc.Weight)
			}
		}
		if b.MaxConnections < 0 {
			cp.errorf(bpath+".max_connections", "must be >= 0 (0: unlimited), got %d", b.MaxConnections)
		}
		out = append(out, bc)
	}
	return out
}

// resolver checks [resolver]: the DNS servers of discovery.
func (cp *compiler) resolver() {
	var err error
	for i, s := range cp.cfg.Resolver.Servers {
		if _, perr := netip.ParseAddrPort(s); perr != nil {
			cp.errorf(fmt.Sprintf("resolver.servers[%d]", i), "want an IP address and port, like \"127.0.0.1:53\" or \"[::1]:53\"; got %q", s)
			err = perr
		}
	}
	if err == nil {
		cp.dns, err = discover.NewResolver(cp.cfg.Resolver.Servers)
		if err != nil {
			cp.errorf("resolver.servers", "%s", strings.TrimPrefix(err.Error(), "discover: "))
		}
	}
}

// discovery checks a pool's discover and resolve_interval keys: the
// backends it adds from DNS, and how often it asks.
func (cp *compiler) discovery(path string, pc *PoolConfig, spec *balancer.PoolConfig) {
	interval := cp.duration(path+".resolve_interval", pc.ResolveInterval, defaultResolveInterval, false)
	if pc.Discover == "" {
		if pc.ResolveInterval != "" {
			cp.errorf(path+".resolve_interval", "only used with discover")
		}
		return
	}
	if interval > 0 && interval < balancer.MinResolveDelay {
		cp.errorf(path+".resolve_interval", "must be at least %v, got %q", balancer.MinResolveDelay, pc.ResolveInterval)
	}
	src, err := discover.New(pc.Discover, cmp.Or(cp.dns, &discover.Resolver{}))
	if err != nil {
		cp.errorf(path+".discover", "%s", strings.TrimPrefix(err.Error(), "discover: "))
		return
	}
	spec.Discover, spec.ResolveInterval, spec.DrainTimeout = src, interval, cp.out.DrainTimeout
}

func parseStatusRange(s string) (lo, hi int, ok bool) {
	a, b, isRange := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi, err2 := lo, error(nil)
	if isRange {
		hi, err2 = strconv.Atoi(strings.TrimSpace(b))
	}
	ok = err1 == nil && err2 == nil && lo >= 100 && hi <= 599 && lo <= hi
	return lo, hi, ok
}

// validBackendID reports whether id can name a backend in the admin API's
// URL paths, metrics labels and logs as it is.
func validBackendID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-', c == ':':
		default:
			return false
		}
	}
	return true
}
