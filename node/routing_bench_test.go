package node

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// unevenSim makes node 3 four times slower than nodes 1 and 2 (base 80 ms
// and 8 ms per item against 20 ms and 2 ms; batches of up to 8).
func unevenSim(slow bool) func(i int, cfg *Config) {
	return func(i int, cfg *Config) {
		m := &cfg.Models[0]
		m.Sim.Base, m.Sim.PerItem, m.Sim.Exponent, m.Sim.TokenInterval = 20*time.Millisecond, 2*time.Millisecond, 1, 0
		if slow && i == 2 {
			m.Sim.Base, m.Sim.PerItem = 80*time.Millisecond, 8*time.Millisecond
		}
		m.MaxSize, m.FlushTimeout = 8, time.Millisecond
	}
}

type routingRun struct {
	name     string
	p50, p99 float64
	slow     float64
	errors   int
}

// routeScenario runs 900 requests at concurrency 30 spread over three entry
// points, after a short warm-up that lets nodes measure their batch cost.
func routeScenario(b *testing.B, name string, entries []string) routingRun {
	warm := runLoadAddrs(b, entries, "sim-fast", 90, 30)
	require.Zero(b, warm.errors, name)
	r := runLoadAddrs(b, entries, "sim-fast", 900, 30)
	return routingRun{name: name, p50: float64(r.hist.ValueAtQuantile(50)) / 1000, p99: float64(r.hist.ValueAtQuantile(99)) / 1000,
		slow: float64(r.served["n3"]) / 9, errors: r.errors}
}

func clusterEntries(b *testing.B, policy string, slow bool) []string {
	tc := mustNewCluster(b, 3, func(i int, cfg *Config) {
		cfg.Router.Policy = policy
		unevenSim(slow)(i, cfg)
	})
	tc.waitMembers(tc.nodes...)
	return []string{tc.nodes[0].HTTPAddr(), tc.nodes[1].HTTPAddr(), tc.nodes[2].HTTPAddr()}
}

// haproxyEntries starts the same three nodes standing alone (three one-node
// clusters, so none forwards) and one HAProxy `balance leastconn` per entry
// point in front of all three: each proxy sees only its own connections.
func haproxyEntries(b *testing.B, bin string, slow bool) []string {
	var backends []string
	for i := range 3 {
		tc := mustNewCluster(b, 1, func(_ int, cfg *Config) {
			cfg.NodeName = fmt.Sprintf("n%d", i+1)
			unevenSim(slow)(i, cfg)
		})
		backends = append(backends, tc.nodes[0].HTTPAddr())
	}
	var entries []string
	for i := range 3 {
		entries = append(entries, startHAProxy(b, bin, fmt.Sprintf("lb%d", i), backends))
	}
	return entries
}

func startHAProxy(b *testing.B, bin, name string, backends []string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	addr := ln.Addr().String()
	require.NoError(b, ln.Close())
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n")
	fmt.Fprintf(&cfg, "frontend fe\n  bind %s\n  default_backend be\nbackend be\n  balance leastconn\n", addr)
	for i, be := range backends {
		fmt.Fprintf(&cfg, "  server s%d %s maxconn 1000\n", i, be)
	}
	path := filepath.Join(b.TempDir(), name+".cfg")
	require.NoError(b, os.WriteFile(path, []byte(cfg.String()), 0o600))
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	require.NoError(b, cmd.Start())
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	require.Eventually(b, func() bool {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "haproxy did not listen")
	return addr
}

// BenchmarkRoutingUneven: three nodes serving one sim model, the third 4x
// slower; 900 requests at concurrency 30 spread over the three nodes as
// entry points. shoal's policies against three independent HAProxy
// leastconn balancers (skipped without haproxy in PATH):
//
//	go test ./node -run '^$' -bench RoutingUneven -benchtime 1x
func BenchmarkRoutingUneven(b *testing.B) {
	for i := 0; i < b.N; i++ {
		var runs []routingRun
		for _, policy := range []string{"least-expected", "least-queued", "round-robin"} {
			runs = append(runs, routeScenario(b, policy, clusterEntries(b, policy, true)))
		}
		if bin, err := exec.LookPath("haproxy"); err == nil {
			runs = append(runs, routeScenario(b, "haproxy-leastconn", haproxyEntries(b, bin, true)))
		} else {
			b.Log("haproxy not in PATH: no HAProxy comparison (apt-get install haproxy)")
		}
		p99 := map[string]float64{}
		for _, r := range runs {
			p99[r.name] = r.p99
			b.Logf("%-18s p50 %6.1fms p99 %6.1fms slow-node share %4.1f%% errors %d", r.name, r.p50, r.p99, r.slow, r.errors)
			b.ReportMetric(r.p99, r.name+"-p99-ms")
		}
		b.ReportMetric(p99["least-expected"]/p99["round-robin"], "le/rr-p99")
		if h := p99["haproxy-leastconn"]; h > 0 {
			b.ReportMetric(p99["least-expected"]/h, "le/haproxy-p99")
			b.Logf("least-expected p99 is %.2fx HAProxy leastconn's and %.2fx round-robin's", p99["least-expected"]/h, p99["least-expected"]/p99["round-robin"])
		}
	}
}

// BenchmarkRoutingEqual: the same load over three equal nodes, where
// least-expected must do no worse than least-queued.
func BenchmarkRoutingEqual(b *testing.B) {
	for i := 0; i < b.N; i++ {
		var runs []routingRun
		for _, policy := range []string{"least-expected", "least-queued"} {
			runs = append(runs, routeScenario(b, policy, clusterEntries(b, policy, false)))
		}
		for _, r := range runs {
			b.Logf("%-15s p50 %6.1fms p99 %6.1fms errors %d", r.name, r.p50, r.p99, r.errors)
			b.ReportMetric(r.p99, r.name+"-p99-ms")
		}
		b.ReportMetric(runs[0].p99/runs[1].p99, "le/lq-p99")
	}
}
