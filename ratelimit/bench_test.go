package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// BenchmarkAllow measures the limiter's added latency on the request path with warm leases:
// parallel Allow calls of keys whose windows have room. Besides ns/op it reports the latency
// distribution of single calls (p50-ns, p99-ns, p999-ns); the bound is p99 under
// 100µs. Sub-benchmarks vary the counter (in-process dcache, or a real three-member Olric
// cluster where most leases cross loopback TCP) and the rules per request.
func BenchmarkAllow(b *testing.B) {
	oneRule := func(i int) []Rule {
		return []Rule{{Policy: PolicyClient, Key: fmt.Sprint("ip:10.0.0.", i%64), Limit: 1 << 40, Window: time.Hour}}
	}
	threeRules := func(i int) []Rule {
		return []Rule{
			{Policy: PolicyClient, Key: fmt.Sprint("key:", i%64), Limit: 1 << 40, Window: time.Minute},
			{Policy: PolicyEndpoint, Key: "/v1/chat/completions", Limit: 1 << 40, Window: time.Minute},
			{Policy: PolicyEndpoint, Key: "/v1/chat/completions", Limit: 1 << 40, Window: time.Hour},
		}
	}
	denied := func(i int) []Rule {
		return []Rule{{Policy: PolicyClient, Key: fmt.Sprint("ip:10.0.1.", i%64), Limit: 1, Window: time.Hour}}
	}
	b.Run("local/1rule", func(b *testing.B) {
		benchAllow(b, newLimiter(b, Config{Counter: localCache(b), Nodes: nodes(3)}), oneRule, true)
	})
	b.Run("local/3rules", func(b *testing.B) {
		benchAllow(b, newLimiter(b, Config{Counter: localCache(b), Nodes: nodes(3)}), threeRules, true)
	})
	b.Run("local/denied", func(b *testing.B) {
		benchAllow(b, newLimiter(b, Config{Counter: localCache(b), Nodes: nodes(3)}), denied, false)
	})
	b.Run("olric3/1rule", func(b *testing.B) {
		c := startOlric(b, 3)[0]
		benchAllow(b, newLimiter(b, Config{Counter: c, Nodes: nodes(3)}), oneRule, true)
	})
	b.Run("olric3/3rules", func(b *testing.B) {
		c := startOlric(b, 3)[0]
		benchAllow(b, newLimiter(b, Config{Counter: c, Nodes: nodes(3)}), threeRules, true)
	})
}

// benchAllow runs Allow in parallel over 64 keys built by rules(i). want is the decision every
// call must get after the warm-up.
func benchAllow(b *testing.B, l *Limiter, rules func(int) []Rule, want bool) {
	ctx := context.Background()
	sets := make([][]Rule, 64)
	for i := range sets {
		sets[i] = rules(i)
		l.Allow(ctx, sets[i]) // warm: the first lease of each key
	}
	warm := l.Stats()
	var mu sync.Mutex
	hist := hdrhistogram.New(1, int64(10*time.Second), 3)
	var wrong int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		h := hdrhistogram.New(1, int64(10*time.Second), 3)
		var bad int64
		i := 0
		for pb.Next() {
			start := time.Now()
			d := l.Allow(ctx, sets[i%len(sets)])
			_ = h.RecordValue(int64(time.Since(start)))
			if d.Allowed != want {
				bad++
			}
			i++
		}
		mu.Lock()
		hist.Merge(h)
		wrong += bad
		mu.Unlock()
	})
	b.StopTimer()
	if wrong > 0 {
		b.Fatalf("%d calls decided %v", wrong, !want)
	}
	b.ReportMetric(float64(hist.ValueAtQuantile(50)), "p50-ns")
	b.ReportMetric(float64(hist.ValueAtQuantile(99)), "p99-ns")
	b.ReportMetric(float64(hist.ValueAtQuantile(99.9)), "p999-ns")
	st := l.Stats()
	// Requests that waited for a lease, and counter calls, during the timed part.
	b.ReportMetric(float64(st.Waits-warm.Waits), "waits")
	b.ReportMetric(float64(st.Leases-warm.Leases), "leases")
}
