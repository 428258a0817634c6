package node

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
)

// lockedBuffer collects a node's logs from many goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A restarted node whose file changed rate_limit.rpm and auth.required
// says at start that the cluster's policy in Raft applies instead. No admin
// token: the configuration users run.
func TestFileLimitsDifferingFromRaftAreLoggedAtStart(t *testing.T) {
	tc := mustNewCluster(t, 1, func(_ int, cfg *Config) {
		cfg.Admin.Token = ""
		cfg.RateLimit.RPM = 100
	})
	nd := tc.nodes[0]
	require.Eventually(t, func() bool { return nd.Store().State().Limits != nil }, clusterWait, 10*time.Millisecond, "the file's limits were never seeded")
	require.Equal(t, 100, nd.Store().State().Limits.DefaultRPM)
	stopNode(nd)

	logs := &lockedBuffer{}
	tc.start(1, func(_ int, cfg *Config) {
		cfg.Admin.Token = ""
		cfg.RateLimit.RPM = 7
		cfg.Auth.Required = true
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out := logs.String()
		assert.Contains(c, out, "file_rpm=7 cluster_rpm=100")
		assert.Contains(c, out, "auth.required in the configuration differs")
	}, clusterWait, 20*time.Millisecond)
	require.Equal(t, 100, tc.nodes[0].Store().State().Limits.DefaultRPM, "the replicated policy wins")
	require.Equal(t, 1, strings.Count(logs.String(), "rate_limit.rpm in the configuration"), "said once")
}

// The breakers of a node that left the Raft configuration are dropped from
// the replicated state and the metrics.
func TestBreakersOfADepartedNodeAreDropped(t *testing.T) {
	tc := mustNewCluster(t, 3, func(_ int, cfg *Config) { cfg.Admin.Token = "" })
	leaderName := tc.waitLeader(tc.nodes...)
	leader := tc.node(leaderName)
	var leaving *Node
	for _, nd := range tc.nodes {
		if nd.Name() != leaderName {
			leaving = nd
			break
		}
	}
	now := time.Now()
	_, err := leader.Store().Apply(context.Background(), consensus.BreakerTransition{Node: leaving.Name(), Model: "sim-fast",
		From: consensus.BreakerClosed, To: consensus.BreakerOpen, At: now, OpenUntil: now.Add(time.Hour), Trips: 1, Force: true, Reason: "test"})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return strings.Contains(metricsText(t, leader), `inference_breaker_state{model="sim-fast",node="`+leaving.Name()+`"} 2`)
	}, clusterWait, 20*time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	require.NoError(t, leaving.Leave(ctx))
	require.Eventually(t, func() bool {
		_, ok := leader.Store().State().Breakers[consensus.BreakerKey(leaving.Name(), "sim-fast")]
		return !ok
	}, clusterWait, 20*time.Millisecond, "the departed node's breaker is still replicated")
	require.Eventually(t, func() bool {
		return !strings.Contains(metricsText(t, leader), `node="`+leaving.Name()+`"`)
	}, clusterWait, 20*time.Millisecond, "the departed node's breaker series is still exported")
}

// metricsText is the node's /metrics body, or "" when it cannot be read;
// it does not fail the test, so conditions may poll it.
func metricsText(t *testing.T, nd *Node) string {
	t.Helper()
	resp, err := http.Get("http://" + nd.HTTPAddr() + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return ""
	}
	return string(b)
}
