package respcache

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/scheduler"
	"github.com/stretchr/testify/require"
)

func localCache(t *testing.T) *Cache {
	t.Helper()
	c, _ := localStore(t)
	return c
}

func TestStoredAnswerIsFound(t *testing.T) {
	c := localCache(t)
	ctx := context.Background()
	_, ok := c.Lookup(ctx, "m", "k")
	require.False(t, ok)
	stored := make(chan struct{})
	c.storeAsync("m", "k", []scheduler.Result{{Text: "hi"}}, func() { close(stored) })
	<-stored
	got, ok := c.Lookup(ctx, "m", "k")
	require.True(t, ok)
	require.Equal(t, "hi", got[0].Text)
}

func TestIdenticalRequestsRunOnce(t *testing.T) {
	c := localCache(t)
	var runs atomic.Int32
	release := make(chan struct{})
	compute := func(context.Context) ([]scheduler.Result, error) {
		runs.Add(1)
		<-release
		return []scheduler.Result{{Text: "x"}}, nil
	}
	const callers = 8
	var wg sync.WaitGroup
	results := make(chan []scheduler.Result, callers)
	for range callers {
		wg.Go(func() {
			res, err := c.Coalesce(context.Background(), "m", "k", true, compute)
			if err == nil {
				results <- res
			}
		})
	}
	require.Eventually(t, func() bool {
		c.flights.mu.Lock()
		defer c.flights.mu.Unlock()
		f := c.flights.calls["k"]
		return f != nil && f.waiters == callers
	}, 10*time.Second, time.Millisecond)
	close(release)
	wg.Wait()
	close(results)
	require.Len(t, results, callers)
	require.EqualValues(t, 1, runs.Load())
}

func TestRunIsCancelledWhenEveryCallerLeaves(t *testing.T) {
	c := localCache(t)
	stopped := make(chan error, 1)
	compute := func(ctx context.Context) ([]scheduler.Result, error) {
		<-ctx.Done()
		stopped <- ctx.Err()
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Coalesce(ctx, "m", "k", true, compute)
		done <- err
	}()
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.ErrorIs(t, <-stopped, context.Canceled)
}

// A caller with a short deadline that started the run leaves at its
// deadline; a caller with a longer one still gets the shared answer.
func TestEachCallerKeepsItsOwnDeadline(t *testing.T) {
	c := localCache(t)
	release := make(chan struct{})
	var runs atomic.Int32
	compute := func(ctx context.Context) ([]scheduler.Result, error) {
		runs.Add(1)
		select {
		case <-release:
			return []scheduler.Result{{Text: "x"}}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	shortErr := make(chan error, 1)
	go func() {
		_, err := c.Coalesce(short, "m", "k", true, compute)
		shortErr <- err
	}()
	require.Eventually(t, func() bool { return runs.Load() == 1 }, 10*time.Second, time.Millisecond)
	long, cancelLong := context.WithTimeout(context.Background(), time.Minute)
	defer cancelLong()
	longRes := make(chan []scheduler.Result, 1)
	go func() {
		res, err := c.Coalesce(long, "m", "k", true, compute)
		if err != nil {
			t.Errorf("the long caller failed: %v", err)
		}
		longRes <- res
	}()
	require.Eventually(t, func() bool {
		c.flights.mu.Lock()
		defer c.flights.mu.Unlock()
		f := c.flights.calls["k"]
		return f != nil && f.waiters == 2
	}, 10*time.Second, time.Millisecond)
	require.ErrorIs(t, <-shortErr, context.DeadlineExceeded)
	close(release)
	require.Equal(t, "x", (<-longRes)[0].Text)
	require.EqualValues(t, 1, runs.Load(), "the long caller ran the model again")
}

// Once every caller has left, the next identical request starts afresh
// instead of joining the run being cancelled.
func TestCallerAfterEveryoneLeftStartsAFreshRun(t *testing.T) {
	c := localCache(t)
	var runs atomic.Int32
	hold := make(chan struct{})
	defer close(hold)
	slow := func(ctx context.Context) ([]scheduler.Result, error) {
		runs.Add(1)
		<-hold // ignores cancellation for a while, as a busy backend may
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() {
		_, err := c.Coalesce(ctx, "m", "k", true, slow)
		left <- err
	}()
	require.Eventually(t, func() bool { return runs.Load() == 1 }, 10*time.Second, time.Millisecond)
	cancel()
	require.ErrorIs(t, <-left, context.Canceled)
	// Bounded, so joining the stuck run fails the test instead of hanging.
	again, cancelAgain := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelAgain()
	res, err := c.Coalesce(again, "m", "k", true, func(context.Context) ([]scheduler.Result, error) {
		return []scheduler.Result{{Text: "fresh"}}, nil
	})
	require.NoError(t, err)
	require.Equal(t, "fresh", res[0].Text)
}

// sharedStore is a real local store that reports itself shared or alone as
// the test says, and counts the locks taken through it.
type sharedStore struct {
	*dcache.Cache
	alone bool
	holds atomic.Int32
}

func (s *sharedStore) Alone() bool { return s.alone }

func (s *sharedStore) Hold(ctx context.Context, ns, key string, lease time.Duration) (*dcache.Held, error) {
	s.holds.Add(1)
	return s.Cache.Hold(ctx, ns, key, lease)
}

// A miss takes the cross-node lock only when another node shares the store:
// a node alone coalesces its own callers and needs none (a lock, its
// release and a second lookup per miss on Olric).
func TestCrossNodeLockOnlyWhenTheStoreIsShared(t *testing.T) {
	for _, alone := range []bool{true, false} {
		t.Run(map[bool]string{true: "alone", false: "shared"}[alone], func(t *testing.T) {
			_, dc := localStore(t)
			st := &sharedStore{Cache: dc, alone: alone}
			c := New(Config{Node: "n1", Store: st, Settings: func() (time.Duration, bool) { return time.Minute, false }})
			res, err := c.Coalesce(context.Background(), "m", "k", true, func(context.Context) ([]scheduler.Result, error) {
				return []scheduler.Result{{Text: "x"}}, nil
			})
			require.NoError(t, err)
			require.Equal(t, "x", res[0].Text)
			want := int32(1)
			if alone {
				want = 0
			}
			require.Equal(t, want, st.holds.Load())
		})
	}
}
