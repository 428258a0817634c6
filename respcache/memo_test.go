package respcache

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/scheduler"
	"github.com/stretchr/testify/require"
)

func localStore(t *testing.T) (*Cache, *dcache.Cache) {
	t.Helper()
	return newLocal(t, Config{Settings: func() (time.Duration, bool) { return time.Minute, false }})
}

// newLocal returns a Cache over a started local store; cfg's Node and Store
// are filled in.
func newLocal(t *testing.T, cfg Config) (*Cache, *dcache.Cache) {
	t.Helper()
	dc, err := dcache.New(dcache.Config{Backend: dcache.BackendLocal})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, dc.Start(ctx))
	t.Cleanup(func() { _ = dc.Close(ctx) })
	cfg.Node, cfg.Store = "n1", dc
	return New(cfg), dc
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

// nearStore is localStore with a near cache of near, at the generation gen
// holds, storing answers for ttl.
func nearStore(t *testing.T, near, ttl time.Duration, gen *atomic.Uint64) (*Cache, *dcache.Cache) {
	t.Helper()
	return newLocal(t, Config{Near: near, Generation: gen.Load, Settings: func() (time.Duration, bool) { return ttl, false }})
}

// nearWithOne is nearStore with an hour's near period and TTL, holding
// "one" under (m, k), looked up once (from the store).
func nearWithOne(t *testing.T, gen *atomic.Uint64) (*Cache, *dcache.Cache) {
	t.Helper()
	c, dc := nearStore(t, time.Hour, time.Hour, gen)
	stored(t, c, dc, "m", "k", "one")
	require.Equal(t, "one", lookupText(c, "m", "k"))
	return c, dc
}

// stored stores results through c and waits until the store has them.
func stored(t *testing.T, c *Cache, dc *dcache.Cache, model, key, text string) {
	t.Helper()
	c.Store(model, key, []scheduler.Result{{Text: text}})
	require.Eventually(t, func() bool {
		_, ok, err := dc.Get(context.Background(), model, key)
		return err == nil && ok
	}, 5*time.Second, time.Millisecond)
}

func lookupText(c *Cache, model, key string) string {
	res, ok := c.Lookup(context.Background(), model, key)
	if !ok {
		return ""
	}
	return res[0].Text
}

// Within its near period a hit is answered from memory: what the store
// holds meanwhile is not asked. After it, the store decides again.
func TestNearAnswersFromMemoryForItsPeriod(t *testing.T) {
	var gen atomic.Uint64
	c, dc := nearWithOne(t, &gen)
	ctx := context.Background()
	require.Zero(t, c.NearHits(), "the first hit asks the store")
	hits := dc.Stats().Hits
	require.NoError(t, dc.Set(ctx, "m", "k", storedAnswer(t, "two"), time.Hour))
	for range 3 {
		require.Equal(t, "one", lookupText(c, "m", "k"))
	}
	require.Equal(t, int64(3), c.NearHits())
	require.Equal(t, hits, dc.Stats().Hits, "near hits do not reach the store")
	require.Empty(t, lookupText(c, "other", "k"), "another model's key is not near")

	short, dc2 := nearStore(t, 20*time.Millisecond, time.Hour, &gen)
	stored(t, short, dc2, "m", "k", "one")
	require.Equal(t, "one", lookupText(short, "m", "k"))
	require.NoError(t, dc2.Set(ctx, "m", "k", storedAnswer(t, "two"), time.Hour))
	require.Eventually(t, func() bool { return lookupText(short, "m", "k") == "two" }, 5*time.Second, time.Millisecond,
		"after its near period the store decides again")
}

// A near answer never outlives the stored answer's own TTL, and an answer
// stored without an expiry (by a node older than the near cache) is never
// near.
func TestNearNeverOutlivesTheAnswer(t *testing.T) {
	var gen atomic.Uint64
	c, dc := nearStore(t, time.Hour, 50*time.Millisecond, &gen)
	stored(t, c, dc, "m", "k", "one")
	require.Equal(t, "one", lookupText(c, "m", "k"))
	require.Eventually(t, func() bool { return lookupText(c, "m", "k") == "" }, 5*time.Second, time.Millisecond,
		"the answer expired in the store but not in the near cache")

	ctx := context.Background()
	near := c.NearHits()
	require.NoError(t, dc.Set(ctx, "m", "old", storedAnswer(t, "one"), time.Hour))
	require.Equal(t, "one", lookupText(c, "m", "old"))
	require.NoError(t, dc.Set(ctx, "m", "old", storedAnswer(t, "two"), time.Hour))
	require.Equal(t, "two", lookupText(c, "m", "old"), "an answer of unknown expiry was kept near")
	require.Equal(t, near, c.NearHits())
}

// A purge moves the cluster's cache generation on; near answers of an
// earlier generation are not used, and an answer read before the purge
// is not kept near afterwards.
func TestNearAnswersEndWithTheirGeneration(t *testing.T) {
	var gen atomic.Uint64
	c, dc := nearWithOne(t, &gen)
	ctx := context.Background()
	require.Equal(t, "one", lookupText(c, "m", "k"))
	require.Equal(t, int64(1), c.NearHits())

	require.NoError(t, dc.Purge(ctx, "m"))
	gen.Add(1)
	require.Empty(t, lookupText(c, "m", "k"), "a purged answer was answered near")
	stored(t, c, dc, "m", "k", "two")
	require.Equal(t, "two", lookupText(c, "m", "k"))
	require.Equal(t, "two", lookupText(c, "m", "k"))
	require.Equal(t, int64(2), c.NearHits(), "the new generation's answers are near again")

	// An answer read in generation 1 whose purge commits meanwhile stays
	// in generation 1: it is not near in generation 2.
	c.memo.decode("m", "late", storedAnswerExpiring(t, "old", time.Hour), c.nearStamp(time.Now()))
	gen.Add(1)
	_, ok := c.memo.fresh("m", "late", time.Now().UnixNano(), gen.Load())
	require.False(t, ok)
}

func storedAnswerExpiring(t *testing.T, text string, ttl time.Duration) []byte {
	t.Helper()
	data, err := json.Marshal(answer{Results: []scheduler.Result{{Text: text}}, Node: "n1", Expires: time.Now().Add(ttl).UnixNano()})
	require.NoError(t, err)
	return data
}
