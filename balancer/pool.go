package balancer

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"time"
)

// Defaults from RELIABILITY.md T12: 3 s per attempt, 3 attempts, each to a
// different backend, inside 6 s in total.
const (
	DefaultConnectTimeout = 3 * time.Second
	DefaultMaxAttempts    = 3
	DefaultConnectBudget  = 6 * time.Second
)

// BackendConfig describes one backend of a pool.
type BackendConfig struct {
	// Address is host:port, validated by the caller. A host name is
	// resolved at each dial.
	Address string
}

// PoolConfig describes a pool. NewPool copies what it needs; the caller may
// reuse the struct.
type PoolConfig struct {
	// Name identifies the pool in errors and metrics.
	Name string
	// Backends in config order; round robin starts at the first.
	Backends []BackendConfig
	// ProxyProtocol is the header written before the prefix. If zero, none.
	ProxyProtocol ProxyProtocol
	// ConnectTimeout bounds one attempt: connect and the write of PROXY
	// header and prefix. If zero or negative, 3s is used.
	ConnectTimeout time.Duration
	// MaxAttempts is the number of backends tried per Dial, each a different
	// one. If zero or negative, 3 is used. It is capped at len(Backends).
	MaxAttempts int
	// ConnectBudget bounds all attempts of one Dial together. If zero or
	// negative, 6s is used.
	ConnectBudget time.Duration
}

// Pool is a set of backends and the policy to pick among them. Dial is safe
// for concurrent use.
type Pool struct {
	name     string
	backends []*Backend
	picker   picker
	proxy    ProxyProtocol
	dialer   net.Dialer

	connectTimeout time.Duration
	maxAttempts    int
	connectBudget  time.Duration
}

// ErrNoBackend is returned by Dial when there is no backend to try at all (no
// connect was attempted). When attempts were made and all failed, Dial
// returns a *DialError instead: l7 answers the first with 503, the second
// with 502.
var ErrNoBackend = errors.New("balancer: no backend available")

// NewPool builds a pool from cfg. It fails on an empty pool or an empty
// backend address; other validation (host:port syntax, duplicate names) is
// the config loader's.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if len(cfg.Backends) == 0 {
		return nil, fmt.Errorf("balancer: pool %q: no backends", cfg.Name)
	}
	switch cfg.ProxyProtocol {
	case ProxyNone, ProxyV1, ProxyV2:
	default:
		return nil, fmt.Errorf("balancer: pool %q: %w: %d", cfg.Name, ErrProxyProtocol, uint8(cfg.ProxyProtocol))
	}
	p := &Pool{
		name:           cfg.Name,
		backends:       make([]*Backend, 0, len(cfg.Backends)),
		picker:         &roundRobin{},
		proxy:          cfg.ProxyProtocol,
		dialer:         newDialer(),
		connectTimeout: orDefault(cfg.ConnectTimeout, DefaultConnectTimeout),
		maxAttempts:    orDefault(cfg.MaxAttempts, DefaultMaxAttempts),
		connectBudget:  orDefault(cfg.ConnectBudget, DefaultConnectBudget),
	}
	for i, bc := range cfg.Backends {
		if bc.Address == "" {
			return nil, fmt.Errorf("balancer: pool %q: backend %d: empty address", cfg.Name, i)
		}
		p.backends = append(p.backends, newBackend(bc))
	}
	p.maxAttempts = min(p.maxAttempts, len(p.backends))
	return p, nil
}

// orDefault returns v, or def when v is zero or negative.
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.name }

// Backends returns the pool's backends in config order. The slice is a copy;
// the *Backend values are shared and stay valid while connections use them.
func (p *Pool) Backends() []*Backend { return slices.Clone(p.backends) }

// ProxyProtocol returns the header the pool sends to its backends.
func (p *Pool) ProxyProtocol() ProxyProtocol { return p.proxy }
