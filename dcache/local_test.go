package dcache

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/internal/fakeclock"
)

// fakeClock drives the local backend's expiry without sleeping.
type fakeClock = fakeclock.Clock

func newLocal(t *testing.T, maxBytes int64) (*Cache, *fakeClock) {
	t.Helper()
	c, err := New(Config{Backend: BackendLocal, MaxBytes: maxBytes, MaxValueBytes: int(min(maxBytes, 1<<20))})
	require.NoError(t, err)
	clock := fakeclock.New(time.Unix(1_700_000_000, 0))
	c.st.(*localStore).now = clock.Now
	t.Cleanup(func() { require.NoError(t, c.Close(context.Background())) })
	return c, clock
}

func mustGet(t *testing.T, c *Cache, ns, key string) ([]byte, bool) {
	t.Helper()
	v, ok, err := c.Get(context.Background(), ns, key)
	require.NoError(t, err)
	return v, ok
}

func TestLocalSetThenGet(t *testing.T) {
	c, _ := newLocal(t, 1<<20)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "m", "k", []byte("v"), 0))
	v, ok := mustGet(t, c, "m", "k")
	require.True(t, ok)
	require.Equal(t, []byte("v"), v)
	_, ok = mustGet(t, c, "other", "k")
	require.False(t, ok)
}

func TestLocalValuesAreCopies(t *testing.T) {
	c, _ := newLocal(t, 1<<20)
	ctx := context.Background()
	in := []byte("original")
	require.NoError(t, c.Set(ctx, "m", "k", in, 0))
	in[0] = 'X'
	out, _ := mustGet(t, c, "m", "k")
	out[1] = 'Y'
	again, _ := mustGet(t, c, "m", "k")
	require.Equal(t, []byte("original"), again)
}

func TestLocalEvictsLeastRecentlyUsedByBytes(t *testing.T) {
	// Room for exactly three 1000-byte entries with their overhead.
	per := int64(1000 + len("m") + len("k0") + entryOverhead)
	c, _ := newLocal(t, 3*per)
	ctx := context.Background()
	val := make([]byte, 1000)
	for i := range 3 {
		require.NoError(t, c.Set(ctx, "m", fmt.Sprint("k", i), val, 0))
	}
	require.EqualValues(t, 3*per, c.Stats().Bytes)
	_, ok := mustGet(t, c, "m", "k0") // k0 becomes the most recent; k1 is now the oldest
	require.True(t, ok)
	require.NoError(t, c.Set(ctx, "m", "k3", val, 0))

	_, ok = mustGet(t, c, "m", "k1")
	require.False(t, ok, "the least recently used entry is evicted")
	for _, k := range []string{"k0", "k2", "k3"} {
		_, ok = mustGet(t, c, "m", k)
		require.True(t, ok, k)
	}
	st := c.Stats()
	require.EqualValues(t, 3, st.Entries)
	require.LessOrEqual(t, st.Bytes, 3*per)
}

func TestLocalLargeValueEvictsSeveral(t *testing.T) {
	c, _ := newLocal(t, 10_000)
	ctx := context.Background()
	for i := range 5 {
		require.NoError(t, c.Set(ctx, "m", fmt.Sprint("small", i), make([]byte, 1000), 0))
	}
	require.NoError(t, c.Set(ctx, "m", "big", make([]byte, 6000), 0))
	st := c.Stats()
	require.LessOrEqual(t, st.Bytes, int64(10_000))
	_, ok := mustGet(t, c, "m", "big")
	require.True(t, ok)
	_, ok = mustGet(t, c, "m", "small0")
	require.False(t, ok)
}

func TestLocalOverwriteReplacesSize(t *testing.T) {
	c, _ := newLocal(t, 1<<20)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "m", "k", make([]byte, 5000), 0))
	require.NoError(t, c.Set(ctx, "m", "k", make([]byte, 10), 0))
	st := c.Stats()
	require.EqualValues(t, 1, st.Entries)
	require.EqualValues(t, 10+len("m")+len("k")+entryOverhead, st.Bytes)
}

func TestLocalTTLExpires(t *testing.T) {
	c, clock := newLocal(t, 1<<20)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "m", "short", []byte("v"), time.Second))
	require.NoError(t, c.Set(ctx, "m", "forever", []byte("v"), 0))
	clock.Advance(999 * time.Millisecond)
	_, ok := mustGet(t, c, "m", "short")
	require.True(t, ok)
	clock.Advance(time.Millisecond)
	_, ok = mustGet(t, c, "m", "short")
	require.False(t, ok)
	clock.Advance(1000 * time.Hour)
	_, ok = mustGet(t, c, "m", "forever")
	require.True(t, ok)
	require.EqualValues(t, 1, c.Stats().Entries, "the expired entry's bytes are released")
}

