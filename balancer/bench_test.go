package balancer

import (
	"strconv"
	"testing"
)

var algorithms = []Algorithm{RoundRobin, LeastConn, RandomTwo, Hash}

// benchPool returns a pool of n backends that are never dialled, for picks
// only, with weights 1..4 and a few active connections each.
func benchPool(tb testing.TB, algo Algorithm, n int) *Pool {
	tb.Helper()
	bs := make([]BackendConfig, n)
	for i := range bs {
		bs[i] = BackendConfig{Address: "10.0.0." + strconv.Itoa(i+1) + ":7000", Weight: 1 + i%4}
	}
	p := mustPool(tb, PoolConfig{Name: "bench", Backends: bs, Balance: algo, HashBalanceFactor: 1.25})
	for i, b := range p.backends() {
		b.live.active.Store(int64(i % 3))
	}
	return p
}

var benchKeys = func() []string {
	ks := make([]string, 1024)
	for i := range ks {
		ks[i] = "room-" + strconv.Itoa(i)
	}
	return ks
}()

// BenchmarkPick measures one first-attempt pick (tier view included) per
// algorithm, from 8 goroutines per CPU at once; it must not allocate. Hash
// runs with keys and the 1.25 load bound (its most expensive path).
func BenchmarkPick(b *testing.B) {
	for _, algo := range algorithms {
		b.Run(algo.String(), func(b *testing.B) {
			p := benchPool(b, algo, 8)
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				req := DialRequest{HasHashKey: true}
				k := 0
				for pb.Next() {
					req.HashKey = benchKeys[k&1023]
					k++
					if p.pickOnce(&req) < 0 {
						b.Error("no pick")
					}
				}
			})
		})
	}
}

// BenchmarkPickHash measures hash picks (weighted, bounded) by pool size:
// rendezvous is O(backends) per pick.
func BenchmarkPickHash(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run("backends="+strconv.Itoa(n), func(b *testing.B) {
			p := benchPool(b, Hash, n)
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				req := DialRequest{HasHashKey: true}
				k := 0
				for pb.Next() {
					req.HashKey = benchKeys[k&1023]
					k++
					if p.pickOnce(&req) < 0 {
						b.Error("no pick")
					}
				}
			})
		})
	}
}

// TestPickAllocs pins that picks (first attempt and a retry) allocate
// nothing, for every algorithm.
func TestPickAllocs(t *testing.T) {
	for _, algo := range algorithms {
		p := benchPool(t, algo, 8)
		req := &DialRequest{HashKey: "room-7", HasHashKey: true}
		st := new(pickState)
		if n := testing.AllocsPerRun(1000, func() {
			v, err := p.view()
			if err != nil {
				t.Fatal(err)
			}
			st.reset()
			st.add(p.pick(p.set.Load(), &v, st, req))
			st.add(p.pick(p.set.Load(), &v, st, req)) // a retry
		}); n != 0 {
			t.Errorf("%v: pick allocates %v times", algo, n)
		}
	}
}

func benchmarkAppendProxyHeader(b *testing.B, v ProxyProtocol) {
	b.ReportAllocs()
	dst := make([]byte, 0, 256)
	for b.Loop() {
		var err error
		dst, err = AppendProxyHeader(dst[:0], v, testClient, testLocal, "game.example.com")
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendProxyHeaderV1(b *testing.B) { benchmarkAppendProxyHeader(b, ProxyV1) }
func BenchmarkAppendProxyHeaderV2(b *testing.B) { benchmarkAppendProxyHeader(b, ProxyV2) }
