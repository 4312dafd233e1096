package main

import (
	"strconv"
	"strings"
	"time"

	"sluice/balancer"
)

// compilePool fills the balancing and health parts of a pool's config.
func (c *Config) compilePool(bcfg *balancer.PoolConfig, pc *PoolConfig, path string, bad func(string, string, ...any), dur func(string, string, time.Duration, bool) time.Duration) {
	var err error
	if bcfg.Balance, err = balancer.ParseAlgorithm(pc.Balance); err != nil {
		bad(path+".balance", "must be round_robin, least_conn, random_two or hash; got %q", pc.Balance)
	}
	switch {
	case bcfg.Balance == balancer.Hash && pc.HashKey == "":
		bad(path+".hash_key", "balance = \"hash\" needs a hash_key (client_ip, sni, query:NAME, header:NAME, cookie:NAME, path_prefix)")
	case pc.HashKey != "" && bcfg.Balance != balancer.Hash:
		bad(path+".hash_key", "only used with balance = \"hash\"")
	case pc.HashKey != "":
		if bcfg.HashKey, err = balancer.ParseHashKey(pc.HashKey); err != nil {
			bad(path+".hash_key", "%v", err)
		}
	}
	if f := pc.HashBalanceFactor; f != 0 && (f < 1 || f > 100) {
		bad(path+".hash_balance_factor", "must be 0 (off) or between 1 and 100, got %v", f)
	}
	if pc.MaxFails < 0 {
		bad(path+".max_fails", "must be >= 0, got %d", pc.MaxFails)
	}
	if bcfg.OnAllUnhealthy, err = balancer.ParseAllUnhealthy(pc.OnAllUnhealthy); err != nil {
		bad(path+".on_all_unhealthy", "must be reject or try_all; got %q", pc.OnAllUnhealthy)
	}

	h := pc.Health
	hpath := path + ".health"
	check := h.Check
	if check == "" {
		check = "tcp" // a dead game server must stop getting players within seconds
	}
	hc := balancer.HealthConfig{
		Interval: dur(hpath+".interval", h.Interval, balancer.DefaultHealthInterval, false),
		Timeout:  dur(hpath+".timeout", h.Timeout, balancer.DefaultHealthTimeout, false),
		Rise:     h.Rise,
		Fall:     h.Fall,
		Path:     h.Path,
		Host:     h.Host,
		SNI:      h.SNI,
		TLS:      h.TLS,
	}
	if hc.Check, err = balancer.ParseCheckType(check); err != nil {
		bad(hpath+".check", "must be tcp, tls, http, websocket or none; got %q", h.Check)
	}
	if h.Rise < 0 || h.Fall < 0 {
		bad(hpath, "rise and fall must be >= 1")
	}
	if hc.Timeout > hc.Interval {
		bad(hpath+".timeout", "%v is longer than the interval %v", hc.Timeout, hc.Interval)
	}
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		bad(hpath+".path", "must start with \"/\", got %q", h.Path)
	}
	if h.Status != "" {
		lo, hi, ok := parseStatusRange(h.Status)
		if !ok {
			bad(hpath+".status", "want a status or a range like \"200-399\", got %q", h.Status)
		}
		hc.StatusMin, hc.StatusMax = lo, hi
	}
	bcfg.Health = hc
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
