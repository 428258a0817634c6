package respcache

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/scheduler"
	"github.com/stretchr/testify/require"
)

func localStore(t *testing.T) (*Cache, *dcache.Cache) {
	t.Helper()
	dc, err := dcache.New(dcache.Config{Backend: dcache.BackendLocal})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, dc.Start(ctx))
	t.Cleanup(func() { _ = dc.Close(ctx) })
	return New(Config{Node: "n1", Store: dc, Settings: func() (time.Duration, bool) { return time.Minute, false }}), dc
}

func storedAnswer(t *testing.T, text string) []byte {
	t.Helper()
	data, err := json.Marshal(answer{Results: []scheduler.Result{{Text: text, FinishReason: "stop", PromptTokens: 3, CompletionTokens: 2}}, Node: "n1"})
	require.NoError(t, err)
	return data
}

// The memo saves decodes only: what the store answers (a replaced value,
// a deleted or purged one, another model's) is what a lookup returns.
func TestMemoFollowsTheStore(t *testing.T) {
	c, dc := localStore(t)
	ctx := context.Background()
	require.NoError(t, dc.Set(ctx, "m", "k", storedAnswer(t, "one"), time.Minute))
	for range 2 {
		got, ok := c.Lookup(ctx, "m", "k")
		require.True(t, ok)
		require.Equal(t, []scheduler.Result{{Text: "one", FinishReason: "stop", PromptTokens: 3, CompletionTokens: 2}}, got)
	}
	first, _ := c.Lookup(ctx, "m", "k")
	again, _ := c.Lookup(ctx, "m", "k")
	require.Same(t, &first[0], &again[0], "equal stored bytes are decoded once")
	require.Equal(t, len(first), cap(first), "an append must not write into the shared results")

	require.NoError(t, dc.Set(ctx, "m", "k", storedAnswer(t, "two"), time.Minute))
	got, ok := c.Lookup(ctx, "m", "k")
	require.True(t, ok)
	require.Equal(t, "two", got[0].Text)

	_, ok = c.Lookup(ctx, "other", "k")
	require.False(t, ok, "another model's namespace")
	require.NoError(t, dc.Set(ctx, "other", "k", storedAnswer(t, "three"), time.Minute))
	got, ok = c.Lookup(ctx, "other", "k")
	require.True(t, ok)
	require.Equal(t, "three", got[0].Text)
	got, ok = c.Lookup(ctx, "m", "k")
	require.True(t, ok)
	require.Equal(t, "two", got[0].Text)

	require.NoError(t, dc.Delete(ctx, "m", "k"))
	_, ok = c.Lookup(ctx, "m", "k")
	require.False(t, ok)
	require.NoError(t, dc.Set(ctx, "m", "k", storedAnswer(t, "four"), time.Minute))
	require.NoError(t, dc.Purge(ctx, "m"))
	_, ok = c.Lookup(ctx, "m", "k")
	require.False(t, ok)

	require.NoError(t, dc.Set(ctx, "m", "k", []byte("not json"), time.Minute))
	_, ok = c.Lookup(ctx, "m", "k")
	require.False(t, ok, "bytes that do not decode are a miss")
}

// Answers over memoMaxBytes are decoded every time, so the memo stays small.
func TestMemoSkipsLargeAnswers(t *testing.T) {
	c, dc := localStore(t)
	ctx := context.Background()
	big := make([]byte, memoMaxBytes)
	for i := range big {
		big[i] = 'a'
	}
	require.NoError(t, dc.Set(ctx, "m", "k", storedAnswer(t, string(big)), time.Minute))
	first, ok := c.Lookup(ctx, "m", "k")
	require.True(t, ok)
	again, ok := c.Lookup(ctx, "m", "k")
	require.True(t, ok)
	require.Equal(t, first, again)
	require.NotSame(t, &first[0], &again[0])
	require.Nil(t, c.memo.slot("k").Load())
}

// Concurrent hits on colliding keys while the values change; run under
// -race.
func TestMemoConcurrentLookups(t *testing.T) {
	c, dc := localStore(t)
	ctx := context.Background()
	// More keys than slots, so some share one.
	const keys = memoSlots + 64
	values := make([][]byte, keys)
	for i := range keys {
		values[i] = storedAnswer(t, fmt.Sprint(i))
		require.NoError(t, dc.Set(ctx, "m", fmt.Sprint(i), values[i], time.Minute))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			for i := range keys {
				k := fmt.Sprint((i*7 + g) % keys)
				got, ok := c.Lookup(ctx, "m", k)
				if !ok || got[0].Text != k {
					errs <- fmt.Errorf("key %s: got %v, %v", k, got, ok)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range keys {
			k := fmt.Sprint(i)
			// Equal bytes in a new slice: the memo compares contents.
			if err := dc.Set(ctx, "m", k, append([]byte(nil), values[i]...), time.Minute); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}
