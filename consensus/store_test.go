package consensus

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSingleNodeBootstrapsItself(t *testing.T) {
	c := newEmptyCluster(t)
	n := c.addNode("dev", func(cfg *Config) { cfg.BootstrapExpect = 1 })
	require.Same(t, n, c.waitLeader())
	require.True(t, n.store.HasExistingState())

	changes, cancel := n.store.Subscribe()
	defer cancel()
	idx, err := n.store.Apply(ctxT(t), setBatching("llama", 12))
	require.NoError(t, err)
	require.NotZero(t, idx)

	select {
	case <-changes:
	case <-time.After(waitTimeout):
		t.Fatal("no change notification")
	}
	st := n.store.State()
	require.Equal(t, idx, st.Index)
	require.Equal(t, 12, st.Batching["llama"].MaxSize)
	servers, err := n.store.Configuration()
	require.NoError(t, err)
	require.Equal(t, []Server{{ID: "dev", Addr: n.addr, Voter: true}}, servers)
}

func TestThreeNodesBootstrapOneLeader(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	leaders := 0
	for _, n := range c.nodes {
		if n.store.IsLeader() {
			leaders++
		}
		require.Equal(t, leader.id, n.store.LeaderID())
		require.Equal(t, leader.addr, n.store.LeaderAddr())
		require.Equal(t, map[string]bool{"node1": true, "node2": true, "node3": true}, c.voters(n))
	}
	require.Equal(t, 1, leaders)
}

func TestBootstrapAgainAfterRestartIsNoop(t *testing.T) {
	c := mustNewCluster(t, 3)
	_, err := c.waitLeader().store.Apply(ctxT(t), setBatching("m", 3))
	require.NoError(t, err)
	c.waitConverged()

	n := c.follower()
	c.restart(n)
	require.True(t, n.store.HasExistingState())
	// A different list proves the call changes nothing rather than
	// happening to repeat the same configuration.
	require.NoError(t, n.store.Bootstrap([]Server{{ID: n.id, Addr: n.addr, Voter: true}}))
	require.Equal(t, map[string]bool{"node1": true, "node2": true, "node3": true}, c.voters(n))
	st := c.waitConverged()
	require.Equal(t, 3, st.Batching["m"].MaxSize)
}

func TestBootstrapRejectsListWithoutSelf(t *testing.T) {
	c := newEmptyCluster(t)
	n := c.addNode("a")
	err := n.store.Bootstrap([]Server{{ID: "b", Addr: "127.0.0.1:1", Voter: true}})
	require.ErrorContains(t, err, "does not include this server")
	require.False(t, n.store.HasExistingState())
}

func TestWriteOnFollowerReturnsErrNotLeader(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	f := c.follower()
	before := f.store.State()
	_, err := f.store.Apply(ctxT(t), setBatching("m", 1))
	require.ErrorIs(t, err, ErrNotLeader)
	require.ErrorContains(t, err, leader.id)
	_, err = f.store.ConsistentState(ctxT(t))
	require.ErrorIs(t, err, ErrNotLeader)
	require.Equal(t, before, f.store.State())
}

func TestApplyValidatesBeforeProposing(t *testing.T) {
	c := mustNewCluster(t, 1)
	leader := c.waitLeader()
	last := leader.store.LastIndex()
	_, err := leader.store.Apply(ctxT(t), SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 0}})
	require.ErrorIs(t, err, ErrInvalidCommand)
	require.EqualError(t, err, "max_size must be between 1 and 4096")
	require.Equal(t, last, leader.store.LastIndex(), "nothing was proposed")
}

func TestConcurrentBreakerTransitionsYieldOne(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	const racers = 4
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			_, errs[i] = leader.store.Apply(ctxT(t), BreakerTransition{
				Node: "n2", Model: "m", From: BreakerClosed, To: BreakerOpen,
				At: t0, OpenUntil: t0.Add(30 * time.Second), Trips: 1, Reason: "racer " + strconv.Itoa(i),
			})
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
			continue
		}
		require.ErrorIs(t, err, ErrBreakerConflict)
	}
	require.Equal(t, 1, won)
	st := c.waitConverged()
	require.Equal(t, BreakerOpen, st.Breaker("n2", "m").State)
}

