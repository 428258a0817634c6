package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/internal/fakeclock"
)

// The node passes its *dcache.Cache as the counter.
var _ Counter = (*dcache.Cache)(nil)

// Generous bounds: the suite must not flake on a loaded 2-core machine.
const (
	waitTimeout = 30 * time.Second
	waitTick    = 5 * time.Millisecond
)

// testLogger discards unless RATELIMIT_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("RATELIMIT_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fakeClock is a settable clock for windows and idleness.
type fakeClock = fakeclock.Clock

func newFakeClock() *fakeClock {
	return fakeclock.New(time.Date(2030, 1, 1, 10, 0, 0, 0, time.UTC))
}

// localCache is a real dcache with the in-process backend. Limiters sharing one stand for
// nodes sharing a counter.
func localCache(t testing.TB) *dcache.Cache {
	t.Helper()
	c, err := dcache.New(dcache.Config{Backend: dcache.BackendLocal})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// newLimiter builds a limiter and closes it at cleanup.
func newLimiter(t testing.TB, cfg Config) *Limiter {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	l, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := l.Close(ctx); err != nil && !errors.Is(err, ErrClosed) {
			t.Logf("close limiter: %v", err)
		}
	})
	return l
}

// nodes returns a Nodes func for a fixed cluster size.
func nodes(n int) func() int { return func() int { return n } }

// counterValue reads rule's shared counter for the window at now. It takes
// require.TestingT so EventuallyWithT conditions can pass their CollectT: a
// failure then ends that tick, not the test from the wrong goroutine.
func counterValue(t require.TestingT, c Counter, rule Rule, now time.Time) int {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	require.True(t, rule.normalize())
	v, err := c.Incr(context.Background(), DefaultNamespace, counterKey(rule.id(), windowIndex(now, rule.Window)), 0, time.Hour)
	require.NoError(t, err)
	return v
}

// admitN calls Allow n times and returns how many were allowed.
func admitN(l *Limiter, n int, rules ...Rule) int {
	ok := 0
	for range n {
		if l.Allow(context.Background(), rules).Allowed {
			ok++
		}
	}
	return ok
}

// admitAll calls Allow until it denies and returns how many were allowed.
func admitAll(t testing.TB, l *Limiter, rules ...Rule) int {
	t.Helper()
	for n := 0; ; n++ {
		if !l.Allow(context.Background(), rules).Allowed {
			return n
		}
		require.Less(t, n, 1_000_000, "never denied")
	}
}

// flakyCounter is a failure injector around a real counter: while failing, every call fails
// as an unreachable Olric does.
type flakyCounter struct {
	c       Counter
	failing atomic.Bool
	calls   atomic.Int64
}

func (f *flakyCounter) Incr(ctx context.Context, ns, key string, delta int, ttl time.Duration) (int, error) {
	f.calls.Add(1)
	if f.failing.Load() {
		return 0, fmt.Errorf("injected: %w", dcache.ErrUnavailable)
	}
	return f.c.Incr(ctx, ns, key, delta, ttl)
}

// startOlric starts n olric members on loopback at once, each with the others' memberlist
// addresses as peers (as shoal nodes boot), and waits until they form one cluster whose
// members all send a counter's increments to the same owner.
func startOlric(t testing.TB, n int) []*dcache.Cache {
	t.Helper()
	caches := make([]*dcache.Cache, n)
	addrs := make([]string, n)
	// Olric v0.7.2 keeps a process-wide start checkpoint that a starting
	// member's poller reads without atomics while another member's New adds
	// to it (internal/checkpoint): only several members in one process meet
	// it, never a node. Under the race detector they start one after
	// another, each joining the ones before it.
	oneByOne := raceDetector
	for i := range n {
		c, err := dcache.New(dcache.Config{
			Backend:        dcache.BackendOlric,
			BindAddr:       "127.0.0.1:0",
			MemberlistAddr: "127.0.0.1:0",
			Network:        "local",
			PartitionCount: 23,
			WaitForPeers:   n > 1 && !(oneByOne && i == 0),
			Peers: func() []string {
				if oneByOne {
					return addrs[:i]
				}
				return without(addrs, i)
			},
			JoinTimeout:  10 * time.Second,
			StartTimeout: waitTimeout,
			MaxBytes:     64 << 20,
			// Loose call bounds, as dcache's own tests use: on a loaded 2-core machine a
			// loopback Incr can exceed the 250ms default, and a call that times out but is
			// applied later strands its block (see DESIGN.md).
			LookupTimeout: 5 * time.Second,
			OpTimeout:     5 * time.Second,
			Logger:        testLogger(),
		})
		require.NoError(t, err)
		caches[i] = c
		addrs[i] = c.MemberlistAddr()
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, c := range caches {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				_ = c.Close(ctx)
			})
		}
		wg.Wait()
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range caches {
		if oneByOne {
			errs[i] = c.Start(ctx)
			continue
		}
		wg.Go(func() { errs[i] = c.Start(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "start member %d", i)
	}
	waitCounting(t, caches)
	return caches
}

func without(addrs []string, i int) []string {
	out := make([]string, 0, len(addrs))
	for j, a := range addrs {
		if j != i {
			out = append(out, a)
		}
	}
	return out
}

// waitCounting waits until every member sees all the others and increments of fresh counters
// from each member in turn land on one owner (each sees the one before it), for every probe key.
func waitCounting(t testing.TB, caches []*dcache.Cache) {
	t.Helper()
	round := 0
	require.Eventually(t, func() bool {
		for _, c := range caches {
			if c.Members() != len(caches) || c.Health().Status != dcache.StatusOK {
				return false
			}
		}
		round++
		for k := range 16 {
			key := fmt.Sprintf("probe-%d-%d", round, k)
			for i, c := range caches {
				v, err := c.Incr(context.Background(), "probe", key, 1, time.Minute)
				if err != nil || v != i+1 {
					return false
				}
			}
		}
		return true
	}, waitTimeout, 50*time.Millisecond, "olric cluster of %d did not settle", len(caches))
}