func TestLocalDelete(t *testing.T) {
	c, _ := newLocal(t, 1<<20)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "m", "k", []byte("v"), 0))
	require.NoError(t, c.Delete(ctx, "m", "k"))
	require.NoError(t, c.Delete(ctx, "m", "k"))
	_, ok := mustGet(t, c, "m", "k")
	require.False(t, ok)
	require.Zero(t, c.Stats().Bytes)
}

func TestLocalPurge(t *testing.T) {
	tests := []struct {
		name      string
		purge     string
		remaining []string
	}{
		{name: "OneNamespace", purge: "a", remaining: []string{"b"}},
		{name: "AllNamespaces", purge: "", remaining: nil},
		{name: "UnknownNamespace", purge: "zzz", remaining: []string{"a", "b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newLocal(t, 1<<20)
			ctx := context.Background()
			for _, ns := range []string{"a", "b"} {
				for i := range 3 {
					require.NoError(t, c.Set(ctx, ns, fmt.Sprint(i), []byte(ns), 0))
				}
			}
			_, err := c.Incr(ctx, "a", "counter", 3, 0)
			require.NoError(t, err)
			require.NoError(t, c.Purge(ctx, tc.purge))
			for _, ns := range []string{"a", "b"} {
				_, ok := mustGet(t, c, ns, "1")
				require.Equal(t, contains(tc.remaining, ns), ok, ns)
			}
			require.EqualValues(t, 3*len(tc.remaining), c.Stats().Entries)
			n, err := c.Incr(ctx, "a", "counter", 0, 0)
			require.NoError(t, err)
			require.Equal(t, 3, n, "purge leaves counters alone")
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestLocalIncrCountsAndExpires(t *testing.T) {
	c, clock := newLocal(t, 1<<20)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		n, err := c.Incr(ctx, "rl", "k", 10, time.Minute)
		require.NoError(t, err)
		require.Equal(t, 10*i, n)
	}
	n, err := c.Incr(ctx, "rl", "k", -5, time.Minute)
	require.NoError(t, err)
	require.Equal(t, 25, n)
	clock.Advance(59 * time.Second)
	n, err = c.Incr(ctx, "rl", "k", 0, time.Minute)
	require.NoError(t, err)
	require.Equal(t, 25, n, "later increments do not extend the window")
	clock.Advance(time.Second)
	n, err = c.Incr(ctx, "rl", "k", 1, time.Minute)
	require.NoError(t, err)
	require.Equal(t, 1, n, "an expired counter starts over")
}

func TestLocalIncrIsAtomic(t *testing.T) {
	c, _ := newLocal(t, 1<<20)
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 250 {
				_, err := c.Incr(ctx, "rl", "k", 1, 0)
				assert.NoError(t, err) // not require: this is not the test's goroutine
			}
		})
	}
	wg.Wait()
	n, err := c.Incr(ctx, "rl", "k", 0, 0)
	require.NoError(t, err)
	require.Equal(t, 2000, n)
}

func TestLocalSweepDropsExpiredCounters(t *testing.T) {
	c, clock := newLocal(t, 1<<20)
	ctx := context.Background()
	// One operation short of a sweep; the next one, after the window passed, sweeps.
	for i := range sweepEvery - 1 {
		_, err := c.Incr(ctx, "rl", fmt.Sprint(i), 1, time.Second)
		require.NoError(t, err)
	}
	clock.Advance(2 * time.Second)
	_, err := c.Incr(ctx, "rl", "fresh", 1, time.Second)
	require.NoError(t, err)
	s := c.st.(*localStore)
	s.mu.Lock()
	defer s.mu.Unlock()
	require.Equal(t, 1, len(s.counters))
}

func TestLocalLock(t *testing.T) {
	c, clock := newLocal(t, 1<<20)
	ctx := context.Background()

	unlock, err := c.Lock(ctx, "co", "k", time.Second)
	require.NoError(t, err)
	_, err = c.Lock(ctx, "co", "k", time.Second)
	require.ErrorIs(t, err, ErrLocked)
	other, err := c.Lock(ctx, "co", "other", time.Second)
	require.NoError(t, err, "locks are per key")
	require.NoError(t, other(ctx))
	require.NoError(t, unlock(ctx))
	require.ErrorIs(t, unlock(ctx), ErrNotLocked, "a second unlock finds nothing")

	first, err := c.Lock(ctx, "co", "k", time.Second)
	require.NoError(t, err)
	clock.Advance(time.Second)
	second, err := c.Lock(ctx, "co", "k", time.Second)
	require.NoError(t, err, "an expired lease frees the lock")
	require.ErrorIs(t, first(ctx), ErrNotLocked, "the old holder cannot release the new holder's lock")
	_, err = c.Lock(ctx, "co", "k", time.Second)
	require.ErrorIs(t, err, ErrLocked)
	require.NoError(t, second(ctx))
}

