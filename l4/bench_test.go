package l4

import (
	"context"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cpuTime is this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports CPU time per op (the relay's and the test's ends
// together): on a small shared box ns/op is mostly scheduling latency.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkRelayBulk moves 1 MiB per op client→backend through a relay over
// loopback (the test's writer and reader share the CPUs with the relay).
func BenchmarkRelayBulk(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			h := startRelay(b, m, Options{})
			const chunk = 256 * kib
			done := make(chan error, 1)
			go func() {
				buf := make([]byte, chunk)
				want := int64(b.N) * mib
				n, err := io.CopyBuffer(io.Discard, io.LimitReader(h.backend, want), buf)
				if err == nil && n != want {
					err = io.ErrUnexpectedEOF
				}
				done <- err
			}()
			buf := make([]byte, chunk)
			b.SetBytes(mib)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for range b.N {
				for off := 0; off < mib; off += chunk {
					if _, err := h.client.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			reportCPU(b, cpu0)
			b.StopTimer()
			h.client.Close()
			h.backend.Close()
			h.wait(b)
		})
	}
}

// BenchmarkRelayPingPong is one 64-byte round trip client→backend→client
// per op: the per-chunk cost of the relay (syscalls, wakeups, allocations).
func BenchmarkRelayPingPong(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			h := startRelay(b, m, Options{})
			go echo(h.backend, 64)
			msg := make([]byte, 64)
			buf := make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for range b.N {
				if _, err := h.client.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(h.client, buf); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0)
			b.StopTimer()
			h.client.Close()
			h.wait(b)
		})
	}
}

func echo(c net.Conn, size int) {
	defer c.Close()
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// BenchmarkPingPongDirect is the baseline: the same round trip with no relay.
func BenchmarkPingPongDirect(b *testing.B) {
	c, s := tcpPair(b)
	defer c.Close()
	go echo(s, 64)
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
}

// BenchmarkIdleRelayMemory starts 2,000 TCP↔TCP relays per engine, moves a
// message each way on each, lets them idle and reports what they hold: Go
// heap and goroutine stacks per relay, over the sockets and conns that exist
// either way (created before the baseline). Run it with -benchtime=1x.
func BenchmarkIdleRelayMemory(b *testing.B) {
	for _, m := range tcpModes {
		b.Run(m.name, func(b *testing.B) {
			heap, stack, gs := idleRelayCost(b, m, 2000)
			b.ReportMetric(heap, "heap-B/relay")
			b.ReportMetric(stack, "stack-B/relay")
			b.ReportMetric(heap+stack, "B/relay")
			b.ReportMetric(gs, "goroutines/relay")
		})
	}
}

// idleRelayCost runs n idle relays of mode m and reports the growth of heap
// in use, stacks in use and goroutines per relay once they are idle.
func idleRelayCost(tb testing.TB, m mode, n int) (heap, stack, goroutines float64) {
	tb.Helper()
	es := make([]idleEnds, n)
	for i := range es {
		cc, rc := tcpPair(tb)
		rb, bc := tcpPair(tb)
		es[i] = idleEnds{client: cc, relayClient: rc, relayBackend: rb, backend: bc, raw: cc}
	}
	return idleCost(tb, es, m.engine)
}

// idleEnds are the four ends of one relay under test: the test's client
// and backend, and the relay's two (raw: the socket under client).
type idleEnds struct {
	client, relayClient net.Conn
	relayBackend        *net.TCPConn
	backend, raw        *net.TCPConn
}

// idleCost starts a relay on each of es with engine, moves a 64-byte
// message each way over each, lets them park and returns the growth of
// heap, stacks and goroutines per relay since before they started.
func idleCost(tb testing.TB, es []idleEnds, engine Engine) (heap, stack, goroutines float64) {
	tb.Helper()
	n := len(es)
	var wg sync.WaitGroup
	defer func() {
		for _, e := range es {
			e.raw.Close()
			e.backend.Close()
		}
		wg.Wait()
	}()
	snap := func() (uint64, uint64, int) {
		runtime.GC()
		runtime.GC() // and the pools' victim caches
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()
	}
	heap0, stack0, g0 := snap()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wg.Add(n)
	for _, e := range es {
		Start(ctx, e.relayClient, e.relayBackend, Options{Engine: engine}, func(Stats) { wg.Done() })
	}
	msg := make([]byte, 64)
	for _, e := range es {
		for _, pair := range [][2]net.Conn{{e.client, e.backend}, {e.backend, e.client}} {
			if _, err := pair[0].Write(msg); err != nil {
				tb.Fatal(err)
			}
			pair[1].SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(pair[1], msg); err != nil {
				tb.Fatal(err)
			}
		}
	}
	time.Sleep(100 * time.Millisecond) // let every direction park
	heap1, stack1, g1 := snap()
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	return per(heap1, heap0), per(stack1, stack0), float64(g1-g0) / float64(n)
}

// BenchmarkRelayPingPongMany is BenchmarkRelayPingPong on 50 relays at once
// (b.N round trips in all): the game server's shape, many players with
// small messages, where one wakeup of the epoll engine can serve several
// relays.
func BenchmarkRelayPingPongMany(b *testing.B) {
	const relays = 50
	for _, m := range tcpModes {
		b.Run(m.name, func(b *testing.B) {
			hs := make([]*harness, relays)
			for i := range hs {
				hs[i] = startRelay(b, m, Options{})
				go echo(hs[i].backend, 64)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			var wg sync.WaitGroup
			errc := make(chan error, relays)
			for i, h := range hs {
				n := b.N / relays
				if i < b.N%relays {
					n++
				}
				wg.Go(func() {
					msg := make([]byte, 64)
					for range n {
						if _, err := h.client.Write(msg); err != nil {
							errc <- err
							return
						}
						if _, err := io.ReadFull(h.client, msg); err != nil {
							errc <- err
							return
						}
					}
				})
			}
			wg.Wait()
			reportCPU(b, cpu0)
			b.StopTimer()
			close(errc)
			for err := range errc {
				b.Fatal(err)
			}
			for _, h := range hs {
				h.client.Close()
				h.wait(b)
			}
		})
	}
}