func TestLeaderFailoverKeepsStateAndWrites(t *testing.T) {
	c := mustNewCluster(t, 3)
	old := c.waitLeader()
	_, err := old.store.Apply(ctxT(t), setBatching("before", 7))
	require.NoError(t, err)
	c.waitConverged()

	c.stop(old)
	leader := c.waitLeader()
	require.NotEqual(t, old.id, leader.id)
	_, err = leader.store.Apply(ctxT(t), setBatching("after", 9))
	require.NoError(t, err)
	st := c.waitConverged()
	require.Equal(t, 7, st.Batching["before"].MaxSize)
	require.Equal(t, 9, st.Batching["after"].MaxSize)

	// The old leader comes back as a follower and catches up.
	c.start(old)
	c.waitConverged()
	require.Equal(t, 9, old.store.State().Batching["after"].MaxSize)
}

func TestMinorityCannotWrite(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	_, err := leader.store.Apply(ctxT(t), setBatching("m", 1))
	require.NoError(t, err)
	c.waitConverged()
	for _, n := range c.running() {
		if n != leader {
			c.stop(n)
		}
	}
	// Without contact with a quorum the leader steps down within its lease.
	waitFor(t, func() bool { return !leader.store.IsLeader() }, "isolated leader steps down")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = leader.store.Apply(ctx, setBatching("m", 2))
	require.Error(t, err)
	require.True(t, errors.Is(err, ErrNoLeader) || errors.Is(err, ErrNotLeader), "got %v", err)
	require.Equal(t, 1, leader.store.State().Batching["m"].MaxSize)
}

func TestFullRestartKeepsState(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	for i := range 20 {
		_, err := leader.store.Apply(ctxT(t), setBatching("m"+strconv.Itoa(i%4), i+1))
		require.NoError(t, err)
	}
	_, err := leader.store.Apply(ctxT(t), SetCacheSettings{Settings: CacheSettings{Enabled: true, DefaultTTL: time.Minute}})
	require.NoError(t, err)
	before := c.waitConverged()

	for _, n := range c.nodes {
		c.stop(n)
	}
	for _, n := range c.nodes {
		c.start(n)
		require.True(t, n.store.HasExistingState())
		// Before any election the node serves the state its log holds.
		require.Equal(t, before, n.store.State(), "node %s right after start", n.id)
	}
	leader = c.waitLeader()
	// Once the new leader commits an entry of its term, every FSM replays
	// the log and takes over from the provisional state.
	for _, n := range c.nodes {
		waitFor(t, func() bool { return n.store.fsm.current().Index == before.Index }, "%s replayed its log", n.id)
		require.Equal(t, before, n.store.State())
		require.Nil(t, n.store.provisional.Load())
	}
	_, err = leader.store.Apply(ctxT(t), setBatching("m0", 99))
	require.NoError(t, err)
	require.Equal(t, 99, c.waitConverged().Batching["m0"].MaxSize)
}

func TestRestartedNodeWithoutQuorumServesLocalState(t *testing.T) {
	c := mustNewCluster(t, 3)
	_, err := c.waitLeader().store.Apply(ctxT(t), PutTenant{Name: "acme", Limit: TenantLimit{RPM: 5}})
	require.NoError(t, err)
	_, err = c.waitLeader().store.Apply(ctxT(t), SetLimitPolicy{Policy: LimitPolicy{AuthRequired: true, Tenants: map[string]TenantLimit{"acme": {RPM: 5}}}})
	require.NoError(t, err)
	before := c.waitConverged()
	for _, n := range c.nodes {
		c.stop(n)
	}
	lone := c.nodes[0]
	c.start(lone)
	st := lone.store.State()
	require.Equal(t, before, st)
	require.True(t, st.Limits.AuthRequired, "a lone restarted node must not forget auth_required")
	require.Empty(t, lone.store.LeaderID())
}