func TestLocalRenewedLockOutlivesItsFirstLease(t *testing.T) {
	c, clock := newLocal(t, 1<<20)
	ctx := context.Background()
	h, err := c.Hold(ctx, "co", "k", time.Second)
	require.NoError(t, err)
	clock.Advance(900 * time.Millisecond)
	require.NoError(t, h.Renew(ctx, time.Second))
	clock.Advance(900 * time.Millisecond)
	_, err = c.Lock(ctx, "co", "k", time.Second)
	require.ErrorIs(t, err, ErrLocked, "the renewal did not extend the lease")
	clock.Advance(200 * time.Millisecond)
	require.ErrorIs(t, h.Renew(ctx, time.Second), ErrNotLocked, "a lapsed lease cannot be renewed")
	require.ErrorIs(t, h.Unlock(ctx), ErrNotLocked)
}

func TestLockRejectsNonPositiveLease(t *testing.T) {
	c, _ := newLocal(t, 1<<20)
	_, err := c.Lock(context.Background(), "co", "k", 0)
	require.Error(t, err)
}

func TestInvalidKeysAreRejected(t *testing.T) {
	c, _ := newLocal(t, 1<<20)
	ctx := context.Background()
	long := string(make([]byte, MaxKeyLen+1))
	for _, tc := range []struct{ name, ns, key string }{
		{"EmptyNamespace", "", "k"},
		{"EmptyKey", "m", ""},
		{"LongKey", "m", long},
		{"LongNamespace", string(make([]byte, MaxNamespaceLen+1)), "k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := c.Get(ctx, tc.ns, tc.key)
			require.ErrorIs(t, err, ErrInvalidKey)
			require.ErrorIs(t, c.Set(ctx, tc.ns, tc.key, nil, 0), ErrInvalidKey)
			_, err = c.Incr(ctx, tc.ns, tc.key, 1, 0)
			require.ErrorIs(t, err, ErrInvalidKey)
		})
	}
	require.Zero(t, c.Stats().Errors, "caller mistakes are not backend errors")
}

func TestSetRejectsOversizedValue(t *testing.T) {
	c, err := New(Config{Backend: BackendLocal, MaxValueBytes: 10})
	require.NoError(t, err)
	require.ErrorIs(t, c.Set(context.Background(), "m", "k", make([]byte, 11), 0), ErrTooLarge)
	require.NoError(t, c.Set(context.Background(), "m", "k", make([]byte, 10), 0))
}

func TestLocalStatsAndHealth(t *testing.T) {
	c, _ := newLocal(t, 1<<20)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "m", "k", []byte("v"), 0))
	mustGet(t, c, "m", "k")
	mustGet(t, c, "m", "nope")
	st := c.Stats()
	require.Equal(t, Stats{Backend: BackendLocal, Hits: 1, Misses: 1, Sets: 1, Entries: 1,
		Bytes: int64(1 + 1 + 1 + entryOverhead), Members: 1}, st)
	require.Equal(t, Health{Status: StatusOK, Members: 1}, c.Health())
}

func TestClosedCacheRefusesCalls(t *testing.T) {
	c, err := New(Config{Backend: BackendLocal})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, c.Close(ctx))
	require.NoError(t, c.Close(ctx), "Close is idempotent")
	_, _, err = c.Get(ctx, "m", "k")
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, c.Set(ctx, "m", "k", nil, 0), ErrClosed)
	require.ErrorIs(t, c.Purge(ctx, ""), ErrClosed)
	require.Equal(t, StatusDegraded, c.Health().Status)
}

