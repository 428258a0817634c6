package node

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/gossip"
)

// clusterWait is generous: the test machine is small and shared.
const clusterWait = 30 * time.Second

const testToken = "test-admin-token-0123456789"

// testGossipKey is a gossip.encrypt_key (32 bytes, base64).
var testGossipKey = base64.StdEncoding.EncodeToString([]byte("shoal-test-gossip-key-0123456789"))

// withAdminToken opts a cluster node into the admin API with testToken.
func withAdminToken(_ int, cfg *Config) { cfg.Admin.Token = testToken }

// withClusterKey opts a cluster node into gossip.encrypt_key, which also
// puts the peer plane and Raft under the key's mutual TLS.
func withClusterKey(_ int, cfg *Config) { cfg.Gossip.EncryptKey = testGossipKey }

// clusterMode is one configuration a multi-node scenario runs in.
type clusterMode struct {
	name  string
	token bool // admin.token set (the admin API is on)
	key   bool // gossip.encrypt_key set
}

// clusterModes are the configurations the key multi-node scenarios run in:
// the one users get by default and the fully secured one.
var clusterModes = []clusterMode{
	{name: "no token, no key"},
	{name: "token and key", token: true, key: true},
}

// with returns a mutator that applies the mode, then mutate (may be nil).
func (m clusterMode) with(mutate func(i int, cfg *Config)) func(i int, cfg *Config) {
	return func(i int, cfg *Config) {
		if m.token {
			withAdminToken(i, cfg)
		}
		if m.key {
			withClusterKey(i, cfg)
		}
		if mutate != nil {
			mutate(i, cfg)
		}
	}
}

// forEachMode runs body once per clusterMode as a subtest.
func forEachMode(t *testing.T, body func(t *testing.T, mode clusterMode)) {
	for _, mode := range clusterModes {
		t.Run(mode.name, func(t *testing.T) { body(t, mode) })
	}
}

// setBatching changes a model's batching through nd as a user of this
// mode can: the admin API when it has a token. Without one the admin API
// is off (403), so no user can make the change; the write goes the way a
// node's own writes (breaker transitions) go, over the peer plane, which
// must not need the token.
func (m clusterMode) setBatching(t *testing.T, nd *Node, maxSize int, flush time.Duration) {
	t.Helper()
	url := "http://" + nd.HTTPAddr() + "/admin/v1/batching"
	body := map[string]any{"model": "sim-fast", "max_size": maxSize, "flush_timeout": flush.String()}
	if m.token {
		res := doJSON(t, http.MethodPut, url, testToken, body)
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		return
	}
	res := doJSON(t, http.MethodPut, url, "", body)
	require.Equal(t, http.StatusForbidden, res.status, "admin API without a token must be off: %s", res.body)
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	require.NoError(t, nd.applyCommand(ctx, consensus.SetBatching{Model: "sim-fast",
		Settings: consensus.BatchingSettings{MaxSize: maxSize, FlushTimeout: flush}}))
}

func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

// clusterNodeConfig is a node on loopback ports with tightened gossip and
// Raft timings and a fast sim model; otherwise the defaults users get: no
// admin token and no gossip key (opt in with withAdminToken,
// withClusterKey or a clusterMode).
func clusterNodeConfig(t testing.TB, name string, dataDir string) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NodeName = name
	cfg.DataDir = dataDir
	if os.Getenv("SHOAL_TEST_LOG") != "" {
		// Warnings of every test node on stderr, tagged by node, for
		// chasing a failure that only a loaded machine shows.
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("test_node", name)
	}
	cfg.HTTPListener = listenLoopback(t)
	cfg.RaftListener = listenLoopback(t)
	cfg.Gossip.Addr = "127.0.0.1:0"
	cfg.Cache.Addr = "127.0.0.1:0"
	cfg.Cache.Backend = "local"
	cfg.JoinTimeout = clusterWait
	m := DefaultModelConfig("sim-fast", "sim")
	m.Sim.Base, m.Sim.PerItem, m.Sim.TokenInterval = 2*time.Millisecond, time.Millisecond, 0
	m.Sim.DefaultMaxTokens = 4
	cfg.Models = []ModelConfig{m}
	cfg.Tuning.Raft = func(c *consensus.Config) {
		c.HeartbeatTimeout = 300 * time.Millisecond
		c.ElectionTimeout = 300 * time.Millisecond
		c.LeaderLeaseTimeout = 200 * time.Millisecond
		c.CommitTimeout = 10 * time.Millisecond
	}
	cfg.Tuning.Gossip = func(c *gossip.Config) {
		c.Tune = func(mc *memberlist.Config) {
			mc.ProbeInterval = 200 * time.Millisecond
			mc.ProbeTimeout = 100 * time.Millisecond
			mc.SuspicionMult = 2
			mc.GossipInterval = 20 * time.Millisecond
			mc.GossipToTheDeadTime = time.Second
			mc.TCPTimeout = 2 * time.Second
		}
	}
	return cfg
}

