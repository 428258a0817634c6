package consensus

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// reconcileUntil runs the leader's Reconcile with members() until cond
// holds; rounds can fail while a new server catches up, and the next round
// retries, as the node's reconcile loop does.
func (c *testCluster) reconcileUntil(members func() []Member, cond func() bool, msg string) {
	c.t.Helper()
	waitFor(c.t, func() bool {
		leader := c.currentLeader()
		if leader == nil {
			return false
		}
		if err := leader.store.Reconcile(context.Background(), members()); err != nil {
			c.t.Logf("reconcile: %v", err)
		}
		return cond()
	}, msg)
}

func TestReconcileAddsVoterBelowMaxVoters(t *testing.T) {
	c := mustNewCluster(t, 3) // MaxVoters defaults to 5
	leader := c.waitLeader()
	_, err := leader.store.Apply(ctxT(t), setBatching("m", 6))
	require.NoError(t, err)
	n4 := c.addNode("node4")

	members := func() []Member { return c.members(time.Time{}) }
	c.reconcileUntil(members, func() bool { return c.voters(c.currentLeader())["node4"] }, "node4 is a voter")
	require.Len(t, c.voters(leader), 4)
	c.waitConverged()
	require.Equal(t, 6, n4.store.State().Batching["m"].MaxSize)
	require.True(t, n4.store.HasExistingState())

	// Reconciling again with the same members changes nothing.
	last := leader.store.LastIndex()
	require.NoError(t, leader.store.Reconcile(ctxT(t), members()))
	require.Equal(t, last, leader.store.LastIndex())
}

func TestReconcileAddsNonvoterAtMaxVoters(t *testing.T) {
	c := mustNewCluster(t, 3, func(cfg *Config) { cfg.MaxVoters = 3 })
	n4 := c.addNode("node4")
	members := func() []Member { return c.members(time.Time{}) }
	c.reconcileUntil(members, func() bool {
		v, ok := c.voters(c.currentLeader())["node4"]
		return ok && !v
	}, "node4 is a non-voter")

	// A non-voter replicates the state.
	_, err := c.waitLeader().store.Apply(ctxT(t), setBatching("m", 2))
	require.NoError(t, err)
	c.waitConverged()
	require.Equal(t, 2, n4.store.State().Batching["m"].MaxSize)
	require.False(t, n4.store.IsLeader())
}

func TestReconcilePromotesNonvoterWhenVoterLeaves(t *testing.T) {
	c := mustNewCluster(t, 3, func(cfg *Config) { cfg.MaxVoters = 3 })
	c.addNode("node4")
	c.reconcileUntil(func() []Member { return c.members(time.Time{}) }, func() bool {
		_, ok := c.voters(c.currentLeader())["node4"]
		return ok
	}, "node4 joined")

	gone := c.follower()
	c.stop(gone)
	left := func() []Member {
		ms := c.members(time.Time{})
		for i := range ms {
			if ms[i].ID == gone.id {
				ms[i].Status = MemberLeft
			}
		}
		return ms
	}
	c.reconcileUntil(left, func() bool {
		v := c.voters(c.currentLeader())
		_, stillThere := v[gone.id]
		return !stillThere && v["node4"]
	}, "left voter removed and node4 promoted")
	require.Len(t, c.voters(c.waitLeader()), 3)
}

func TestReconcileRemovesFailedMemberAfterTimeoutKeepingQuorumFloor(t *testing.T) {
	c := mustNewCluster(t, 3, func(cfg *Config) { cfg.DeadServerTimeout = time.Minute })
	leader := c.waitLeader()
	var followers []*testNode
	for _, n := range c.nodes {
		if n != leader {
			followers = append(followers, n)
		}
	}
	first, second := followers[0], followers[1]
	c.stop(first)

	// Failed for less than DeadServerTimeout: kept.
	require.NoError(t, leader.store.Reconcile(ctxT(t), c.members(time.Now().Add(-time.Second))))
	require.Contains(t, c.voters(leader), first.id)

	// Failed long enough: removed; 2 voters remain, a quorum of 3.
	require.NoError(t, leader.store.Reconcile(ctxT(t), c.members(time.Now().Add(-2*time.Minute))))
	require.NotContains(t, c.voters(leader), first.id)
	require.Len(t, c.voters(leader), 2)

	// The second follower is reported failed too (in fact only cut off from
	// gossip): removing it would leave one voter, below the floor of two.
	members := c.members(time.Now().Add(-2 * time.Minute))
	for i := range members {
		if members[i].ID == second.id {
			members[i].Status, members[i].FailedSince = MemberFailed, time.Now().Add(-time.Hour)
		}
	}
	require.NoError(t, leader.store.Reconcile(ctxT(t), members))
	require.Contains(t, c.voters(leader), second.id)
	_, err := leader.store.Apply(ctxT(t), setBatching("m", 1))
	require.NoError(t, err, "the two remaining voters still commit")
}

func TestReconcileIgnoresSelfAndUnknownServers(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	last := leader.store.LastIndex()
	members := []Member{
		{ID: leader.id, RaftAddr: leader.addr, Status: MemberLeft},
		{ID: "stranger", Status: MemberAlive}, // no raft address
	}
	require.NoError(t, leader.store.Reconcile(ctxT(t), members))
	require.Len(t, c.voters(leader), 3)
	require.Equal(t, last, leader.store.LastIndex())
}

