package consensus

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: stores
// are started and stopped many times in one process, by these tests and by
// the node's in-process cluster tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestShutdownLeavesNoGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	_, err := leader.store.Apply(ctxT(t), setBatching("m", 1))
	require.NoError(t, err)
	c.restart(leader)
	_, err = c.waitLeader().store.Apply(ctxT(t), setBatching("m", 2))
	require.NoError(t, err)
	c.waitConverged()
	c.shutdownAll()
}