type testCluster struct {
	t     testing.TB
	nodes []*Node
	dirs  []string
}

// mustNewCluster starts n nodes that bootstrap Raft together
// (bootstrap_expect = n) and waits until they agree on a leader. mutate may
// adjust each node's configuration.
func mustNewCluster(t testing.TB, n int, mutate func(i int, cfg *Config)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t}
	for i := 0; i < n; i++ {
		tc.dirs = append(tc.dirs, t.TempDir())
	}
	tc.start(n, mutate)
	return tc
}

func (tc *testCluster) start(n int, mutate func(i int, cfg *Config)) {
	t := tc.t
	tc.nodes = nil
	for i := 0; i < n; i++ {
		cfg := clusterNodeConfig(t, fmt.Sprintf("n%d", i+1), tc.dirs[i])
		cfg.Raft.BootstrapExpect = n
		if i > 0 {
			cfg.Join = []string{tc.nodes[0].GossipAddr()}
		}
		if mutate != nil {
			mutate(i, &cfg)
		}
		nd, err := New(cfg)
		require.NoError(t, err)
		require.NoError(t, nd.Start(context.Background()))
		t.Cleanup(func() { stopNode(nd) })
		tc.nodes = append(tc.nodes, nd)
		if cfg.Cache.Backend == "olric" {
			// Olric keeps its start checkpoint in a package variable, so
			// members starting at the same moment in one process race on it
			// (one member per process in production); start them in turn.
			require.Eventually(t, func() bool { return nd.cache.Members() >= 1 }, clusterWait, 10*time.Millisecond, "olric member never started")
		}
	}
	tc.waitLeader(tc.nodes...)
}

func stopNode(nd *Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = nd.Shutdown(ctx)
}

// waitLeader waits until every given node names the same live leader.
func (tc *testCluster) waitLeader(nodes ...*Node) string {
	tc.t.Helper()
	var leader string
	require.Eventually(tc.t, func() bool {
		leader = agreedLeader(nodes...)
		return leader != ""
	}, clusterWait, 20*time.Millisecond, "nodes never agreed on a leader")
	return leader
}

// agreedLeader is the leader every given node names, or "" while they
// disagree or know none.
func agreedLeader(nodes ...*Node) string {
	leader := nodes[0].Store().LeaderID()
	for _, nd := range nodes {
		if nd.Store().LeaderID() != leader {
			return ""
		}
	}
	return leader
}

func (tc *testCluster) node(name string) *Node {
	for _, nd := range tc.nodes {
		if nd.Name() == name {
			return nd
		}
	}
	tc.t.Fatalf("no node %s", name)
	return nil
}

// waitLoads waits until every node has a fresh load report of every other.
func (tc *testCluster) waitMembers(nodes ...*Node) {
	tc.t.Helper()
	tc.waitServing("sim-fast", nodes...)
}

// waitServing waits until every given node counts all of them as
// candidates for model.
func (tc *testCluster) waitServing(model string, nodes ...*Node) {
	tc.t.Helper()
	require.Eventually(tc.t, func() bool {
		for _, nd := range nodes {
			if len(nd.candidates(model)) != len(nodes) {
				return false
			}
		}
		return true
	}, clusterWait, 20*time.Millisecond, "nodes never saw each other's load for %s", model)
}

