package node

import (
	"testing"
	"time"

	"github.com/shoal-dev/shoal/gossip"
	"github.com/stretchr/testify/require"
)

// A failed purge names the members that may have failed it, and not the
// ones gossip keeps listed for days after they died or left.
func TestUnwellNamesOnlyMembersThatMayHaveFailedAPurge(t *testing.T) {
	now := time.Now()
	members := []gossip.Member{
		{Name: "self", State: gossip.StateSuspect, StateChanged: now},
		{Name: "n1", State: gossip.StateAlive, StateChanged: now},
		{Name: "n2", State: gossip.StateSuspect, StateChanged: now.Add(-time.Hour)},
		{Name: "n3", State: gossip.StateDead, StateChanged: now.Add(-5 * time.Second)},
		{Name: "n4", State: gossip.StateDead, StateChanged: now.Add(-2 * time.Hour)},
		{Name: "n5", State: gossip.StateLeft, StateChanged: now},
	}
	require.Equal(t, " (not alive in gossip: n2 suspect, n3 dead)", unwell(members, "self", now))
	require.Equal(t, "", unwell(members[:2], "self", now))
	require.Equal(t, "", unwell([]gossip.Member{members[4], members[5]}, "self", now))
}
