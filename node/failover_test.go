package node

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAdminWriteDuringFailoverWaitsForNewLeader stops the leader and at once sends an admin
// write to each survivor, before they have noticed: the write must wait out the election and
// succeed, not fail because the old leader is gone or no leader is known yet.
func TestAdminWriteDuringFailoverWaitsForNewLeader(t *testing.T) {
	tc := mustNewCluster(t, 3, withAdminToken)
	tc.waitMembers(tc.nodes...)
	leader := tc.node(tc.waitLeader(tc.nodes...))
	stopNode(leader)
	size := 10
	for _, nd := range tc.nodes {
		if nd == leader {
			continue
		}
		res := doJSON(t, http.MethodPut, "http://"+nd.HTTPAddr()+"/admin/v1/batching", testToken,
			map[string]any{"model": "sim-fast", "max_size": size})
		require.Equal(t, http.StatusOK, res.status, "write through %s: %s", nd.Name(), res.body)
		size++
	}
}
