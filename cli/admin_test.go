package cli

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/node"
)

func startCLITestNode(t *testing.T, name string, bootstrap int) *node.Node {
	t.Helper()
	cfg := node.DefaultConfig()
	cfg.NodeName = name
	cfg.DataDir = t.TempDir()
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	raftLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cfg.HTTPListener, cfg.RaftListener = httpLn, raftLn
	cfg.Gossip.Addr, cfg.Cache.Addr, cfg.Cache.Backend = "127.0.0.1:0", "127.0.0.1:0", "local"
	cfg.Raft.BootstrapExpect = bootstrap
	cfg.Admin.Token = "cli-test-token-0123456789"
	cfg.Models = node.DevModels()
	n, err := node.New(cfg)
	require.NoError(t, err)
	require.NoError(t, n.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n.Shutdown(ctx)
	})
	return n
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestNodeJoinAndMembersCommands(t *testing.T) {
	n1 := startCLITestNode(t, "cli-1", 1)
	n2 := startCLITestNode(t, "cli-2", 0)
	out, err := runCLI(t, "node", "join", "--node", "http://"+n2.HTTPAddr(), "--token", "cli-test-token-0123456789", n1.GossipAddr())
	require.NoError(t, err, out)
	require.Contains(t, out, "joined")

	require.Eventually(t, func() bool {
		out, err = runCLI(t, "node", "members", "--node", n1.HTTPAddr(), "--token", "cli-test-token-0123456789")
		return err == nil && regexp.MustCompile(`(?m)^cli-1\s+alive\s+leader`).MatchString(out) &&
			regexp.MustCompile(`(?m)^cli-2\s+alive\s+voter\s+\S+\s+sim-fast`).MatchString(out)
	}, 30*time.Second, 50*time.Millisecond, "members never listed cli-2 as a voter: %s", out)

	_, err = runCLI(t, "node", "members", "--node", n1.HTTPAddr(), "--token", "wrong")
	require.ErrorContains(t, err, "401")

	// A node that just joined may not know the leader yet and answers 503
	// (Retry-After); a client retries.
	require.Eventually(t, func() bool {
		out, err = runCLI(t, "admin", "batching", "set", "--node", n2.HTTPAddr(), "--token", "cli-test-token-0123456789", "--model", "sim-fast", "--max-size", "16", "--flush-timeout", "5ms")
		return err == nil
	}, 30*time.Second, 100*time.Millisecond, "batching set kept failing: %v %s", err, out)
	require.Eventually(t, func() bool {
		s, _ := n1.Scheduler().Settings("sim-fast")
		return s.MaxSize == 16 && s.FlushTimeout == 5*time.Millisecond
	}, 10*time.Second, 20*time.Millisecond)
}
