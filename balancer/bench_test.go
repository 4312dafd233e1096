package balancer

import (
	"testing"
)

// BenchmarkPick measures the round-robin pick under contention; it must not
// allocate.
func BenchmarkPick(b *testing.B) {
	bs := make([]*Backend, 8)
	for i := range bs {
		bs[i] = newBackend(BackendConfig{Address: "x"})
	}
	p := &Pool{backends: bs, picker: &roundRobin{}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var st pickState
		for pb.Next() {
			st.reset()
			if p.picker.pick(p.backends, &st) < 0 {
				b.Error("no pick")
			}
		}
	})
}

func TestPickAllocs(t *testing.T) {
	p := &Pool{backends: []*Backend{newBackend(BackendConfig{Address: "a"}), newBackend(BackendConfig{Address: "b"})}, picker: &roundRobin{}}
	st := new(pickState)
	if n := testing.AllocsPerRun(1000, func() {
		st.reset()
		st.add(p.picker.pick(p.backends, st))
		st.add(p.picker.pick(p.backends, st)) // a retry
	}); n != 0 {
		t.Errorf("pick allocates %v times", n)
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
