package tlsutil

import (
	"fmt"
	"iter"
	"strings"
)

// HostPattern is one configured host name: an exact name
// ("game.example.com") or a single-label wildcard ("*.example.com", which
// matches "a.example.com" but neither "example.com" nor "a.b.example.com",
// as in RFC 6125 and nginx's server_name). Name is normalized (NormalizeSNI)
// and never holds the "*." prefix.
type HostPattern struct {
	Name     string
	Wildcard bool
}

// ParseHostPattern checks a configured name and normalizes it.
func ParseHostPattern(raw string) (HostPattern, error) {
	name, wild := strings.CutPrefix(raw, "*.")
	if strings.Contains(name, "*") {
		return HostPattern{}, fmt.Errorf("%q: a wildcard may only be a single leading label (\"*.example.com\")", raw)
	}
	n, ok := NormalizeSNI(name)
	if !ok {
		return HostPattern{}, fmt.Errorf("%q is not a valid host name (use ASCII/A-labels, e.g. xn--..., no IP addresses, no trailing dot)", raw)
	}
	return HostPattern{Name: n, Wildcard: wild}, nil
}

// String returns the pattern as configured, normalized: "*.example.com" for
// a wildcard.
func (p HostPattern) String() string {
	if p.Wildcard {
		return "*." + p.Name
	}
	return p.Name
}

// HostSet maps host patterns to values, for SNI routing and for the Host
// check of an HTTP route alike. Build it with Add; once built, Lookup and
// All are safe for concurrent use and Lookup does not allocate. The zero
// value is an empty set.
type HostSet[T any] struct {
	exact    map[string]T
	wildcard map[string]T // by the name after "*."
}

// Add enters p with value v. If p is already in the set, it returns the
// value it had and false, and changes nothing.
func (s *HostSet[T]) Add(p HostPattern, v T) (prev T, added bool) {
	m := &s.exact
	if p.Wildcard {
		m = &s.wildcard
	}
	if *m == nil {
		*m = map[string]T{}
	}
	if old, dup := (*m)[p.Name]; dup {
		return old, false
	}
	(*m)[p.Name] = v
	return v, true
}

// Lookup returns the value for a normalized name: its exact entry, else the
// wildcard of its parent domain.
func (s *HostSet[T]) Lookup(name string) (T, bool) {
	if v, ok := s.exact[name]; ok && name != "" {
		return v, true
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		v, ok := s.wildcard[name[i+1:]]
		return v, ok
	}
	var zero T
	return zero, false
}

// Len is the number of patterns.
func (s *HostSet[T]) Len() int { return len(s.exact) + len(s.wildcard) }

// All yields every pattern and its value, in no particular order.
func (s *HostSet[T]) All() iter.Seq2[HostPattern, T] {
	return func(yield func(HostPattern, T) bool) {
		for n, v := range s.exact {
			if !yield(HostPattern{Name: n}, v) {
				return
			}
		}
		for n, v := range s.wildcard {
			if !yield(HostPattern{Name: n, Wildcard: true}, v) {
				return
			}
		}
	}
}
