package ratelimit

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// lockedBuffer is a log sink safe for the sweeper's goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// Counters that other nodes do not see make every limit per node; with several nodes that
// multiplies each limit, and the limiter says so in a warning and in its stats.
func TestLocalCounterInAClusterIsReportedPerNode(t *testing.T) {
	var logs lockedBuffer
	size := 1
	var mu sync.Mutex
	l := newLimiter(t, Config{Counter: localCache(t), Nodes: func() int { mu.Lock(); defer mu.Unlock(); return size },
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	st := l.Stats()
	require.Equal(t, ScopeNode, st.Scope)
	require.Equal(t, "per-node (cache backend local)", st.ScopeDetail)
	require.False(t, st.PerNodeCluster, "one node: nothing is multiplied")
	require.NotContains(t, logs.String(), "level=WARN")

	mu.Lock()
	size = 3
	mu.Unlock()
	require.True(t, l.Stats().PerNodeCluster)
	require.Eventually(t, func() bool {
		return bytes.Contains([]byte(logs.String()), []byte("level=WARN msg=\"rate limits are per node"))
	},
		waitTimeout, waitTick, "the sweeper warns once the cluster grows")
}

func TestSharedCounterIsClusterScope(t *testing.T) {
	var logs lockedBuffer
	l := newLimiter(t, Config{Counter: startOlric(t, 1)[0], Nodes: nodes(3), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	st := l.Stats()
	require.Equal(t, ScopeCluster, st.Scope)
	require.Empty(t, st.ScopeDetail)
	require.False(t, st.PerNodeCluster)
	require.NotContains(t, logs.String(), "per node")
}
