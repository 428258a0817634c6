// Package benchtest starts real in-process shoal nodes for the tests of the
// operator tools (bench, tune, top, deploy), the way httptest starts
// servers: every port is a fresh 127.0.0.1:0 listener and the nodes are
// shut down when the test ends.
package benchtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/node"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

// AdminToken is the admin API token of the nodes started here.
const AdminToken = "benchtest-admin-token"

// wait bounds cluster formation; generous for a loaded 2-core machine.
const wait = time.Minute

// Model is a sim model with its batching settings.
type Model struct {
	Name string
	Sim  sim.Config
	// MaxSize, FlushTimeout and Slots (max concurrent batches) override
	// the node defaults when non-zero.
	MaxSize      int
	FlushTimeout time.Duration
	Slots        int
}

// FastSim is a sim cost that answers in a few milliseconds, for tests that
// need many requests.
func FastSim() sim.Config {
	return sim.Config{Base: time.Millisecond, PerItem: 200 * time.Microsecond, Exponent: 0.5, TokenInterval: 200 * time.Microsecond, DefaultMaxTokens: 8}
}

// Node is a started node.
type Node struct {
	*node.Node
	// URL is the node's base URL (http://127.0.0.1:port).
	URL string
}

// Config is the configuration Start uses: loopback listeners, the local
// cache, no rate limit, AdminToken, tightened Raft timings and the models.
func Config(t testing.TB, name string, models ...Model) node.Config {
	t.Helper()
	cfg := node.DefaultConfig()
	cfg.NodeName = name
	cfg.DataDir = t.TempDir()
	cfg.Raft.BootstrapExpect = 1
	cfg.HTTPListener = listen(t)
	cfg.RaftListener = listen(t)
	cfg.Gossip.Addr = "127.0.0.1:0"
	cfg.Cache.Addr = "127.0.0.1:0"
	cfg.Cache.Backend = "local"
	cfg.Admin.Token = AdminToken
	cfg.JoinTimeout = wait
	// Benchmarks send far more than a client's default minute budget.
	cfg.RateLimit.RPM = 0
	cfg.Tuning.Raft = func(c *consensus.Config) {
		c.HeartbeatTimeout = 300 * time.Millisecond
		c.ElectionTimeout = 300 * time.Millisecond
		c.LeaderLeaseTimeout = 200 * time.Millisecond
		c.CommitTimeout = 10 * time.Millisecond
	}
	for _, m := range models {
		mc := node.DefaultModelConfig(m.Name, "sim")
		mc.Sim = m.Sim
		mc.Sim.Model = m.Name
		mc.MaxSize, mc.FlushTimeout, mc.MaxConcurrentBatches = m.MaxSize, m.FlushTimeout, m.Slots
		cfg.Models = append(cfg.Models, mc)
	}
	return cfg
}

// Start runs a single-node cluster named name serving models and waits
// until it leads its Raft cluster (the admin API needs a leader).
func Start(t testing.TB, name string, models ...Model) *Node {
	t.Helper()
	n := StartConfig(t, Config(t, name, models...))
	require.Eventually(t, func() bool { return n.members() == 1 }, wait, 20*time.Millisecond, "node %s never became leader", name)
	return n
}

// StartCluster runs size nodes named node-1..node-N that bootstrap Raft
// together, every one serving models, and waits until each sees all of
// them and a leader.
func StartCluster(t testing.TB, size int, models ...Model) []*Node {
	t.Helper()
	var nodes []*Node
	for i := range size {
		cfg := Config(t, fmt.Sprintf("node-%d", i+1), models...)
		cfg.Raft.BootstrapExpect = size
		if i > 0 {
			cfg.Join = []string{nodes[0].GossipAddr()}
		}
		nodes = append(nodes, StartConfig(t, cfg))
	}
	for _, n := range nodes {
		require.Eventually(t, func() bool { return n.members() == size }, wait, 50*time.Millisecond, "%s never saw the whole cluster", n.Name())
	}
	return nodes
}

// StartConfig starts a node from cfg and shuts it down when the test ends.
func StartConfig(t testing.TB, cfg node.Config) *Node {
	t.Helper()
	n, err := node.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	require.NoError(t, n.Start(ctx))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = n.Shutdown(ctx)
	})
	return &Node{Node: n, URL: "http://" + n.HTTPAddr()}
}

// members is how many alive members the node's cluster view lists when it
// names a leader, else 0.
func (n *Node) members() int {
	req, err := http.NewRequest(http.MethodGet, n.URL+"/admin/v1/cluster", nil)
	if err != nil {
		return 0
	}
	req.Header.Set("Authorization", "Bearer "+AdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var c struct {
		Leader  string `json:"leader"`
		Members []struct {
			State string `json:"state"`
		} `json:"members"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&c) != nil || c.Leader == "" {
		return 0
	}
	alive := 0
	for _, m := range c.Members {
		if m.State == "alive" {
			alive++
		}
	}
	return alive
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}
