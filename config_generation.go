package main

import "sync"

// generation counts the connections accepted under one config. A reload
// retires the running one: it takes no new connection, and whoever owns
// what it holds releases it when the last connection ends. It knows nothing
// of the config itself (Runtime uses it).
type generation struct {
	mu      sync.Mutex
	conns   int
	retired bool
}

// acquire counts a new connection; false once retired.
func (g *generation) acquire() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.retired {
		return false
	}
	g.conns++
	return true
}

// release ends a connection acquired before. It reports whether that was
// the last connection of a retired generation.
func (g *generation) release() (last bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.conns--
	return g.retired && g.conns == 0
}

// retire marks the generation replaced. It reports whether no connection
// is left.
func (g *generation) retire() (last bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.retired = true
	return g.conns == 0
}
