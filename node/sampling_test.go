package node

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/gossip"
)

// In sampled dissemination (past gossip's AllToAllMax; forced here for 3
// nodes) a node routes among loads it pulls, and work still reaches every
// node.
func TestSampledDisseminationRoutesOnPulledLoads(t *testing.T) {
	tc := mustNewCluster(t, 3, func(_ int, cfg *Config) {
		cfg.Models[0].Sim.Base = 20 * time.Millisecond
		cfg.Models[0].MaxSize = 2
		tune := cfg.Tuning.Gossip
		cfg.Tuning.Gossip = func(c *gossip.Config) {
			tune(c)
			c.AllToAllMax = -1
		}
	})
	tc.waitMembers(tc.nodes...)
	require.True(t, tc.nodes[0].gossip.Sampling())
	before := tc.nodes[0].gossip.Stats().PullsSent
	served := countServed(t, tc.nodes[0], 60, 12)
	require.Len(t, served, 3, "work should reach every node: %v", served)
	require.Greater(t, tc.nodes[0].gossip.Stats().PullsSent, before, "routing did not pull loads")
	// /metrics exports both counters (make test-scale reads them there).
	st := tc.nodes[0].gossip.Stats()
	pulls, ok := metricValue(t, tc.nodes[0].HTTPAddr(), "inference_gossip_load_pulls_sent_total")
	require.True(t, ok, "no pull counter in /metrics")
	require.GreaterOrEqual(t, pulls, float64(st.PullsSent))
	sent, ok := metricValue(t, tc.nodes[0].HTTPAddr(), "inference_gossip_load_messages_sent_total")
	require.True(t, ok, "no load message counter in /metrics")
	require.GreaterOrEqual(t, sent, float64(st.LoadsSent))
	require.Positive(t, sent)
}
