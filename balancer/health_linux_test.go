package balancer

import (
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"sluice/balancer/balancertest"
)

// TestHealthBlackholed pins D9 (shrunk): 10 blackholed backends checked every
// 50 ms with a 100 ms timeout. Every check ends at its timeout (all go
// DOWN); the sockets toward the backends stay at 1 per backend (the check's
// connect), counted by port so nothing else in the process can move the
// count; goroutines stay within baseline + 2 per backend (its check loop and
// the connect's context watcher) + 5, and all fds within baseline + 1 per
// backend + 8, sampled throughout. The process-wide bounds are tolerances:
// this test runs alone (no t.Parallel), but earlier tests may still wind
// down.
func TestHealthBlackholed(t *testing.T) {
	addrs := make([]string, 10)
	ports := make([]int, len(addrs))
	for i := range addrs {
		addrs[i] = blackhole(t)
		_, p, _ := net.SplitHostPort(addrs[i])
		ports[i], _ = strconv.Atoi(p)
	}
	runtime.GC()
	fds := balancertest.ReadFDs(t)
	baseG, baseFD, baseSock := runtime.NumGoroutine(), fds.Total, fds.Connected(ports...) // the fill connections
	p := mustPool(t, PoolConfig{
		Name: "bh", Backends: backendsOf(addrs...),
		Health: HealthConfig{Check: CheckTCP, Interval: 50 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 2, Fall: 3},
	})
	p.Start()
	defer p.Close()
	maxG, maxFD, maxSock := 0, 0, 0
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		fds := balancertest.ReadFDs(t)
		maxG, maxFD = max(maxG, runtime.NumGoroutine()-baseG), max(maxFD, fds.Total-baseFD)
		maxSock = max(maxSock, fds.Connected(ports...)-baseSock)
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("max goroutines +%d, fds +%d, sockets toward the backends +%d", maxG, maxFD, maxSock)
	if maxSock > 10 {
		t.Errorf("%d sockets toward 10 blackholed backends at once, want at most 1 each", maxSock)
	}
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
