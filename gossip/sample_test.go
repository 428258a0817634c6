package gossip

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Past AllToAllMax a push goes to Fanout random peers, not to all.
func TestPushTargetsFanoutPastAllToAllMax(t *testing.T) {
	nodes := startCluster(t, 6, func(i int, cfg *Config) {
		cfg.LoadInterval = time.Hour
		// Node 0 pushes to 2 random peers only (hourly here), so the
		// others' silence check would suspect it if forming the cluster
		// took longer than SuspectAfter (it does under -race): off.
		cfg.SuspectAfter = time.Hour
		if i == 0 {
			cfg.AllToAllMax, cfg.Fanout = 2, 2
		}
	})
	// sent is what one push adds to LoadsSent; a push of the node's own
	// loop may land in between, so it is retried until a push is alone.
	sent := func(g *Gossip, want uint64) {
		t.Helper()
		require.Eventually(t, func() bool {
			before := g.Stats().LoadsSent
			g.pushLoad()
			return g.Stats().LoadsSent-before == want
		}, waitTimeout, 10*time.Millisecond)
	}
	require.True(t, nodes[0].Sampling())
	sent(nodes[0], 2)
	require.False(t, nodes[1].Sampling(), "5 peers is within the default AllToAllMax")
	sent(nodes[1], 5)
}

// Sample pulls a load that was never pushed, and waits for it.
func TestSamplePullsFreshLoad(t *testing.T) {
	nodes := startCluster(t, 3, func(i int, cfg *Config) {
		cfg.AllToAllMax = -1 // always sample
		// No periodic refresh during the test: only a pull can carry
		// the new load.
		cfg.LoadInterval = time.Hour
	})
	require.NoError(t, nodes[1].SetLoad(sampleLoad(7)))
	require.NoError(t, nodes[2].SetLoad(sampleLoad(9)))
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var got []Member
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got = nodes[0].Sample(ctx, 5, nil)
		require.Len(c, got, 2)
		for _, m := range got {
			want := map[string]int{"n1": 7, "n2": 9}[m.Name]
			assert.Equal(c, want, m.Load.Models["llama-3-8b"].QueueDepth, m.Name)
			assert.True(c, m.LoadUpdated.After(start), "%s load is not from a pull", m.Name)
		}
	}, waitTimeout, 50*time.Millisecond)
	require.Positive(t, nodes[0].Stats().PullsSent)

	// keep filters members.
	got = nodes[0].Sample(ctx, 5, func(name string, _ Load) bool { return name == "n2" })
	require.Len(t, got, 1)
	require.Equal(t, "n2", got[0].Name)
}

// PullRate caps the pulls a node sends, however often Sample is called;
// past it Sample reuses the loads it pulled last, not old held ones.
func TestSamplePullRateCap(t *testing.T) {
	nodes := startCluster(t, 3, func(i int, cfg *Config) {
		cfg.AllToAllMax, cfg.PullRate, cfg.PullTimeout = -1, 2, waitTimeout
		cfg.LoadInterval = time.Hour // held loads stay as old as the join
	})
	start := time.Now()
	for range 10 {
		got := nodes[0].Sample(context.Background(), 1, nil)
		require.Len(t, got, 1)
		require.True(t, got[0].LoadUpdated.After(start), "%s: load from before the test, not a pulled one", got[0].Name)
	}
	// A burst of PullRate, plus what refilled while the calls ran (at 2/s,
	// well under one more on any machine that runs 10 calls in 2 s).
	require.LessOrEqual(t, nodes[0].Stats().PullsSent, uint64(3))
}
