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
