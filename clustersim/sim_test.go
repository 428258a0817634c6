package clustersim

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRunDeterministic(t *testing.T) {
	cfg := Config{Nodes: 20, Seed: 3, Policy: Epidemic, Duration: 20 * time.Second, Warmup: 2 * time.Second}
	a, err := Run(cfg)
	require.NoError(t, err)
	b, err := Run(cfg)
	require.NoError(t, err)
	require.Equal(t, a.P99, b.P99)
	require.Equal(t, a.MsgsPerNodeSec, b.MsgsPerNodeSec)
	require.Positive(t, a.Requests)
}

func TestPolicies(t *testing.T) {
	for _, p := range []string{Omniscient, AllToAll, Epidemic, Probe} {
		r, err := Run(Config{Nodes: 50, Seed: 1, Policy: p, Duration: 20 * time.Second, Warmup: 2 * time.Second})
		require.NoError(t, err, p)
		t.Logf("%-11s p50 %v p99 %v imb %.3f msgs/node/s %.1f retries %d wall %v", p, r.P50, r.P99, r.Imbalance, r.MsgsPerNodeSec, r.Retries, r.Wall)
	}
}

// TestScaleTable prints the README's scaling table. It takes about a
// minute, so it only runs with SHOAL_SIM_TABLE=1.
func TestScaleTable(t *testing.T) {
	if os.Getenv("SHOAL_SIM_TABLE") == "" {
		t.Skip("set SHOAL_SIM_TABLE=1 to print the scaling table")
	}
	var b strings.Builder
	base := DefaultConfig()
	base.Duration, base.Warmup = 0, 3*time.Second
	_, err := Table(&b, base, []int{10, 100, 1000, 10000}, DefaultVariants())
	t.Log("\n" + b.String())
	require.NoError(t, err)
}

// With slow nodes, load reports that carry each node's service cost let
// least-expected scoring steer work off the slow ones: the p99 drops (about
// 1.9 s to 1.4 s here), and the message count is unchanged.
func TestReportCost(t *testing.T) {
	cfg := Config{Nodes: 20, Seed: 1, Policy: Probe, Duration: 120 * time.Second, Warmup: 5 * time.Second,
		Slots: 4, MeanService: 400 * time.Millisecond, Utilization: 0.75, SlowNodes: 2, SlowFactor: 3,
		NetDelay: 100 * time.Microsecond, NetJitter: 100 * time.Microsecond, Fanout: 3}
	blind, err := Run(cfg)
	require.NoError(t, err)
	cfg.ReportCost = true
	aware, err := Run(cfg)
	require.NoError(t, err)
	t.Logf("p99 blind %v, cost-aware %v", blind.P99, aware.P99)
	require.Less(t, float64(aware.P99), 0.85*float64(blind.P99))
	require.InDelta(t, blind.MsgsPerNodeSec, aware.MsgsPerNodeSec, 0.05*blind.MsgsPerNodeSec)
}