type httpResult struct {
	status int
	header http.Header
	body   []byte
}

// doJSON sends body as JSON and fails t when no answer comes back. t is a
// require.TestingT so EventuallyWithT conditions can pass their CollectT.
func doJSON(t require.TestingT, method, url, token string, body any) httpResult {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	res := tryJSON(method, url, token, body)
	require.NotZero(t, res.status, "%s %s: %s", method, url, res.body)
	return res
}

// tryJSON is doJSON for polling conditions: it never fails the test; a
// request that cannot be made or answered comes back as status 0 with the
// error as its body.
func tryJSON(method, url, token string, body any) httpResult {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return httpResult{body: []byte(err.Error())}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return httpResult{body: []byte(err.Error())}
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return httpResult{body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return httpResult{body: []byte(err.Error())}
	}
	return httpResult{status: resp.StatusCode, header: resp.Header, body: data}
}

func infer(t *testing.T, nd *Node, input string) httpResult {
	t.Helper()
	return doJSON(t, http.MethodPost, "http://"+nd.HTTPAddr()+"/v1/infer", "", map[string]any{"model": "sim-fast", "input": input})
}

func TestClusterFormsWithBootstrapExpect(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode clusterMode) {
		tc := mustNewCluster(t, 3, mode.with(nil))
		// Naming the leader does not mean a node has applied the whole
		// configuration yet (seen under -race).
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			for _, nd := range tc.nodes {
				servers, err := nd.Store().Configuration()
				assert.NoError(c, err)
				assert.Len(c, servers, 3, nd.Name())
				for _, s := range servers {
					assert.True(c, s.Voter, "server %s should vote", s.ID)
				}
			}
		}, clusterWait, 20*time.Millisecond)
		tc.waitMembers(tc.nodes...)
		url := "http://" + tc.nodes[1].HTTPAddr() + "/admin/v1/cluster"
		if !mode.token {
			res := doJSON(t, http.MethodGet, url, "", nil)
			require.Equal(t, http.StatusForbidden, res.status, "no token: the admin API is off: %s", res.body)
			return
		}
		res := doJSON(t, http.MethodGet, url, testToken, nil)
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		var view ClusterView
		require.NoError(t, json.Unmarshal(res.body, &view))
		require.Len(t, view.Members, 3)
		roles := map[string]int{}
		for _, m := range view.Members {
			roles[m.Role]++
			require.Equal(t, "alive", m.State)
			require.Contains(t, m.Models, "sim-fast")
		}
		require.Equal(t, map[string]int{"leader": 1, "voter": 2}, roles)
	})
}

func TestAdminRequiresToken(t *testing.T) {
	tc := mustNewCluster(t, 1, withAdminToken)
	base := "http://" + tc.nodes[0].HTTPAddr() + "/admin/v1/cluster"
	for _, tok := range []string{"", "wrong"} {
		res := doJSON(t, http.MethodGet, base, tok, nil)
		require.Equal(t, http.StatusUnauthorized, res.status)
		require.NotContains(t, string(res.body), testToken)
	}
	require.Equal(t, http.StatusOK, doJSON(t, http.MethodGet, base, testToken, nil).status)
}

// waitBatching waits until every node runs sim-fast with these settings.
func waitBatching(t *testing.T, nodes []*Node, maxSize int, flush time.Duration) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, nd := range nodes {
			s, _ := nd.Scheduler().Settings("sim-fast")
			assert.Equal(c, maxSize, s.MaxSize, nd.Name())
			assert.Equal(c, flush, s.FlushTimeout, nd.Name())
		}
	}, clusterWait, 10*time.Millisecond, "the batching change did not reach every node")
}

func (tc *testCluster) follower(leader string) *Node {
	for _, nd := range tc.nodes {
		if nd.Name() != leader {
			return nd
		}
	}
	tc.t.Fatalf("no follower")
	return nil
}

