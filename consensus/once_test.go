package consensus

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func openBreaker(trips int) BreakerTransition {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return BreakerTransition{Node: "n1", Model: "m", From: BreakerClosed, To: BreakerOpen, At: at,
		OpenUntil: at.Add(time.Minute), Trips: trips, Reason: "test"}
}

// A write retried with the same ID (the proposer could not tell whether
// its first attempt committed) is answered with the first outcome and
// applied once; the same change under a new ID is a new write.
func TestOnceAppliesARetriedWriteOnce(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	once, err := NewOnce("write-1", openBreaker(1))
	require.NoError(t, err)

	_, err = leader.store.Apply(ctxT(t), once)
	require.NoError(t, err)
	// Applying the transition itself again would conflict (the breaker is
	// open now); the retry answers the first outcome instead.
	_, err = leader.store.Apply(ctxT(t), once)
	require.NoError(t, err, "a retry of a committed write is a success")
	require.Equal(t, 1, leader.store.State().Breaker("n1", "m").Trips)

	again, err := NewOnce("write-2", openBreaker(1))
	require.NoError(t, err)
	_, err = leader.store.Apply(ctxT(t), again)
	require.ErrorIs(t, err, ErrBreakerConflict, "a new ID is a new write")
	_, err = leader.store.Apply(ctxT(t), again)
	require.ErrorIs(t, err, ErrEarlierAttemptFailed, "its retry reports the first outcome")

	// Every server remembers the same IDs, snapshots included, so a retry
	// reaching a new leader is deduplicated there too.
	require.NoError(t, leader.store.Snapshot())
	st := c.waitConverged()
	require.Len(t, st.Writes, 2)
	follower := c.follower()
	c.stop(leader)
	newLeader := c.waitLeader()
	require.Equal(t, follower.store.State().Writes, newLeader.store.State().Writes)
	_, err = newLeader.store.Apply(ctxT(t), once)
	require.NoError(t, err)
	require.Equal(t, 1, newLeader.store.State().Breaker("n1", "m").Trips)
}

func TestRememberedWritesAreBounded(t *testing.T) {
	st := newState()
	for i := range MaxRememberedWrites + 10 {
		st.rememberWrite(WriteRecord{ID: fmt.Sprintf("w%d", i)})
	}
	require.Len(t, st.Writes, MaxRememberedWrites)
	_, ok := st.seenWrite("w0")
	require.False(t, ok, "the oldest is forgotten")
	_, ok = st.seenWrite(fmt.Sprintf("w%d", MaxRememberedWrites+9))
	require.True(t, ok)
}

func TestOnceValidates(t *testing.T) {
	require.ErrorIs(t, Once{ID: "", Entry: mustEncode(t, openBreaker(1))}.Validate(), ErrInvalidCommand)
	require.ErrorIs(t, Once{ID: "x", Entry: []byte{0xff}}.Validate(), ErrInvalidCommand)
	inner, err := NewOnce("a", openBreaker(1))
	require.NoError(t, err)
	require.ErrorIs(t, Once{ID: "b", Entry: mustEncode(t, inner)}.Validate(), ErrInvalidCommand, "no nesting")
	require.ErrorIs(t, SetClusterSecret{Secret: []byte("short")}.Validate(), ErrInvalidCommand)
}

func TestClusterSecretIsSetOnce(t *testing.T) {
	c := mustNewCluster(t, 1)
	leader := c.waitLeader()
	first, second := make([]byte, ClusterSecretLen), make([]byte, ClusterSecretLen)
	first[0], second[0] = 1, 2
	_, err := leader.store.Apply(ctxT(t), SetClusterSecret{Secret: first})
	require.NoError(t, err)
	_, err = leader.store.Apply(ctxT(t), SetClusterSecret{Secret: second})
	require.NoError(t, err)
	require.Equal(t, first, leader.store.State().ClusterSecret)
}