func TestOffBackendDropsResponsesButCounts(t *testing.T) {
	c, err := New(Config{Backend: BackendOff})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, c.Start(ctx))
	require.NoError(t, c.Set(ctx, "m", "k", []byte("v"), time.Minute))
	_, ok, err := c.Get(ctx, "m", "k")
	require.NoError(t, err)
	require.False(t, ok)
	require.NoError(t, c.Purge(ctx, ""))
	n, err := c.Incr(ctx, "rl", "k", 2, time.Minute)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	unlock, err := c.Lock(ctx, "co", "k", time.Second)
	require.NoError(t, err)
	require.NoError(t, unlock(ctx))
	h := c.Health()
	require.Equal(t, StatusOff, h.Status)
	st := c.Stats()
	require.Zero(t, st.Hits)
	require.EqualValues(t, 1, st.Misses)
	require.Zero(t, st.Entries)
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{name: "ZeroIsLocal", cfg: Config{}, ok: true},
		{name: "UnknownBackend", cfg: Config{Backend: "redis"}},
		{name: "UnknownNetwork", cfg: Config{Network: "moon"}},
		{name: "BindAddrWithoutPort", cfg: Config{BindAddr: "127.0.0.1"}},
		{name: "BindAddrHostname", cfg: Config{BindAddr: "localhost:3320"}},
		{name: "BadMemberlistAddr", cfg: Config{MemberlistAddr: "x"}},
		{name: "NegativeTimeout", cfg: Config{LookupTimeout: -time.Second}},
		{name: "ValueOverBound", cfg: Config{MaxBytes: 10, MaxValueBytes: 11}},
		{name: "NegativeReplicas", cfg: Config{ReplicaCount: -1}},
		{name: "Explicit", cfg: Config{Backend: BackendOff, BindAddr: ":3320", MemberlistAddr: "10.0.0.1:4000"}, ok: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.resolve()
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := Config{Backend: BackendOlric}.resolve()
	require.NoError(t, err)
	require.Equal(t, "0.0.0.0:3320", cfg.BindAddr)
	require.Equal(t, "0.0.0.0:3322", cfg.MemberlistAddr)
	require.Equal(t, DefaultLookupTimeout, cfg.LookupTimeout)
	require.EqualValues(t, DefaultMaxBytes, cfg.MaxBytes)

	cfg, err = Config{BindAddr: "127.0.0.1:0"}.resolve()
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:0", cfg.MemberlistAddr, "a dynamic cache port gets a dynamic memberlist port")
}

func FuzzSplitHostPort(f *testing.F) {
	for _, s := range []string{"0.0.0.0:3320", ":0", "[::1]:3322", "localhost:1", "1.2.3.4:65534", "1.2.3.4:-1", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		host, port, err := splitHostPort(addr)
		if err != nil {
			return
		}
		if port < 0 || port > 65535-memberlistPortOffset {
			t.Fatalf("port %d accepted from %q", port, addr)
		}
		if net.ParseIP(host) == nil {
			t.Fatalf("host %q accepted from %q", host, addr)
		}
	})
}

// TestSetAsyncQueuesAndDropsWhenFull: SetAsync returns at once, writes in the background and
// reports each result to done; with its one writer busy and its one-slot queue taken, a write
// is dropped with ErrQueueFull and counted.
func TestSetAsyncQueuesAndDropsWhenFull(t *testing.T) {
	c, err := New(Config{Backend: BackendLocal, WriteQueue: 1, Writers: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })

	release := make(chan struct{})
	first := make(chan error, 1)
	require.NoError(t, c.SetAsync("m", "k1", []byte("v1"), time.Minute, func(err error) {
		first <- err
		<-release // holds the only writer
	}))
	require.NoError(t, <-first)
	require.NoError(t, c.SetAsync("m", "k2", []byte("v2"), time.Minute, nil))
	require.ErrorIs(t, c.SetAsync("m", "k3", []byte("v3"), time.Minute, nil), ErrQueueFull)
	st := c.Stats()
	require.Equal(t, int64(1), st.Dropped)
	require.Equal(t, 1, st.Queued)
	close(release)

	require.Eventually(t, func() bool {
		_, ok, err := c.Get(context.Background(), "m", "k2")
		return err == nil && ok
	}, waitTimeout, waitTick)
	_, ok, err := c.Get(context.Background(), "m", "k3")
	require.NoError(t, err)
	require.False(t, ok, "the dropped write landed")
	require.ErrorIs(t, c.SetAsync("m", "", []byte("v"), 0, nil), ErrInvalidKey)
}

