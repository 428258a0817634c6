package consensus

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestShutdownLeavesNoGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := mustNewCluster(t, 3)
	_, err := c.waitLeader().store.Apply(ctxT(t), setBatching("m", 1))
	require.NoError(t, err)
	c.waitConverged()
	c.shutdownAll()
}