// Without a token no user can change batching (the admin API is off); the
// write then goes over the peer plane as a node's own writes do.
func TestBatchingChangeOnFollowerReachesEveryNode(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode clusterMode) {
		tc := mustNewCluster(t, 3, mode.with(nil))
		follower := tc.follower(tc.waitLeader(tc.nodes...))
		mode.setBatching(t, follower, 7, 3*time.Millisecond)
		waitBatching(t, tc.nodes, 7, 3*time.Millisecond)
		if !mode.token {
			return
		}
		url := "http://" + follower.HTTPAddr() + "/admin/v1/batching"
		bad := doJSON(t, http.MethodPut, url, testToken, map[string]any{"model": "sim-fast", "max_size": 0})
		require.Equal(t, http.StatusBadRequest, bad.status)
		require.Contains(t, string(bad.body), "max_size")
		unknown := doJSON(t, http.MethodPut, url, testToken, map[string]any{"model": "nope", "max_size": 2})
		require.Equal(t, http.StatusNotFound, unknown.status)
	})
}

func TestFourthNodeJoinsThroughAdminAPI(t *testing.T) {
	for _, tt := range []struct {
		name      string
		maxVoters int
		wantVoter bool
	}{{"as voter", 5, true}, {"as non-voter", 3, false}} {
		t.Run(tt.name, func(t *testing.T) {
			tc := mustNewCluster(t, 3, func(i int, cfg *Config) {
				withAdminToken(i, cfg)
				cfg.Raft.MaxVoters = tt.maxVoters
			})
			cfg := clusterNodeConfig(t, "n4", t.TempDir())
			withAdminToken(3, &cfg)
			cfg.Raft.MaxVoters = tt.maxVoters
			n4, err := New(cfg)
			require.NoError(t, err)
			require.NoError(t, n4.Start(context.Background()))
			t.Cleanup(func() { stopNode(n4) })

			res := doJSON(t, http.MethodPost, "http://"+n4.HTTPAddr()+"/admin/v1/cluster/join", testToken,
				map[string]any{"addrs": []string{tc.nodes[1].GossipAddr()}})
			require.Equal(t, http.StatusOK, res.status, string(res.body))
			require.Eventually(t, func() bool {
				servers, err := tc.nodes[0].Store().Configuration()
				if err != nil {
					return false
				}
				for _, s := range servers {
					if s.ID == "n4" {
						return s.Voter == tt.wantVoter
					}
				}
				return false
			}, clusterWait, 20*time.Millisecond)
			tc.waitLeader(append(tc.nodes, n4)...)
		})
	}
}

func TestLeaderLossElectsNewLeaderAndServingContinues(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode clusterMode) {
		tc := mustNewCluster(t, 3, mode.with(nil))
		tc.waitMembers(tc.nodes...)
		leader := tc.node(tc.waitLeader(tc.nodes...))
		start := time.Now()
		stopNode(leader)
		var survivors []*Node
		for _, nd := range tc.nodes {
			if nd != leader {
				survivors = append(survivors, nd)
			}
		}
		var newLeader string
		require.Eventually(t, func() bool {
			newLeader = agreedLeader(survivors...)
			return newLeader != "" && newLeader != leader.Name()
		}, clusterWait, 20*time.Millisecond, "no new leader")
		t.Logf("new leader %s after %s", newLeader, time.Since(start))
		for i := 0; i < 30; i++ {
			res := infer(t, survivors[i%2], fmt.Sprintf("after failover %d", i))
			require.Equal(t, http.StatusOK, res.status, string(res.body))
		}
		mode.setBatching(t, survivors[0], 9, 2*time.Millisecond)
		waitBatching(t, survivors, 9, 2*time.Millisecond)
	})
}

// Every node stops at once and comes back on new ports with the same data
// dirs: gossip carries the new Raft addresses and the state survives.
func TestFullRestartKeepsRaftState(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode clusterMode) {
		tc := mustNewCluster(t, 3, mode.with(nil))
		mode.setBatching(t, tc.nodes[2], 5, 4*time.Millisecond)
		waitBatching(t, tc.nodes, 5, 4*time.Millisecond)
		for _, nd := range tc.nodes {
			stopNode(nd)
		}
		tc.start(3, mode.with(nil))
		waitBatching(t, tc.nodes, 5, 4*time.Millisecond)
		mode.setBatching(t, tc.nodes[0], 6, 4*time.Millisecond)
		waitBatching(t, tc.nodes, 6, 4*time.Millisecond)
	})
}