// The local backend holds up to cache.max_bytes of answers (256 MiB by default): kept as a
// few heap objects and pointers per entry, every collection marked them all, and at 5,000
// req/s of unique answers a node spent 70-100 ms of its requests' CPU on mark assists each
// cycle (p99 +44 ms over the Olric backend). Each entry must cost the collector about one
// object, which holds no pointers.
func TestLocalEntriesHoldFewHeapObjects(t *testing.T) {
	c, _ := newLocal(t, 64<<20)
	ctx := context.Background()
	// Many entries, so that objects other goroutines leave alive meanwhile are noise.
	const n = 50_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%08d", i)
	}
	val := make([]byte, 200)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, k := range keys {
		require.NoError(t, c.Set(ctx, "m", k, val, 0))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(keys)
	require.EqualValues(t, n, c.Stats().Entries)
	perEntry := float64(int64(after.HeapObjects)-int64(before.HeapObjects)) / n
	require.Less(t, perEntry, 1.2, "each local entry holds %.2f heap objects", perEntry)
}

// refLRU is the local store's contract written the slow, obvious way: a slice in recency
// order (most recent first), bounded in the same bytes.
type refLRU struct {
	max     int64
	entries []refEntry
}

type refEntry struct {
	ns, key string
	val     []byte
	expires time.Time
}

func (r *refLRU) size(e refEntry) int64 {
	return int64(len(e.ns)+len(e.key)+len(e.val)) + entryOverhead
}

func (r *refLRU) bytes() (n int64) {
	for _, e := range r.entries {
		n += r.size(e)
	}
	return n
}

func (r *refLRU) find(ns, key string) int {
	for i, e := range r.entries {
		if e.ns == ns && e.key == key {
			return i
		}
	}
	return -1
}

func (r *refLRU) get(ns, key string, now time.Time) ([]byte, bool) {
	i := r.find(ns, key)
	if i < 0 {
		return nil, false
	}
	e := r.entries[i]
	r.entries = append(r.entries[:i], r.entries[i+1:]...)
	if expired(e.expires, now) {
		return nil, false
	}
	r.entries = append([]refEntry{e}, r.entries...)
	return e.val, true
}

func (r *refLRU) set(ns, key string, val []byte, ttl time.Duration, now time.Time) {
	if i := r.find(ns, key); i >= 0 {
		r.entries = append(r.entries[:i], r.entries[i+1:]...)
	}
	e := refEntry{ns: ns, key: key, val: val, expires: expiry(now, ttl)}
	if r.size(e) > r.max {
		return
	}
	for r.bytes()+r.size(e) > r.max {
		r.entries = r.entries[:len(r.entries)-1]
	}
	r.entries = append([]refEntry{e}, r.entries...)
}

func (r *refLRU) purge(ns string) {
	r.entries = slices.DeleteFunc(r.entries, func(e refEntry) bool { return ns == "" || e.ns == ns })
}

// The slot-based store answers every sequence of gets, sets, deletes, purges and expiries as
// the obvious LRU does, entry for entry and byte for byte.
func TestLocalMatchesReferenceLRU(t *testing.T) {
	for seed := range int64(20) {
		rng := rand.New(rand.NewPCG(uint64(seed), 0))
		c, clock := newLocal(t, 4000)
		ref := &refLRU{max: 4000}
		ctx := context.Background()
		for step := range 3000 {
			ns := []string{"a", "b", "ab"}[rng.IntN(3)]
			key := fmt.Sprint("k", rng.IntN(12))
			switch op := rng.IntN(20); {
			case op < 8:
				got, ok := mustGet(t, c, ns, key)
				want, wantOK := ref.get(ns, key, clock.Now())
				require.Equal(t, wantOK, ok, "seed %d step %d: get %s/%s", seed, step, ns, key)
				if ok {
					require.Equal(t, want, got, "seed %d step %d", seed, step)
				}
			case op < 16:
				val := bytes.Repeat([]byte{byte(step)}, rng.IntN(900))
				ttl := time.Duration(rng.IntN(3)) * time.Second
				require.NoError(t, c.Set(ctx, ns, key, val, ttl))
				ref.set(ns, key, val, ttl, clock.Now())
			case op < 17:
				require.NoError(t, c.Delete(ctx, ns, key))
				if i := ref.find(ns, key); i >= 0 {
					ref.entries = append(ref.entries[:i], ref.entries[i+1:]...)
				}
			case op < 18:
				if rng.IntN(4) == 0 {
					ns = ""
				}
				require.NoError(t, c.Purge(ctx, ns))
				ref.purge(ns)
			default:
				clock.Advance(time.Duration(rng.IntN(1500)) * time.Millisecond)
			}
			st := c.Stats()
			require.EqualValues(t, len(ref.entries), st.Entries, "seed %d step %d: entries", seed, step)
			require.Equal(t, ref.bytes(), st.Bytes, "seed %d step %d: bytes", seed, step)
		}
	}
}
