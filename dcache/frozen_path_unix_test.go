//go:build unix

package dcache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// requestPath runs what a node does with the cache for one cacheable request that misses:
// look up, take the cross-node lock, look up again, store off the path, release. It returns
// the time spent in cache calls the request waits on.
func requestPath(ctx context.Context, c *Cache, key string) time.Duration {
	start := time.Now()
	_, _, _ = c.Get(ctx, "m", key)
	unlock, err := c.Lock(ctx, "m", "lock:"+key, 5*time.Second)
	if err == nil {
		_, _, _ = c.Get(ctx, "m", key)
	}
	_ = c.SetAsync("m", key, []byte("answer"), time.Minute, nil)
	if unlock != nil {
		_ = unlock(ctx)
	}
	return time.Since(start)
}

// frozenPeerPair starts a member in a child process, then a member here that joins it, and
// waits until both route by the same table. The local member's bounds are a node's: lookups
// 100ms, other calls 1s.
func frozenPeerPair(tb testing.TB) (*Cache, func(syscall.Signal)) {
	// The helper starts first, so it is the coordinator and this process never runs Olric's
	// racy routing-table push with two members (see skipUnderRaceWithClusteredOlric).
	child, childAddr := startHelperMember(tb)
	var peers atomic.Pointer[[]string]
	peers.Store(&[]string{childAddr})
	cfg := olricTestConfig()
	cfg.Peers = func() []string { return *peers.Load() }
	cfg.LookupTimeout = 100 * time.Millisecond
	cfg.OpTimeout = time.Second
	c, err := New(cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { closeAll(tb, []*Cache{c}) })
	require.NoError(tb, c.Start(context.Background()))
	waitSettled(tb, 2, c)
	return c, func(sig syscall.Signal) { require.NoError(tb, child.Process.Signal(sig)) }
}

// TestOlricFrozenPeerBoundsRequestPath freezes the process of the member that owns part of the
// keys and runs a node's request path against the healthy member: no cache call a request
// waits on may take longer than LookupTimeout (plus scheduling slack), the cross-node lock and
// its release included, and the store never waits at all.
func TestOlricFrozenPeerBoundsRequestPath(t *testing.T) {
	c, signal := frozenPeerPair(t)
	ctx := context.Background()
	for i := range 32 {
		requestPath(ctx, c, fmt.Sprint("warm", i))
	}

	signal(syscall.SIGSTOP)
	defer signal(syscall.SIGCONT)
	var slowest time.Duration
	for round := range 3 {
		for i := range 32 {
			slowest = max(slowest, requestPath(ctx, c, fmt.Sprint("key", round, i)))
		}
	}
	// A request pays at most three bounded calls (100ms each) for a key on the frozen peer;
	// before the fix the lock alone waited OpTimeout (1s), and the store on the path too.
	require.Less(t, slowest, 700*time.Millisecond, "a request waited on the frozen peer")
	st := c.Stats()
	require.Positive(t, st.Timeouts, "no key was owned by the frozen peer")
	require.Positive(t, st.FastFails, "calls kept waiting on an owner known to be unresponsive")
}

// BenchmarkRequestPathFrozenPeer measures a node's cache calls per request (lookup, lock,
// lookup, queued store, release) against a healthy member while its only peer runs and while
// that peer is frozen (SIGSTOP). Reported per request: p50 and p99 in ms.
//
//	go test ./dcache -run '^$' -bench RequestPathFrozenPeer -benchtime 3000x
func BenchmarkRequestPathFrozenPeer(b *testing.B) {
	c, signal := frozenPeerPair(b)
	ctx := context.Background()
	run := func(b *testing.B) {
		took := make([]time.Duration, 0, b.N)
		for b.Loop() {
			took = append(took, requestPath(ctx, c, fmt.Sprint("key", rand.IntN(1<<30))))
		}
		slices.Sort(took)
		b.ReportMetric(ms(took[len(took)/2]), "p50_ms")
		b.ReportMetric(ms(took[len(took)*99/100]), "p99_ms")
		b.ReportMetric(ms(took[len(took)-1]), "max_ms")
	}
	b.Run("peer_running", run)
	signal(syscall.SIGSTOP)
	b.Run("peer_frozen", run)
	signal(syscall.SIGCONT)
	st := c.Stats()
	b.Logf("timeouts %d fast_fails %d dropped %d", st.Timeouts, st.FastFails, st.Dropped)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
