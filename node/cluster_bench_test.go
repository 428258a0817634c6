package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/httpapi"
	"github.com/shoal-dev/shoal/respcache"
	"github.com/shoal-dev/shoal/scheduler"
	"github.com/stretchr/testify/require"
)

// These benchmarks measure the cluster as a whole; run them with
// -benchtime 1x (each iteration is a full scenario):
//
//	go test ./node -run '^$' -bench 'Routing|ForwardHop|Scaling' -benchtime 1x

// loadResult summarises a load run.
type loadResult struct {
	hist    *hdrhistogram.Histogram
	served  map[string]int
	errors  int
	elapsed time.Duration
}

// runLoad sends total requests from clients goroutines; each request goes
// to targets[i % len(targets)].
func runLoad(tb testing.TB, targets []*Node, model string, total, clients int) loadResult {
	tb.Helper()
	addrs := make([]string, len(targets))
	for i, nd := range targets {
		addrs[i] = nd.HTTPAddr()
	}
	return runLoadAddrs(tb, addrs, model, total, clients)
}

// runLoadAddrs is runLoad against HTTP addresses (nodes or proxies).
func runLoadAddrs(tb testing.TB, targets []string, model string, total, clients int) loadResult {
	tb.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	res := loadResult{hist: hdrhistogram.New(1, 60_000_000, 3), served: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int, total)
	for i := 0; i < total; i++ {
		next <- i
	}
	close(next)
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				body, _ := json.Marshal(map[string]any{"model": model, "input": fmt.Sprintf("request %d", i), "parameters": map[string]any{"temperature": 1}})
				t0 := time.Now()
				resp, err := client.Post("http://"+targets[i%len(targets)]+"/v1/infer", "application/json", bytes.NewReader(body))
				if err != nil {
					mu.Lock()
					res.errors++
					mu.Unlock()
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				us := time.Since(t0).Microseconds()
				mu.Lock()
				if resp.StatusCode != http.StatusOK {
					res.errors++
				} else {
					_ = res.hist.RecordValue(us)
					res.served[resp.Header.Get("X-Shoal-Node")]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

func shares(served map[string]int) string {
	total := 0
	names := make([]string, 0, len(served))
	for n, c := range served {
		total += c
		names = append(names, n)
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, n := range names {
		fmt.Fprintf(&b, "%s=%.0f%% ", n, 100*float64(served[n])/float64(max(total, 1)))
	}
	return b.String()
}

// BenchmarkRoutingPolicies: three nodes whose sim models run at 1x, 1x and
// 4x slower; 1000 requests at concurrency 32, all sent to the first node.
func BenchmarkRoutingPolicies(b *testing.B) {
	for _, policy := range []string{"least-expected", "least-queued", "round-robin", "random"} {
		b.Run(policy, func(b *testing.B) {
			tc := mustNewCluster(b, 3, func(i int, cfg *Config) {
				cfg.Router.Policy = policy
				m := &cfg.Models[0]
				m.Sim.Base, m.Sim.PerItem, m.Sim.Exponent, m.Sim.TokenInterval = 10*time.Millisecond, 2*time.Millisecond, 1, 0
				if i == 2 {
					m.Sim.Base, m.Sim.PerItem = 40*time.Millisecond, 8*time.Millisecond
				}
				m.MaxSize, m.FlushTimeout = 4, time.Millisecond
			})
			tc.waitMembers(tc.nodes...)
			for i := 0; i < b.N; i++ {
				r := runLoad(b, tc.nodes[:1], "sim-fast", 1000, 32)
				b.ReportMetric(float64(r.hist.ValueAtQuantile(50))/1000, "p50-ms")
				b.ReportMetric(float64(r.hist.ValueAtQuantile(99))/1000, "p99-ms")
				b.ReportMetric(float64(r.served["n3"])/10, "slow-node-%")
				b.ReportMetric(float64(r.errors), "errors")
				b.Logf("%s: p50 %.1fms p99 %.1fms shares %s errors %d", policy,
					float64(r.hist.ValueAtQuantile(50))/1000, float64(r.hist.ValueAtQuantile(99))/1000, shares(r.served), r.errors)
			}
		})
	}
}

// BenchmarkForwardHop: the latency one forwarding hop adds, over a
// zero-cost sim model: requests sent to the node that serves the model
// versus to a node that must forward them there; without a gossip key and
// with one (the hop then runs over the peer plane's mutual TLS, pooled).
func BenchmarkForwardHop(b *testing.B) {
	for _, mode := range securityModes {
		b.Run(mode.name, func(b *testing.B) {
			tc := mustNewCluster(b, 2, func(i int, cfg *Config) {
				withSecurity(mode.key)(i, cfg)
				// 4,000 requests from one client within the minute.
				cfg.RateLimit.RPM = config.DevRPM
				m := &cfg.Models[0]
				m.Sim.Base, m.Sim.PerItem, m.Sim.TokenInterval = 0, 0, 0
				// A batch of one is full at once: flush_timeout 0 would mean
				// the default (10 ms), which would hide the hop in noise.
				m.MaxSize = 1
				if i == 0 {
					// The entry node serves another model only, so it must forward.
					m.Name = "elsewhere"
				}
			})
			require.Eventually(b, func() bool { return len(tc.nodes[0].candidates("sim-fast")) == 1 }, clusterWait, 10*time.Millisecond)
			for i := 0; i < b.N; i++ {
				direct := runLoad(b, tc.nodes[1:], "sim-fast", 2000, 1)
				hop := runLoad(b, tc.nodes[:1], "sim-fast", 2000, 1)
				require.Zero(b, direct.errors+hop.errors)
				d50, d99 := float64(direct.hist.ValueAtQuantile(50)), float64(direct.hist.ValueAtQuantile(99))
				h50, h99 := float64(hop.hist.ValueAtQuantile(50)), float64(hop.hist.ValueAtQuantile(99))
				b.ReportMetric(d50, "direct-p50-us")
				b.ReportMetric(d99, "direct-p99-us")
				b.ReportMetric(h50, "hop-p50-us")
				b.ReportMetric(h99, "hop-p99-us")
				b.Logf("direct p50 %.0fus p99 %.0fus; via one hop p50 %.0fus p99 %.0fus; added p50 %.0fus p99 %.0fus", d50, d99, h50, h99, h50-d50, h99-d99)
			}
		})
	}
}

// BenchmarkHorizontalScaling: throughput of 1, 2, 3 and 5 nodes whose sim
// models have a fixed capacity (one batch slot of at most 4 requests, 20 ms
// a batch: 200 requests/s per node), with clients spread over all nodes.
func BenchmarkHorizontalScaling(b *testing.B) {
	var base float64
	for _, n := range []int{1, 2, 3, 5} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			tc := mustNewCluster(b, n, func(_ int, cfg *Config) {
				m := &cfg.Models[0]
				m.Sim.Base, m.Sim.PerItem, m.Sim.TokenInterval = 20*time.Millisecond, 0, 0
				m.MaxSize, m.FlushTimeout = 4, 2*time.Millisecond
			})
			tc.waitMembers(tc.nodes...)
			for i := 0; i < b.N; i++ {
				r := runLoad(b, tc.nodes, "sim-fast", 400*n, 12*n)
				total := 0
				for _, c := range r.served {
					total += c
				}
				rps := float64(total) / r.elapsed.Seconds()
				if n == 1 {
					base = rps
				}
				b.ReportMetric(rps, "req/s")
				if base > 0 {
					b.ReportMetric(rps/float64(n)/base, "per-node-vs-1")
				}
				b.Logf("%d nodes: %.0f req/s (%.2f of one node's rate per node), errors %d, shares %s", n, rps, rps/float64(n)/max(base, 1), r.errors, shares(r.served))
			}
		})
	}
}

// BenchmarkCacheHitVsMiss: end-to-end latency of a cached answer against a
// miss on the default sim model, over an Olric cache of three nodes with the
// request entering a node that did not compute the answer.
func BenchmarkCacheHitVsMiss(b *testing.B) {
	tc := mustNewCluster(b, 3, func(_ int, cfg *Config) {
		cfg.Cache.Backend = "olric"
		cfg.Models[0].Sim = DefaultSimConfig()
		cfg.Models[0].Sim.Model = "sim-fast"
	})
	require.Eventually(b, func() bool {
		for _, nd := range tc.nodes {
			if nd.cache.Members() != 3 {
				return false
			}
		}
		return true
	}, clusterWait, 20*time.Millisecond)
	client := &http.Client{Timeout: 10 * time.Second}
	send := func(nd *Node, input string) (time.Duration, string) {
		body, _ := json.Marshal(map[string]any{"model": "sim-fast", "input": input, "parameters": map[string]any{"temperature": 0}})
		t0 := time.Now()
		resp, err := client.Post("http://"+nd.HTTPAddr()+"/v1/infer", "application/json", bytes.NewReader(body))
		require.NoError(b, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(t0), resp.Header.Get("X-Shoal-Cache")
	}
	for i := 0; i < b.N; i++ {
		miss := hdrhistogram.New(1, 10_000_000, 3)
		hit := hdrhistogram.New(1, 10_000_000, 3)
		for j := 0; j < 200; j++ {
			input := fmt.Sprintf("cache bench %d %d", i, j)
			d, outcome := send(tc.nodes[j%3], input)
			require.Equal(b, httpapi.CacheMiss, outcome)
			_ = miss.RecordValue(d.Microseconds())
			key := mustCacheKeyTB(b, input)
			require.Eventually(b, func() bool {
				_, found, _ := tc.nodes[0].cache.Get(context.Background(), "sim-fast", key)
				return found
			}, 5*time.Second, time.Millisecond)
			d, outcome = send(tc.nodes[(j+1)%3], input)
			require.Equal(b, httpapi.CacheHit, outcome)
			_ = hit.RecordValue(d.Microseconds())
		}
		m50, m99 := float64(miss.ValueAtQuantile(50))/1000, float64(miss.ValueAtQuantile(99))/1000
		h50, h99 := float64(hit.ValueAtQuantile(50))/1000, float64(hit.ValueAtQuantile(99))/1000
		b.ReportMetric(m50, "miss-p50-ms")
		b.ReportMetric(h50, "hit-p50-ms")
		b.ReportMetric(h99, "hit-p99-ms")
		b.ReportMetric(100*(1-h50/m50), "hit-saving-%")
		b.Logf("miss p50 %.2fms p99 %.2fms; hit on another node p50 %.2fms p99 %.2fms; a hit is %.1f%% faster at p50",
			m50, m99, h50, h99, 100*(1-h50/m50))
	}
}

func mustCacheKeyTB(tb testing.TB, input string) string {
	// The key the node computes for an infer request of input at
	// temperature 0.
	key, ok := respcache.Key(respcache.KeyInput{Model: "sim-fast", Endpoint: scheduler.EndpointInfer, Prompts: []string{input},
		Params: scheduler.Params{MaxTokens: 0}}, false)
	require.True(tb, ok)
	return key
}
