package cli

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/node"
)

func startCLITestNode(t *testing.T, name string, bootstrap int, mutate ...func(*node.Config)) *node.Node {
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
	for _, m := range mutate {
		m(&cfg)
	}
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

const cliToken = "cli-test-token-0123456789"

// Every client command names the node with --node and keeps --url as an
// alias.
func TestClientCommandsTakeNodeAndURLAlias(t *testing.T) {
	root := newRootCmd()
	for _, path := range [][]string{{"bench"}, {"tune"}, {"top"}, {"admin", "limits", "get"}, {"node", "members"}} {
		cmd, _, err := root.Find(path)
		require.NoError(t, err, path)
		require.NotNil(t, cmd.Flag("node"), "%v has --node", path)
		alias := cmd.Flag("url")
		require.NotNil(t, alias, "%v keeps --url", path)
		require.True(t, alias.Hidden, "%v: --url is a hidden alias", path)
	}
}

// The admin commands reach every FSM command an operator issues, and a
// breaker of a node that does not exist is a 404 naming the known nodes.
func TestAdminCommandsCoverTheReplicatedSettings(t *testing.T) {
	n := startCLITestNode(t, "cli-admin", 1)
	admin := func(args ...string) (string, error) {
		return runCLI(t, append(append([]string{"admin"}, args...), "--node", n.HTTPAddr(), "--token", cliToken)...)
	}
	require.Eventually(t, n.Store().IsLeader, 30*time.Second, 20*time.Millisecond)

	out, err := admin("limits", "endpoint", "set", "/v1/chat/completions", "--rpm", "60", "--rph", "600")
	require.NoError(t, err, out)
	out, err = admin("limits", "tenant", "set", "acme", "--rpm", "100", "--tpm", "5000")
	require.NoError(t, err, out)
	out, err = admin("keys", "add", "--key", "sk-cli-0123456789abcdef", "--tenant", "acme", "--rpm", "5")
	require.NoError(t, err, out)
	require.Contains(t, out, `"prefix": "sk-cl"`)
	out, err = admin("limits", "get")
	require.NoError(t, err, out)
	require.Contains(t, out, `"/v1/chat/completions": {`)
	require.Contains(t, out, `"acme": {`)
	require.Eventually(t, func() bool {
		p := n.Store().State().Limits
		return p != nil && p.Endpoints["/v1/chat/completions"].RPH == 600 && p.Tenants["acme"].TPM == 5000
	}, 10*time.Second, 10*time.Millisecond)

	out, err = admin("cache", "settings", "set", "--ttl", "10m", "--scope", "tenant")
	require.NoError(t, err, out)
	require.Contains(t, out, `"default_ttl": "10m0s"`)
	require.Contains(t, out, `"source": "raft"`)
	require.Eventually(t, func() bool {
		cs := n.Store().State().Cache
		return cs != nil && cs.DefaultTTL == 10*time.Minute && cs.Scope == "tenant"
	}, 10*time.Second, 10*time.Millisecond)

	out, err = admin("batching", "set", "--model", "sim-fast", "--max-size", "3")
	require.NoError(t, err, out)
	out, err = admin("batching", "delete", "sim-fast")
	require.NoError(t, err, out)
	require.Eventually(t, func() bool { _, ok := n.Store().State().Batching["sim-fast"]; return !ok }, 10*time.Second, 10*time.Millisecond)

	_, err = admin("keys", "delete", consensus.HashKey("sk-cli-0123456789abcdef"))
	require.NoError(t, err)
	_, err = admin("limits", "tenant", "delete", "acme")
	require.NoError(t, err)
	_, err = admin("limits", "endpoint", "delete", "/v1/chat/completions")
	require.NoError(t, err)

	_, err = admin("breakers", "open", "node-2", "tiny")
	require.ErrorContains(t, err, "404")
	require.ErrorContains(t, err, `node "node-2" is not in the cluster; known nodes: cli-admin`)
	out, err = admin("breakers", "open", "cli-admin", "tiny")
	require.NoError(t, err, out)
	out, err = admin("breakers", "reset", "cli-admin", "tiny")
	require.NoError(t, err, out)
}

// bench names the cause of mostly-429 runs, and --fail-on-slo turns a
// failed SLO table into a failing exit.
func TestBenchNamesRateLimitAndFailsOnSLO(t *testing.T) {
	n := startCLITestNode(t, "cli-bench", 1, func(c *node.Config) { c.RateLimit.RPM = 2 })
	args := []string{"bench", "--node", n.HTTPAddr(), "--model", "sim-fast", "--requests", "10", "--concurrency", "2", "--quiet"}
	var out string
	var err error
	require.Eventually(t, func() bool {
		out, err = runCLI(t, args...)
		return err == nil && strings.Contains(out, "cause:")
	}, 30*time.Second, 100*time.Millisecond, "%v %s", err, out)
	require.Contains(t, out, "errors are 429: rate limit exceeded (client: 2 per window)")
	require.Contains(t, out, "Retry-After")
	require.Contains(t, out, "overall: FAIL")

	out, err = runCLI(t, append(args, "--fail-on-slo")...)
	require.ErrorContains(t, err, "SLO failed: error rate", out)
}