func TestReconcileOnFollowerChangesNothing(t *testing.T) {
	c := mustNewCluster(t, 3)
	f := c.follower()
	members := c.members(time.Time{})
	for i := range members {
		members[i].Status = MemberLeft
	}
	require.NoError(t, f.store.Reconcile(ctxT(t), members))
	require.Len(t, c.voters(c.waitLeader()), 3)
}

func TestReconcileBootstrapsWithBootstrapExpect(t *testing.T) {
	c := newEmptyCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.addNode(id, func(cfg *Config) { cfg.BootstrapExpect = 3 })
	}
	// Each node sees itself and one other: nobody bootstraps.
	all := c.members(time.Time{})
	for i, n := range c.nodes {
		partial := []Member{all[i], all[(i+1)%3]}
		require.NoError(t, n.store.Reconcile(ctxT(t), partial))
		require.False(t, n.store.HasExistingState(), "%s bootstrapped with 2 of 3", n.id)
	}
	// All three seen: each bootstraps the same configuration.
	for _, n := range c.nodes {
		require.NoError(t, n.store.Reconcile(ctxT(t), all))
		require.True(t, n.store.HasExistingState())
	}
	leader := c.waitLeader()
	require.Equal(t, map[string]bool{"a": true, "b": true, "c": true}, c.voters(leader))
	_, err := leader.store.Apply(ctxT(t), setBatching("m", 3))
	require.NoError(t, err)
	c.waitConverged()

	// A late node with the same bootstrap_expect sees members with state and
	// waits to be added instead of forming a second cluster.
	d := c.addNode("d", func(cfg *Config) { cfg.BootstrapExpect = 3 })
	require.NoError(t, d.store.Reconcile(ctxT(t), c.members(time.Time{})))
	require.False(t, d.store.HasExistingState())
	c.reconcileUntil(func() []Member { return c.members(time.Time{}) }, func() bool {
		return c.voters(c.currentLeader())["d"]
	}, "d added by the leader")
	c.waitConverged()
	require.Equal(t, 3, d.store.State().Batching["m"].MaxSize)
}

func TestBootstrapExpectZeroNeverBootstraps(t *testing.T) {
	c := newEmptyCluster(t)
	a := c.addNode("a")
	require.NoError(t, a.store.Reconcile(ctxT(t), []Member{{ID: "a", RaftAddr: a.addr, Status: MemberAlive}}))
	require.False(t, a.store.HasExistingState())
	require.Empty(t, a.store.LeaderID())
}

func TestJoinIsIdempotentAndUpdatesAddress(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	n4 := c.addNode("node4")
	require.NoError(t, leader.store.Join(ctxT(t), n4.id, n4.addr))
	require.True(t, c.voters(leader)["node4"])
	last := leader.store.LastIndex()
	require.NoError(t, leader.store.Join(ctxT(t), n4.id, n4.addr))
	require.Equal(t, last, leader.store.LastIndex(), "same id and address: nothing to do")

	// node4 restarts on another port: same id, new address, still a voter.
	c.stop(n4)
	n4.addr = ""
	c.start(n4)
	require.NoError(t, leader.store.Join(ctxT(t), n4.id, n4.addr))
	servers, err := leader.store.Configuration()
	require.NoError(t, err)
	require.Contains(t, servers, Server{ID: "node4", Addr: n4.addr, Voter: true})
	require.Len(t, servers, 4)
	_, err = leader.store.Apply(ctxT(t), setBatching("m", 4))
	require.NoError(t, err)
	c.waitConverged()
}

func TestJoinReplacesServerWhoseAddressMovedToNewID(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	n4 := c.addNode("node4")
	require.NoError(t, leader.store.Join(ctxT(t), n4.id, n4.addr))
	// node4's machine is rebuilt under a new name on the same address.
	c.stop(n4)
	addr := n4.addr
	n5 := &testNode{id: "node5", dir: t.TempDir(), addr: addr, cfg: n4.cfg}
	n5.cfg.NodeID, n5.cfg.DataDir = "node5", n5.dir
	c.nodes = append(c.nodes, n5)
	c.start(n5)
	require.NoError(t, leader.store.Join(ctxT(t), "node5", addr))
	v := c.voters(leader)
	require.NotContains(t, v, "node4")
	require.True(t, v["node5"])
	c.waitConverged()
}

func TestJoinAndRemoveNeedLeader(t *testing.T) {
	c := mustNewCluster(t, 3)
	f := c.follower()
	require.ErrorIs(t, f.store.Join(ctxT(t), "x", "127.0.0.1:1"), ErrNotLeader)
	require.ErrorIs(t, f.store.Remove(ctxT(t), "node1"), ErrNotLeader)
	leader := c.waitLeader()
	require.ErrorContains(t, leader.store.Remove(ctxT(t), leader.id), "use Leave")
	require.NoError(t, leader.store.Remove(ctxT(t), "unknown"))
	require.NoError(t, leader.store.Remove(ctxT(t), f.id))
	require.NotContains(t, c.voters(leader), f.id)
}

func TestRunReconcilerAddsMembers(t *testing.T) {
	c := mustNewCluster(t, 1)
	c.addNode("node2")
	leader := c.waitLeader()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		leader.store.RunReconciler(ctx, 50*time.Millisecond, func() []Member { return c.members(time.Time{}) })
	}()
	node1 := c.node("node1")
	waitFor(t, func() bool { return c.voters(node1)["node2"] }, "reconciler added node2")
	cancel()
	<-done
}
