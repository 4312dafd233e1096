package l4

import (
	"io"
	"net"
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