func TestFullRestartOnNewAddresses(t *testing.T) {
	c := mustNewCluster(t, 3)
	_, err := c.waitLeader().store.Apply(ctxT(t), setBatching("m", 5))
	require.NoError(t, err)
	c.waitConverged()
	for _, n := range c.nodes {
		c.stop(n)
	}
	old := map[string]string{}
	for _, n := range c.nodes {
		old[n.id] = n.addr
		n.addr = "" // fresh ephemeral port
		c.start(n)
		require.NotEqual(t, old[n.id], n.addr)
	}
	// Gossip hands every node the new addresses; raft dials through them,
	// elects a leader, and the leader rewrites the configuration.
	members := c.members(time.Time{})
	addrs := map[string]string{}
	for _, n := range c.nodes {
		addrs[n.id] = n.addr
	}
	waitFor(t, func() bool {
		for _, n := range c.nodes {
			// Errors are transient here (leadership changing hands); the
			// next round retries.
			if err := n.store.Reconcile(context.Background(), members); err != nil {
				t.Logf("reconcile on %s: %v", n.id, err)
			}
		}
		for _, n := range c.nodes {
			servers, err := n.store.Configuration()
			if err != nil || len(servers) != 3 {
				return false
			}
			for _, s := range servers {
				if s.Addr != addrs[s.ID] {
					return false
				}
			}
		}
		return true
	}, "configuration carries the new addresses")
	st := c.waitConverged()
	require.Equal(t, 5, st.Batching["m"].MaxSize)
}

func TestSnapshotRestoreAfterRestart(t *testing.T) {
	c := newEmptyCluster(t, func(cfg *Config) { cfg.TrailingLogs = 1 })
	n := c.addNode("solo", func(cfg *Config) { cfg.BootstrapExpect = 1 })
	c.waitLeader()
	for i := range 30 {
		_, err := n.store.Apply(ctxT(t), setBatching("m"+strconv.Itoa(i), i+1))
		require.NoError(t, err)
	}
	require.NoError(t, n.store.Snapshot())
	_, err := n.store.Apply(ctxT(t), SetCacheSettings{Settings: CacheSettings{Enabled: true}})
	require.NoError(t, err)
	before := n.store.State()

	c.restart(n)
	first, err := n.store.bolt.FirstIndex()
	require.NoError(t, err)
	require.Greater(t, first, uint64(10), "the log was compacted, so the state must come from the snapshot")
	require.NotEqual(t, "0", n.store.Stats()["last_snapshot_index"])
	c.waitLeader()
	waitFor(t, func() bool { return n.store.State().Index == before.Index }, "replayed to index %d", before.Index)
	require.Equal(t, before, n.store.State())
}

func TestNewMemberCatchesUpFromSnapshot(t *testing.T) {
	c := mustNewCluster(t, 3, func(cfg *Config) { cfg.TrailingLogs = 1 })
	leader := c.waitLeader()
	for i := range 20 {
		_, err := leader.store.Apply(ctxT(t), setBatching("m", i+1))
		require.NoError(t, err)
	}
	require.NoError(t, leader.store.Snapshot())
	first, err := leader.store.bolt.FirstIndex()
	require.NoError(t, err)
	require.Greater(t, first, uint64(2), "log compacted")

	n := c.addNode("node4")
	require.NoError(t, leader.store.Join(ctxT(t), n.id, n.addr))
	st := c.waitConverged()
	require.Equal(t, 20, st.Batching["m"].MaxSize)
	require.NotEqual(t, "0", n.store.Stats()["last_snapshot_index"], "node4 installed the leader's snapshot")
}

func TestFollowerReadsOwnWriteWithWaitApplied(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	f := c.follower()
	changes, cancel := f.store.Subscribe()
	defer cancel()
	idx, err := leader.store.Apply(ctxT(t), setBatching("m", 42))
	require.NoError(t, err)
	require.NoError(t, f.store.WaitApplied(ctxT(t), idx))
	require.Equal(t, 42, f.store.State().Batching["m"].MaxSize)
	select {
	case <-changes:
	case <-time.After(waitTimeout):
		t.Fatal("follower subscription did not fire")
	}

	ctx, cancelCtx := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelCtx()
	require.ErrorIs(t, f.store.WaitApplied(ctx, idx+1000), context.DeadlineExceeded)
}

func TestConsistentStateOnLeader(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	idx, err := leader.store.Apply(ctxT(t), setBatching("m", 4))
	require.NoError(t, err)
	st, err := leader.store.ConsistentState(ctxT(t))
	require.NoError(t, err)
	require.GreaterOrEqual(t, st.Index, idx)
	require.Equal(t, 4, st.Batching["m"].MaxSize)
}

func TestSubscriptionsAreCoalescedAndCancelable(t *testing.T) {
	c := mustNewCluster(t, 1)
	n := c.waitLeader()
	changes, cancel := n.store.Subscribe()
	for i := range 5 {
		_, err := n.store.Apply(ctxT(t), setBatching("m", i+1))
		require.NoError(t, err)
	}
	<-changes
	select {
	case <-changes:
		t.Fatal("five unread changes must coalesce into one notification")
	default:
	}
	cancel()
	_, err := n.store.Apply(ctxT(t), setBatching("m", 9))
	require.NoError(t, err)
	select {
	case <-changes:
		t.Fatal("canceled subscription notified")
	default:
	}
}

