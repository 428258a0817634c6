package gossip

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/clustersim"
	"github.com/shoal-dev/shoal/router"
)

// scaleParams is the workload of TestScale20 and of the simulation it is
// compared with: 20 nodes of 4 slots, 400 ms mean lognormal service, two
// nodes 3x slower, 80% utilization, requests arriving at every node.
var scaleParams = struct {
	nodes, slots, slow int
	mean               time.Duration
	sigma, slowFactor  float64
	util               float64
}{nodes: 20, slots: 4, slow: 2, mean: 400 * time.Millisecond, sigma: 0.6, slowFactor: 3, util: 0.8}

// simBackend is an in-test model server: Slots requests run at once, the
// rest queue; every change is published with SetLoad, as node/ does.
type simBackend struct {
	g     *Gossip
	slots int
	speed float64

	mu      sync.Mutex
	rng     *rand.Rand
	queue   []func()
	running int
	wg      *sync.WaitGroup
	stopped bool
}

func (b *simBackend) publishLocked() {
	_ = b.g.SetLoad(Load{Models: map[string]ModelLoad{"m": {QueueDepth: len(b.queue), InFlight: b.running, Slots: b.slots}}})
}

func (b *simBackend) snapshot() (queue, running int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue), b.running
}

// submit runs done when the request finishes.
func (b *simBackend) submit(done func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	if b.running < b.slots {
		b.startLocked(done)
	} else {
		b.queue = append(b.queue, done)
	}
	b.publishLocked()
}

func (b *simBackend) startLocked(done func()) {
	b.running++
	mu := math.Log(scaleParams.mean.Seconds()) - scaleParams.sigma*scaleParams.sigma/2
	d := time.Duration(math.Exp(mu+scaleParams.sigma*b.rng.NormFloat64()) * b.speed * float64(time.Second))
	b.wg.Add(1)
	time.AfterFunc(d, func() {
		defer b.wg.Done()
		done()
		b.mu.Lock()
		defer b.mu.Unlock()
		b.running--
		if len(b.queue) > 0 && !b.stopped {
			next := b.queue[0]
			b.queue = b.queue[1:]
			b.startLocked(next)
		}
		b.publishLocked()
	})
}

