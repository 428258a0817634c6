package consensus

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// waitTimeout is generous: the test machine has two shared cores and the
// race detector slows raft down several times.
const waitTimeout = 30 * time.Second

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func mustEncode(t testing.TB, c Command) []byte {
	t.Helper()
	data, err := EncodeCommand(c)
	require.NoError(t, err)
	return data
}

// testLogWriter sends log lines to t.Log until the test's cleanups have run,
// then drops them: raft goroutines may still log while they wind down.
type testLogWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(p))
	}
	return len(p), nil
}

// testLogger logs at warn and above to the test log (shown on failure or
// with -v); SHOAL_TEST_LOG=debug shows everything.
func testLogger(t testing.TB) *slog.Logger {
	w := &testLogWriter{t: t}
	// Registered first, so it runs after every store's shutdown.
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	level := slog.LevelWarn
	if os.Getenv("SHOAL_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// testTimings tightens raft for tests while leaving headroom for a loaded
// machine: a follower waits 250-500ms without heartbeat before it campaigns.
func testTimings(cfg *Config) {
	cfg.HeartbeatTimeout = 250 * time.Millisecond
	cfg.ElectionTimeout = 500 * time.Millisecond
	cfg.LeaderLeaseTimeout = 200 * time.Millisecond
	cfg.CommitTimeout = 10 * time.Millisecond
	cfg.ApplyTimeout = 10 * time.Second
}

// testNode is one server of a testCluster; it keeps its ID, data dir and
// address across restarts.
type testNode struct {
	id    string
	dir   string
	addr  string
	cfg   Config
	store *Store
}

// testCluster runs real Raft servers on loopback TCP with data in temp dirs.
type testCluster struct {
	t      testing.TB
	logger *slog.Logger
	nodes  []*testNode
	opts   []func(*Config)
}

// mustNewCluster starts n servers that bootstrap together (each calling
// Bootstrap with the same list, as bootstrap_expect does) and waits for a
// leader. opts adjust every node's Config.
func mustNewCluster(t testing.TB, n int, opts ...func(*Config)) *testCluster {
	t.Helper()
	c := newEmptyCluster(t, opts...)
	for i := range n {
		c.addNode(fmt.Sprintf("node%d", i+1), func(cfg *Config) { cfg.BootstrapExpect = n })
	}
	servers := make([]Server, n)
	for i, node := range c.nodes {
		servers[i] = Server{ID: node.id, Addr: node.addr, Voter: true}
	}
	for _, node := range c.nodes {
		require.NoError(t, node.store.Bootstrap(servers))
	}
	c.waitLeader()
	return c
}

func newEmptyCluster(t testing.TB, opts ...func(*Config)) *testCluster {
	c := &testCluster{t: t, logger: testLogger(t), opts: opts}
	t.Cleanup(c.shutdownAll)
	return c
}

// addNode creates and starts a server with a fresh data dir; extra options
// apply after the cluster's. It joins nothing by itself.
func (c *testCluster) addNode(id string, extra ...func(*Config)) *testNode {
	c.t.Helper()
	node := &testNode{id: id, dir: filepath.Join(c.t.TempDir(), id)}
	cfg := Config{NodeID: id, DataDir: node.dir, Logger: c.logger}
	testTimings(&cfg)
	for _, o := range c.opts {
		o(&cfg)
	}
	for _, o := range extra {
		o(&cfg)
	}
	node.cfg = cfg
	c.nodes = append(c.nodes, node)
	c.start(node)
	return node
}

// start opens node's store on its previous address (or a fresh port the
// first time). Linux Go listeners set SO_REUSEADDR, so the port is free again
// at once unless another socket took it; retry briefly for that case.
func (c *testCluster) start(node *testNode) {
	c.t.Helper()
	addr := node.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	require.Eventually(c.t, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "listen on %s", addr)
	cfg := node.cfg
	cfg.Listener = ln
	s, err := New(cfg)
	require.NoError(c.t, err)
	node.store = s
	node.addr = s.Addr()
}

// stop shuts node's store down, as a crash would (no Leave).
func (c *testCluster) stop(node *testNode) {
	c.t.Helper()
	require.NoError(c.t, node.store.Shutdown())
	node.store = nil
}

func (c *testCluster) restart(node *testNode) {
	c.t.Helper()
	if node.store != nil {
		c.stop(node)
	}
	c.start(node)
}

func (c *testCluster) shutdownAll() {
	for _, node := range c.nodes {
		if node.store != nil {
			node.store.Shutdown()
			node.store = nil
		}
	}
}

func (c *testCluster) running() []*testNode {
	var out []*testNode
	for _, node := range c.nodes {
		if node.store != nil {
			out = append(out, node)
		}
	}
	return out
}

// waitLeader waits until one running node is leader and every running
// node in its configuration knows it, and returns it.
func (c *testCluster) waitLeader() *testNode {
	c.t.Helper()
	var leader *testNode
	waitFor(c.t, func() bool {
		leader = nil
		for _, node := range c.running() {
			if node.store.IsLeader() {
				if leader != nil {
					return false
				}
				leader = node
			}
		}
		if leader == nil {
			return false
		}
		servers, err := leader.store.Configuration()
		if err != nil {
			return false
		}
		for _, node := range c.running() {
			for _, srv := range servers {
				if srv.ID == node.id && node.store.LeaderID() != leader.id {
					return false
				}
			}
		}
		return true
	}, "a leader known to every running node")
	return leader
}

// currentLeader returns the running leader, or nil; unlike waitLeader it
// never fails the test, so conditions polled by waitFor may call it.
func (c *testCluster) currentLeader() *testNode {
	for _, node := range c.running() {
		if node.store.IsLeader() {
			return node
		}
	}
	return nil
}

func (c *testCluster) follower() *testNode {
	leader := c.waitLeader()
	for _, node := range c.running() {
		if node != leader {
			return node
		}
	}
	c.t.Fatal("no follower running")
	return nil
}

func (c *testCluster) node(id string) *testNode {
	for _, node := range c.nodes {
		if node.id == id {
			return node
		}
	}
	c.t.Fatalf("no node %s", id)
	return nil
}

// members describes every node as gossip would: running nodes alive,
// stopped ones failed since failedSince.
func (c *testCluster) members(failedSince time.Time) []Member {
	var out []Member
	for _, node := range c.nodes {
		m := Member{ID: node.id, RaftAddr: node.addr, Status: MemberAlive}
		if node.store == nil {
			m.Status, m.FailedSince = MemberFailed, failedSince
		} else {
			m.HasState = node.store.HasExistingState()
		}
		out = append(out, m)
	}
	return out
}

// waitConverged waits until every running node's state has the same
// index as the leader's and equals it.
func (c *testCluster) waitConverged() *State {
	c.t.Helper()
	leader := c.waitLeader()
	var want *State
	var members []*testNode
	waitFor(c.t, func() bool {
		want = leader.store.State()
		servers := c.voters(leader)
		members = nil
		for _, node := range c.running() {
			if _, ok := servers[node.id]; !ok {
				continue
			}
			members = append(members, node)
			if node.store.State().Index != want.Index {
				return false
			}
		}
		return true
	}, "all servers applied the leader's last command")
	for _, node := range members {
		require.Equal(c.t, want, node.store.State(), "node %s", node.id)
	}
	return want
}

// voters maps the server IDs of node's configuration to their suffrage; it
// is empty if node cannot read its configuration (shut down).
func (c *testCluster) voters(node *testNode) map[string]bool {
	out := map[string]bool{}
	if node == nil || node.store == nil {
		return out
	}
	servers, err := node.store.Configuration()
	if err != nil {
		return out
	}
	for _, s := range servers {
		out[s.ID] = s.Voter
	}
	return out
}

func waitFor(t testing.TB, cond func() bool, msg string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, waitTimeout, 10*time.Millisecond, append([]any{msg}, args...)...)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func setBatching(model string, size int) SetBatching {
	return SetBatching{Model: model, Settings: BatchingSettings{MaxSize: size, FlushTimeout: time.Millisecond}}
}
