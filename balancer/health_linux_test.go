package balancer

import (
	"os"
	"runtime"
	"testing"
	"time"
)

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// TestHealthBlackholed pins D9 (shrunk): 10 blackholed backends checked every
// 50 ms with a 100 ms timeout. Every check ends at its timeout (all go
// DOWN), goroutines stay within baseline + 2 per backend (its check loop and
// the connect's context watcher) + 5, and fds within baseline + 1 per
// backend (the connecting socket) + 8, sampled throughout.
func TestHealthBlackholed(t *testing.T) {
	addrs := make([]string, 10)
	for i := range addrs {
		addrs[i] = blackhole(t)
	}
	runtime.GC()
	baseG, baseFD := runtime.NumGoroutine(), countFDs(t)
	p := mustPool(t, PoolConfig{
		Name: "bh", Backends: backendsOf(addrs...),
		Health: HealthConfig{Check: CheckTCP, Interval: 50 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 2, Fall: 3},
	})
	p.Start()
	defer p.Close()
	maxG, maxFD := 0, 0
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		maxG, maxFD = max(maxG, runtime.NumGoroutine()-baseG), max(maxFD, countFDs(t)-baseFD)
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("max goroutines +%d, fds +%d", maxG, maxFD)
	if maxG > 2*10+5 {
		t.Errorf("goroutines grew by %d, bound %d", maxG, 2*10+5)
	}
	if maxFD > 10+8 {
		t.Errorf("fds grew by %d, bound %d", maxFD, 10+8)
	}
	for _, st := range p.Status() {
		if st.Healthy || st.LastCheckDuration < 90*time.Millisecond || st.LastCheckDuration > time.Second {
			t.Errorf("%s: healthy %v after a check of %v (%s)", st.Address, st.Healthy, st.LastCheckDuration, st.LastCheckError)
		}
	}
}