// TestScale20 runs 20 in-process nodes (real memberlist on loopback, real
// router, in-test model servers) in sampling mode and checks that the
// load messages per node per second and the routing p99 match what
// clustersim predicts for the same workload. It takes about 40 s, so it
// runs only with SHOAL_SCALE_TEST=1 (make test-scale).
func TestScale20(t *testing.T) {
	if os.Getenv("SHOAL_SCALE_TEST") == "" {
		t.Skip("set SHOAL_SCALE_TEST=1 (make test-scale) to run the 20-node scale test")
	}
	p := scaleParams
	const (
		warmup  = 5 * time.Second
		measure = 25 * time.Second
		// Margins: the real run measures about 3,500 requests, so its p99
		// rests on ~35 samples; the message rate is a count.
		p99Margin = 0.30
		msgMargin = 0.20
	)
	nodes := startCluster(t, p.nodes, func(i int, cfg *Config) {
		cfg.LoadInterval = DefaultLoadInterval
		cfg.Logger = testLogger(nil)
	})
	for _, g := range nodes {
		require.True(t, g.Sampling(), "%s: 19 peers is past AllToAllMax %d", g.LocalName(), DefaultAllToAllMax)
	}

	var wg sync.WaitGroup
	backends := make([]*simBackend, p.nodes)
	capacity := 0.0
	for i, g := range nodes {
		speed := 1.0
		if i < p.slow {
			speed = p.slowFactor
		}
		backends[i] = &simBackend{g: g, slots: p.slots, speed: speed, rng: rand.New(rand.NewPCG(uint64(i), 7)), wg: &wg}
		capacity += float64(p.slots) / (speed * p.mean.Seconds())
	}
	byName := map[string]*simBackend{}
	for i, g := range nodes {
		byName[g.LocalName()] = backends[i]
	}
	rate := p.util * capacity / float64(p.nodes)

	ctx, cancel := context.WithCancel(context.Background())
	var (
		latMu sync.Mutex
		lats  []time.Duration
	)
	start := time.Now()
	measureFrom := start.Add(warmup)
	var before, after []Stats
	var arrivals sync.WaitGroup
	for i, g := range nodes {
		r, err := router.New(router.Config{Seed: uint64(i + 1)})
		require.NoError(t, err)
		arrivals.Add(1)
		go func() {
			defer arrivals.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 11))
			timer := time.NewTimer(0)
			defer timer.Stop()
			next := time.Now()
			for {
				// A Poisson workload generator, not synchronisation. The
				// arrival times are laid out ahead, so the time routing
				// takes (a pull waits up to 20 ms) does not thin the load.
				next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
				timer.Reset(time.Until(next))
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
				arrived := next
				q, run := backends[i].snapshot()
				cands := []router.Candidate{{Node: g.LocalName(), Local: true, QueueDepth: q, Running: run, Slots: p.slots}}
				for _, m := range g.Sample(ctx, 2, nil) {
					ml := m.Load.Models["m"]
					cands = append(cands, router.Candidate{Node: m.Name, QueueDepth: ml.QueueDepth, Running: ml.InFlight, Slots: ml.Slots,
						LoadAge: time.Since(m.LoadUpdated), LoadAt: m.LoadUpdated})
				}
				c, _, err := r.Pick(cands, nil)
				if err != nil {
					continue
				}
				byName[c.Node].submit(func() {
					if arrived.After(measureFrom) {
						latMu.Lock()
						lats = append(lats, time.Since(arrived))
						latMu.Unlock()
					}
				})
			}
		}()
	}
	stats := func() []Stats {
		out := make([]Stats, len(nodes))
		for i, g := range nodes {
			out[i] = g.Stats()
		}
		return out
	}
	// The run's phases are timed workload windows, not waits for a state.
	time.Sleep(time.Until(measureFrom))
	before = stats()
	measuredFrom := time.Now()
	time.Sleep(measure)
	after = stats()
	elapsed := time.Since(measuredFrom)
	cancel()
	arrivals.Wait()
	for _, b := range backends {
		b.mu.Lock()
		b.stopped = true
		b.mu.Unlock()
	}
	wg.Wait()

	var sent uint64
	for i := range nodes {
		sent += after[i].LoadsSent - before[i].LoadsSent + after[i].PullsSent - before[i].PullsSent
	}
	msgRate := float64(sent) / float64(p.nodes) / elapsed.Seconds()
	latMu.Lock()
	slices.Sort(lats)
	require.NotEmpty(t, lats)
	p99 := lats[len(lats)*99/100]
	p50 := lats[len(lats)/2]
	n := len(lats)
	latMu.Unlock()

	sim, err := clustersim.Run(clustersim.Config{
		Nodes: p.nodes, Seed: 1, Policy: clustersim.Probe, Duration: 600 * time.Second, Warmup: 5 * time.Second,
		Slots: p.slots, MeanService: p.mean, ServiceSigma: p.sigma, Utilization: p.util,
		SlowNodes: p.slow, SlowFactor: p.slowFactor, FailFraction: 0, LossRate: 0,
		NetDelay: 100 * time.Microsecond, NetJitter: 100 * time.Microsecond,
		Fanout: DefaultFanout, Refresh: DefaultLoadInterval,
	})
	require.NoError(t, err)
	t.Logf("real: %d requests, p50 %v p99 %v, %.1f load msgs/node/s; simulated: p50 %v p99 %v, %.1f msgs/node/s",
		n, p50.Round(time.Millisecond), p99.Round(time.Millisecond), msgRate, sim.P50.Round(time.Millisecond), sim.P99.Round(time.Millisecond), sim.MsgsPerNodeSec)
	require.InDelta(t, 1, float64(p99)/float64(sim.P99), p99Margin, fmt.Sprintf("p99 real %v vs simulated %v", p99, sim.P99))
	require.InDelta(t, 1, msgRate/sim.MsgsPerNodeSec, msgMargin, "load msgs/node/s real %.1f vs simulated %.1f", msgRate, sim.MsgsPerNodeSec)
	require.Less(t, msgRate, 50.0)
}
