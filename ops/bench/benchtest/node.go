// Package benchtest starts real in-process shoal nodes for the tests of the
// operator tools (bench, tune, top, deploy), the way httptest starts
// servers: every port is a fresh 127.0.0.1:0 listener and the node is shut
// down when the test ends.
package benchtest

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/node"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

// AdminToken is the admin API token of nodes started by Start.
const AdminToken = "benchtest-admin-token"

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

// Start runs a single-node cluster named name serving models, and shuts
// it down at the end of the test.
func Start(t testing.TB, name string, models ...Model) *Node {
	t.Helper()
	cfg := node.DefaultConfig()
	cfg.NodeName = name
	cfg.DataDir = t.TempDir()
	cfg.Raft.BootstrapExpect = 1
	cfg.RaftListener = listen(t)
	cfg.Gossip.Addr = "127.0.0.1:0"
	cfg.Cache.Addr = "127.0.0.1:0"
	cfg.Cache.Backend = "local"
	cfg.Admin.Token = AdminToken
	// Benchmarks send far more than a client's default minute budget.
	cfg.RateLimit.RPM = 0
	for _, m := range models {
		mc := node.DefaultModelConfig(m.Name, "sim")
		mc.Sim = m.Sim
		mc.Sim.Model = m.Name
		mc.MaxSize, mc.FlushTimeout, mc.MaxConcurrentBatches = m.MaxSize, m.FlushTimeout, m.Slots
		cfg.Models = append(cfg.Models, mc)
	}
	cfg.HTTPListener = listen(t)
	n, err := node.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, n.Start(ctx))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = n.Shutdown(ctx)
	})
	bn := &Node{Node: n, URL: "http://" + n.HTTPAddr()}
	// The admin API needs a Raft leader; a one-node cluster elects itself
	// shortly after Start returns.
	require.Eventually(t, bn.hasLeader, time.Minute, 20*time.Millisecond, "node %s never became leader", name)
	return bn
}

func (n *Node) hasLeader() bool {
	req, err := http.NewRequest(http.MethodGet, n.URL+"/admin/v1/cluster", nil)
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", "Bearer "+AdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var c struct {
		Leader string `json:"leader"`
	}
	return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&c) == nil && c.Leader != ""
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}
