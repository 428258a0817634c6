package gossip

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkLoadPropagation3 and BenchmarkLoadPropagation5 measure how long
// a load change on one node takes to reach every other node's state, in
// clusters on loopback at memberlist's default LAN settings and this
// package's default load settings. Each iteration is one SetLoad, paced
// 10-30 ms apart (so some changes coalesce under MinPushInterval, as on a
// busy node). The delay for a change is from just before SetLoad to the
// receiver's LoadUpdated for the first report carrying that change or a
// later one. Reported: p50-ms, p99-ms, max-ms over all (receiver, change)
// pairs. Run with e.g. -bench LoadPropagation -benchtime 200x.
func BenchmarkLoadPropagation3(b *testing.B) { benchLoadPropagation(b, 3, "", pace{busyMin, busyMax}) }

// BenchmarkLoadPropagation5 is the yardstick: p99 under 500 ms.
func BenchmarkLoadPropagation5(b *testing.B) { benchLoadPropagation(b, 5, "", pace{busyMin, busyMax}) }

// BenchmarkLoadPropagation5Encrypted adds gossip.encrypt_key (AES-256).
func BenchmarkLoadPropagation5Encrypted(b *testing.B) {
	benchLoadPropagation(b, 5, "4le0nSsm0KgyKc6dTmBnAA6Tq5pbxI5oWJL0WWHk0Kw=", pace{busyMin, busyMax})
}

// BenchmarkLoadPropagation5Sparse paces changes 50-100 ms apart, beyond
// MinPushInterval, so each is sent at once: the network path alone.
func BenchmarkLoadPropagation5Sparse(b *testing.B) {
	benchLoadPropagation(b, 5, "", pace{sparseMin, sparseMax})
}

// pace is the range of random gaps between load changes.
type pace struct{ min, max time.Duration }

const (
	busyMin, busyMax     = 10 * time.Millisecond, 30 * time.Millisecond
	sparseMin, sparseMax = 50 * time.Millisecond, 100 * time.Millisecond
)

// receipt is when a receiver's state took a report with Seq seq.
type receipt struct {
	seq uint64
	at  time.Time
}

func benchLoadPropagation(b *testing.B, n int, key string, p pace) {
	nodes := startCluster(b, n, func(i int, cfg *Config) {
		cfg.Tune = nil // memberlist.DefaultLANConfig()
		cfg.LoadInterval = 0
		cfg.MinPushInterval = 0
		cfg.SuspectAfter = 0
		cfg.EventBuffer = 1 << 14
		cfg.EncryptKey = key
	})
	sender := nodes[0]
	name := sender.LocalName()

	var (
		mu       sync.Mutex
		receipts = make([][]receipt, n-1)
		wg       sync.WaitGroup
		cancels  []func()
	)
	for i, g := range nodes[1:] {
		events, cancel := g.Subscribe()
		cancels = append(cancels, cancel)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range events {
				if ev.Type == EventLoad && ev.Member.Name == name {
					mu.Lock()
					receipts[i] = append(receipts[i], receipt{ev.Member.Load.Seq, ev.Member.LoadUpdated})
					mu.Unlock()
				}
			}
		}()
	}

	type change struct {
		seq uint64
		at  time.Time
	}
	changes := make([]change, 0, b.N)
	load := sampleLoad(0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := load.Models["llama-3-8b"]
		m.QueueDepth = i
		load.Models["llama-3-8b"] = m
		at := time.Now()
		if err := sender.SetLoad(load); err != nil {
			b.Fatal(err)
		}
		self, _ := sender.Member(name)
		changes = append(changes, change{self.Load.Seq, at})
		// Pacing, not synchronisation: changes arrive at a busy node's rate.
		time.Sleep(p.min + rand.N(p.max-p.min+1))
	}
	b.StopTimer()

	last := changes[len(changes)-1].seq
	deadline := time.Now().Add(waitTimeout)
	for {
		done := true
		for _, g := range nodes[1:] {
			if m, _ := g.Member(name); m.Load.Seq < last {
				done = false
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the last change did not reach every node within %v", waitTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, cancel := range cancels {
		cancel()
	}
	wg.Wait()

	var delays []time.Duration
	for _, rs := range receipts {
		// Receipts are in Seq order: each receiver accepts only newer ones.
		j := 0
		for _, c := range changes {
			for j < len(rs) && rs[j].seq < c.seq {
				j++
			}
			if j == len(rs) {
				b.Fatalf("change %d never seen (an event was dropped?)", c.seq)
			}
			delays = append(delays, rs[j].at.Sub(c.at))
		}
	}
	slices.Sort(delays)
	pct := func(p float64) float64 {
		return float64(delays[int(p*float64(len(delays)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(pct(1), "max-ms")
	b.Logf("%d nodes, %d changes x %d receivers: p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		n, len(changes), n-1, pct(0.50), pct(0.99), pct(1))
}

// BenchmarkFailureDetection5 measures, at memberlist's default LAN settings
// and this package's defaults, how long after a node of a 5-node cluster
// stops (Shutdown, no Leave) the survivors see it Suspect (load reports
// stopped) and Failed (memberlist's failure detector). Each iteration
// builds a fresh cluster; run with -benchtime 3x.
func BenchmarkFailureDetection5(b *testing.B) {
	var suspect, failed []time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		nodes := startCluster(b, 5, func(i int, cfg *Config) {
			cfg.Tune = nil
			cfg.LoadInterval = 0
			cfg.SuspectAfter = 0
		})
		victim := nodes[4]
		type sub struct {
			ch     <-chan Event
			cancel func()
		}
		var subs []sub
		for _, g := range nodes[:4] {
			ch, cancel := g.Subscribe()
			subs = append(subs, sub{ch, cancel})
		}
		b.StartTimer()
		start := time.Now()
		if err := victim.Shutdown(); err != nil {
			b.Fatal(err)
		}
		for _, s := range subs {
			seenSuspect := false
			for {
				ev := <-s.ch
				if ev.Member.Name != victim.LocalName() {
					continue
				}
				// StateChanged is when the survivor's state changed, not
				// when this loop got round to reading the event.
				if ev.Type == EventSuspect && !seenSuspect {
					seenSuspect = true
					suspect = append(suspect, ev.Member.StateChanged.Sub(start))
				}
				if ev.Type == EventFailed {
					failed = append(failed, ev.Member.StateChanged.Sub(start))
					break
				}
			}
			s.cancel()
		}
		b.StopTimer()
		for _, g := range nodes[:4] {
			_ = g.Shutdown()
		}
	}
	report := func(name string, ds []time.Duration) {
		if len(ds) == 0 {
			return
		}
		slices.Sort(ds)
		b.ReportMetric(ds[len(ds)/2].Seconds(), name+"-p50-s")
		b.ReportMetric(ds[len(ds)-1].Seconds(), name+"-max-s")
		b.Logf("%s: %d observations, p50 %v, max %v", name, len(ds), ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
	}
	report("suspect", suspect)
	report("failed", failed)
}