func TestLeaveTransfersLeadership(t *testing.T) {
	c := mustNewCluster(t, 3)
	old := c.waitLeader()
	require.NoError(t, old.store.Leave(ctxT(t)))
	require.False(t, old.store.IsLeader())
	require.NotEqual(t, old.id, old.store.LeaderID())
	require.NotEmpty(t, old.store.LeaderID())
	c.stop(old)
	leader := c.waitLeader()
	// The new leader removes the node once gossip says it left.
	members := c.members(time.Time{})
	for i := range members {
		if members[i].ID == old.id {
			members[i].Status = MemberLeft
		}
	}
	require.NoError(t, leader.store.Reconcile(ctxT(t), members))
	require.NotContains(t, c.voters(leader), old.id)
	_, err := leader.store.Apply(ctxT(t), setBatching("m", 1))
	require.NoError(t, err)
}

func TestLeaveAsFollowerOrOnlyVoterIsNoop(t *testing.T) {
	c := mustNewCluster(t, 1)
	n := c.waitLeader()
	require.NoError(t, n.store.Leave(ctxT(t)))
	require.True(t, n.store.IsLeader())
}

func TestShutdownIsIdempotentAndStopsWrites(t *testing.T) {
	c := mustNewCluster(t, 1)
	n := c.waitLeader()
	s := n.store
	require.NoError(t, s.Shutdown())
	require.NoError(t, s.Shutdown())
	n.store = nil
	_, err := s.Apply(ctxT(t), setBatching("m", 1))
	require.ErrorIs(t, err, ErrShutdown)
}

func TestStatsReportRaftAndFSM(t *testing.T) {
	c := mustNewCluster(t, 1)
	n := c.waitLeader()
	idx, err := n.store.Apply(ctxT(t), setBatching("m", 1))
	require.NoError(t, err)
	st := n.store.Stats()
	require.Equal(t, "Leader", st["state"])
	require.Equal(t, n.id, st["node_id"])
	require.Equal(t, n.addr, st["advertise"])
	require.Equal(t, strconv.FormatUint(idx, 10), st["fsm_index"])
	require.GreaterOrEqual(t, n.store.LastIndex(), idx)
	// raft records the applied index just after the future returns.
	waitFor(t, func() bool { return n.store.AppliedIndex() >= idx }, "applied index reaches %d", idx)
}

func TestNewRejectsBadConfig(t *testing.T) {
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		return ln
	}
	wildcard := func() net.Listener {
		ln, err := net.Listen("tcp", "0.0.0.0:0")
		require.NoError(t, err)
		return ln
	}
	tests := []struct {
		name string
		cfg  func(ln net.Listener) Config
		want string
	}{
		{"no node id", func(ln net.Listener) Config { return Config{DataDir: t.TempDir(), Listener: ln} }, "node id is required"},
		{"no data dir", func(ln net.Listener) Config { return Config{NodeID: "a", Listener: ln} }, "data dir is required"},
		{"negative bootstrap expect", func(ln net.Listener) Config {
			return Config{NodeID: "a", DataDir: t.TempDir(), Listener: ln, BootstrapExpect: -1}
		}, "bootstrap_expect"},
		{"bad advertise", func(ln net.Listener) Config {
			return Config{NodeID: "a", DataDir: t.TempDir(), Listener: ln, Advertise: "0.0.0.0:0"}
		}, "need a specific host and port"},
		{"lease above heartbeat", func(ln net.Listener) Config {
			return Config{NodeID: "a", DataDir: t.TempDir(), Listener: ln, HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: time.Second}
		}, "LeaderLeaseTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listen()
			_, err := New(tt.cfg(ln))
			require.ErrorContains(t, err, tt.want)
			_, err = ln.Accept()
			require.ErrorIs(t, err, net.ErrClosed, "New closes the listener it was handed when it fails")
		})
	}
	t.Run("wildcard listener without advertise", func(t *testing.T) {
		_, err := New(Config{NodeID: "a", DataDir: t.TempDir(), Listener: wildcard()})
		require.ErrorContains(t, err, "not advertisable")
	})
}
