package dcache

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOlricStartKeepsTryingAfterItsBound: Start gives up waiting at StartTimeout, not the
// member: it comes up in the background and the cache turns healthy without a second Start.
func TestOlricStartKeepsTryingAfterItsBound(t *testing.T) {
	cfg := olricTestConfig()
	cfg.StartTimeout = time.Nanosecond
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAll(t, []*Cache{c}) })
	err = c.Start(context.Background())
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorContains(t, err, "still retrying")
	h := c.Health()
	require.Equal(t, StatusDegraded, h.Status)
	require.False(t, h.Since.IsZero(), "degraded without a since")

	require.Eventually(t, func() bool { return c.Health().Status == StatusOK }, waitTimeout, waitTick)
	require.True(t, c.Health().Since.IsZero())
	require.NoError(t, c.Set(context.Background(), "m", "k", []byte("v"), time.Minute))
}

// TestOlricSplitMemberRejoins: a member that formed a cache of its own because its peers were
// not listed yet (a cluster restarting in pieces) sees at most half of the members shoal lists
// once they are; it must replace itself with a fresh member that joins them.
func TestOlricSplitMemberRejoins(t *testing.T) {
	skipUnderRaceWithClusteredOlric(t)
	pair := startCluster(t, 2, nil)

	var peers atomic.Pointer[[]string]
	peers.Store(&[]string{})
	cfg := olricTestConfig()
	cfg.Peers = func() []string { return *peers.Load() }
	lone, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAll(t, []*Cache{lone}) })
	require.NoError(t, lone.Start(context.Background()))
	require.Equal(t, 1, lone.Members())
	require.Equal(t, StatusOK, lone.Health().Status)

	// Membership now lists the other two; the lone cache is split off from them.
	peers.Store(&[]string{pair[0].MemberlistAddr(), pair[1].MemberlistAddr()})
	require.Eventually(t, func() bool {
		h := lone.Health()
		return h.Status == StatusDegraded && !h.Since.IsZero()
	}, waitTimeout, waitTick, "the split is not reported")

	require.Eventually(t, func() bool {
		return lone.Members() == 3 && pair[0].Members() == 3 && pair[1].Members() == 3
	}, waitTimeout, waitTick, "the split member did not rejoin")
	require.Eventually(t, func() bool { return lone.Health().Status == StatusOK }, waitTimeout, waitTick)
	require.Positive(t, lone.Health().Restarts)

	ctx := context.Background()
	require.NoError(t, pair[0].Set(ctx, "m", "k", []byte("v"), time.Minute))
	require.Eventually(t, func() bool {
		v, ok, err := lone.Get(ctx, "m", "k")
		return err == nil && ok && string(v) == "v"
	}, waitTimeout, waitTick)
}
