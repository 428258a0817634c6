package consensus

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"
)

// defaultTimings leaves the production timings (this package's defaults) in
// place while keeping a long apply timeout.
func defaultTimings(cfg *Config) {
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout, cfg.CommitTimeout = 0, 0, 0, 0
}

// BenchmarkApply measures the latency of one write committed through a
// quorum and applied on the leader (real TCP on loopback, bolt fsync).
func BenchmarkApply(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(strconv.Itoa(n)+"nodes", func(b *testing.B) {
			c := mustNewCluster(b, n, defaultTimings)
			leader := c.waitLeader()
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			i := 0
			for b.Loop() {
				start := time.Now()
				if _, err := leader.store.Apply(ctx, setBatching("m", i%MaxBatchSize+1)); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				i++
			}
			reportPercentiles(b, lat)
		})
	}
}

// BenchmarkApplyParallel measures write throughput with concurrent
// proposers on a 3-node cluster; raft batches them into shared fsyncs.
func BenchmarkApplyParallel(b *testing.B) {
	c := mustNewCluster(b, 3, defaultTimings)
	leader := c.waitLeader()
	ctx := context.Background()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := leader.store.Apply(ctx, setBatching("m", i%MaxBatchSize+1)); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkStateRead measures the lock-free local read the hot path uses.
func BenchmarkStateRead(b *testing.B) {
	c := mustNewCluster(b, 1)
	s := c.waitLeader().store
	if _, err := s.Apply(context.Background(), setBatching("m", 8)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if s.State().Batching["m"].MaxSize != 8 {
				b.Error("wrong state")
				return
			}
		}
	})
}

// BenchmarkLeaderHandoff measures the graceful path (Leave, then
// Shutdown) with production timings: from the start of Leave until another
// server is leader.
func BenchmarkLeaderHandoff(b *testing.B) {
	var took []time.Duration
	for b.Loop() {
		b.StopTimer()
		c := mustNewCluster(b, 3, defaultTimings)
		old := c.waitLeader()
		c.waitConverged()
		took = append(took, timeFailover(b, c, old, true))
	}
	reportPercentiles(b, took)
}

// BenchmarkLeaderFailover measures, in a 3-node cluster, the time from the
// leader's shutdown (a crash: no leadership transfer) until a survivor is
// leader, with the tightened test timings and raft's production defaults.
// Run it with a small -benchtime such as 5x: each round builds a cluster.
func BenchmarkLeaderFailover(b *testing.B) {
	timings := map[string]func(*Config){"test-timings": testTimings, "default-timings": defaultTimings}
	for _, name := range []string{"test-timings", "default-timings"} {
		b.Run(name, func(b *testing.B) {
			var took []time.Duration
			for b.Loop() {
				b.StopTimer()
				c := mustNewCluster(b, 3, timings[name])
				old := c.waitLeader()
				// Let the followers hear from this leader so that the
				// measurement starts from a settled cluster.
				if _, err := old.store.Apply(context.Background(), setBatching("m", 1)); err != nil {
					b.Fatal(err)
				}
				c.waitConverged()
				took = append(took, timeFailover(b, c, old, false))
			}
			reportPercentiles(b, took)
		})
	}
}

// timeFailover stops old (after Leave when leave is set) with the timer
// running and returns how long until a survivor leads; the cluster is then
// shut down off the clock. The timer is stopped on entry and running on
// return.
func timeFailover(b *testing.B, c *testCluster, old *testNode, leave bool) time.Duration {
	b.StartTimer()
	start := time.Now()
	if leave {
		if err := old.store.Leave(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	c.stop(old)
	for c.currentLeader() == nil {
		time.Sleep(time.Millisecond) // measurement resolution
	}
	took := time.Since(start)
	b.StopTimer()
	c.shutdownAll()
	b.StartTimer()
	return took
}

// reportPercentiles adds p50, p99 and max in milliseconds to the
// benchmark's output.
func reportPercentiles(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	ms := func(x time.Duration) float64 { return float64(x) / float64(time.Millisecond) }
	b.ReportMetric(ms(d[len(d)/2]), "p50-ms")
	b.ReportMetric(ms(d[min(len(d)-1, len(d)*99/100)]), "p99-ms")
	b.ReportMetric(ms(d[len(d)-1]), "max-ms")
}

// BenchmarkLeaderFailoverWrite kills the leader of a 3-node cluster (Shutdown without leaving, which
// closes its connections as a SIGKILL does) and measures how long until a client that retries
// every 10ms gets a write accepted by a new leader; the old leader then restarts and catches up
// before the next round. Timings are the production defaults.
//
//	go test ./consensus -run '^$' -bench LeaderFailoverWrite -benchtime 10x
func BenchmarkLeaderFailoverWrite(b *testing.B) {
	c := mustNewCluster(b, 3, defaultTimings)
	ctx := context.Background()
	var took []time.Duration
	round := 0
	for b.Loop() {
		b.StopTimer()
		leader := c.waitLeader()
		if _, err := leader.store.Apply(ctx, setBatching("m", 1)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		c.stop(leader)
		for {
			if d := writeOnce(c, round); d {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		took = append(took, time.Since(start))
		b.StopTimer()
		c.start(leader)
		round++
		b.StartTimer()
	}
	slices.Sort(took)
	var sum time.Duration
	for _, d := range took {
		sum += d
	}
	b.ReportMetric(float64(sum)/float64(len(took))/float64(time.Millisecond), "mean_ms")
	b.ReportMetric(float64(took[0])/float64(time.Millisecond), "min_ms")
	b.ReportMetric(float64(took[len(took)-1])/float64(time.Millisecond), "max_ms")
}

// writeOnce tries one write on whichever running node leads, as a retrying client does.
func writeOnce(c *testCluster, round int) bool {
	for _, n := range c.running() {
		if !n.store.IsLeader() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err := n.store.Apply(ctx, setBatching("m", round%MaxBatchSize+1))
		cancel()
		return err == nil
	}
	return false
}
