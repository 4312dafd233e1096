package balancer

import "sync/atomic"

// picker chooses the backend of each connect attempt of one Dial.
// Implementations are safe for concurrent use, lock-free and allocation-free
// on the hot path. Round robin is the only one now; least_conn, random_two and
// hash slot in here, and health/capacity filtering goes inside pick.
type picker interface {
	// pick returns the index in backends of the backend for the next attempt,
	// never one already in st.tried, or -1 when no backend is left to try.
	pick(backends []*Backend, st *pickState) int
}

// pickState is what one Dial knows while it picks: the backends it already
// tried, in order. It lives on the caller's stack; tried starts in buf so the
// usual few attempts need no allocation.
type pickState struct {
	tried []int
	buf   [4]int
}

func (st *pickState) reset() { st.tried = st.buf[:0] }

func (st *pickState) add(i int) {
	if st.tried == nil {
		st.tried = st.buf[:0]
	}
	st.tried = append(st.tried, i)
}

// has reports whether backend i was already tried. Linear: attempts are few.
func (st *pickState) has(i int) bool {
	for _, j := range st.tried {
		if j == i {
			return true
		}
	}
	return false
}

// roundRobin hands out backends in turn from one shared atomic counter. A
// retry takes the backend after the one that just failed (skipping those
// already tried) rather than the counter's next value, so each attempt of a
// Dial goes to a different backend even under concurrency, and a failed
// backend does not shift the rotation of other connections.
type roundRobin struct {
	next atomic.Uint64
}

var _ picker = (*roundRobin)(nil)

func (r *roundRobin) pick(backends []*Backend, st *pickState) int {
	n := len(backends)
	if n == 0 {
		return -1
	}
	if len(st.tried) == 0 {
		return int((r.next.Add(1) - 1) % uint64(n))
	}
	i := st.tried[len(st.tried)-1]
	for range n {
		i++
		if i == n {
			i = 0
		}
		if !st.has(i) {
			return i
		}
	}
	return -1
}