func TestRequestsSpreadAndDeadNodeStopsReceiving(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode clusterMode) {
		tc := mustNewCluster(t, 3, mode.with(func(_ int, cfg *Config) {
			// A slower model makes queues form, so work spreads.
			cfg.Models[0].Sim.Base = 20 * time.Millisecond
			cfg.Models[0].MaxSize = 2
		}))
		tc.waitMembers(tc.nodes...)
		served := countServed(t, tc.nodes[0], 60, 12)
		require.Len(t, served, 3, "work should reach every node: %v", served)

		dead := tc.nodes[2]
		stopped := time.Now()
		stopNode(dead)
		t.Logf("stopped %s in %s", dead.Name(), time.Since(stopped))
		require.Eventually(t, func() bool {
			for _, c := range tc.nodes[0].candidates("sim-fast") {
				if c.Node == dead.Name() {
					return false
				}
			}
			return true
		}, clusterWait, 10*time.Millisecond, "dead node still a candidate")
		t.Logf("dropped as a candidate %s after the stop began", time.Since(stopped))
		served = countServed(t, tc.nodes[0], 40, 8)
		require.NotContains(t, served, dead.Name())
	})
}

// countServed sends total requests from clients goroutines to nd and counts
// which node ran each; every request must succeed.
func countServed(t *testing.T, nd *Node, total, clients int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	served := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan string, total)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := c; i < total; i += clients {
				b, _ := json.Marshal(map[string]any{"model": "sim-fast", "input": fmt.Sprintf("p%d", i)})
				resp, err := http.Post("http://"+nd.HTTPAddr()+"/v1/infer", "application/json", bytes.NewReader(b))
				if err != nil {
					errs <- err.Error()
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
					continue
				}
				mu.Lock()
				served[resp.Header.Get("X-Shoal-Node")]++
				mu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("request failed: %s", e)
	}
	return served
}

func TestSlowNodeGetsASmallerShare(t *testing.T) {
	tc := mustNewCluster(t, 3, func(i int, cfg *Config) {
		m := &cfg.Models[0]
		m.Sim.Base, m.Sim.PerItem, m.Sim.Exponent = 10*time.Millisecond, 2*time.Millisecond, 1
		if i == 2 {
			m.Sim.Base, m.Sim.PerItem = 60*time.Millisecond, 12*time.Millisecond
		}
		m.MaxSize, m.FlushTimeout = 4, time.Millisecond
	})
	tc.waitMembers(tc.nodes...)
	served := countServed(t, tc.nodes[0], 240, 16)
	t.Logf("served: %v", served)
	require.Less(t, served["n3"], served["n1"])
	require.Less(t, served["n3"], served["n2"])
}

func TestGracefulLeaveRemovesTheNodeFromRaft(t *testing.T) {
	tc := mustNewCluster(t, 3, withAdminToken)
	leader := tc.waitLeader(tc.nodes...)
	var leaving *Node
	for _, nd := range tc.nodes {
		if nd.Name() != leader {
			leaving = nd
			break
		}
	}
	res := doJSON(t, http.MethodPost, "http://"+leaving.HTTPAddr()+"/admin/v1/cluster/leave", testToken, nil)
	require.Equal(t, http.StatusOK, res.status, string(res.body))
	other := tc.node(leader)
	require.Eventually(t, func() bool {
		servers, err := other.Store().Configuration()
		if err != nil {
			return false
		}
		for _, s := range servers {
			if s.ID == leaving.Name() {
				return false
			}
		}
		m, ok := other.Gossip().Member(leaving.Name())
		return ok && m.State == gossip.StateLeft
	}, clusterWait, 20*time.Millisecond, "the node that left is still a Raft server")
	for _, c := range other.candidates("sim-fast") {
		require.NotEqual(t, leaving.Name(), c.Node)
	}
}
