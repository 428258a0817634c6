package dcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/olric-data/olric"
	"github.com/olric-data/olric/config"
	"github.com/stretchr/testify/require"
)

// TestOlricSingleMember shares one member between its subtests: starting Olric is the slow part.
func TestOlricSingleMember(t *testing.T) {
	var logs syncBuffer
	c := startCluster(t, 1, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})[0]
	ctx := context.Background()

	t.Run("OlricLogsGoToSlog", func(t *testing.T) {
		require.Contains(t, logs.String(), "component=olric")
	})

	t.Run("StartedAloneAsOneMember", func(t *testing.T) {
		require.Equal(t, 1, c.Members())
		require.True(t, c.Alone(), "a lone member has nobody a lock would coordinate")
		require.Equal(t, StatusOK, c.Health().Status)
		require.NotEmpty(t, c.Addr())
		require.NotEmpty(t, c.MemberlistAddr())
	})

	t.Run("SetThenGet", func(t *testing.T) {
		require.NoError(t, c.Set(ctx, "m1", "k", []byte("answer"), time.Minute))
		v, ok, err := c.Get(ctx, "m1", "k")
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, []byte("answer"), v)
	})

	t.Run("MissingKeyIsAMiss", func(t *testing.T) {
		v, ok, err := c.Get(ctx, "m1", "absent")
		require.NoError(t, err)
		require.False(t, ok)
		require.Nil(t, v)
	})

	t.Run("NamespacesAreSeparate", func(t *testing.T) {
		require.NoError(t, c.Set(ctx, "a", "same", []byte("A"), 0))
		require.NoError(t, c.Set(ctx, "b", "same", []byte("B"), 0))
		v, _, err := c.Get(ctx, "a", "same")
		require.NoError(t, err)
		require.Equal(t, []byte("A"), v)
		v, _, err = c.Get(ctx, "b", "same")
		require.NoError(t, err)
		require.Equal(t, []byte("B"), v)
	})

	t.Run("TTLExpires", func(t *testing.T) {
		require.NoError(t, c.Set(ctx, "m1", "short", []byte("x"), 300*time.Millisecond))
		_, ok, err := c.Get(ctx, "m1", "short")
		require.NoError(t, err)
		require.True(t, ok)
		require.Eventually(t, func() bool {
			_, ok, err := c.Get(ctx, "m1", "short")
			return err == nil && !ok
		}, waitTimeout, waitTick)
	})

	t.Run("DeleteRemoves", func(t *testing.T) {
		require.NoError(t, c.Set(ctx, "m1", "del", []byte("x"), 0))
		require.NoError(t, c.Delete(ctx, "m1", "del"))
		_, ok, err := c.Get(ctx, "m1", "del")
		require.NoError(t, err)
		require.False(t, ok)
		require.NoError(t, c.Delete(ctx, "m1", "never-set"))
	})

	t.Run("PurgeNamespaceKeepsOthers", func(t *testing.T) {
		require.NoError(t, c.Set(ctx, "p1", "k", []byte("1"), 0))
		require.NoError(t, c.Set(ctx, "p2", "k", []byte("2"), 0))
		require.NoError(t, c.Purge(ctx, "p1"))
		_, ok, err := c.Get(ctx, "p1", "k")
		require.NoError(t, err)
		require.False(t, ok)
		_, ok, err = c.Get(ctx, "p2", "k")
		require.NoError(t, err)
		require.True(t, ok)
		// The namespace stays usable after its DMap was destroyed.
		require.NoError(t, c.Set(ctx, "p1", "k", []byte("again"), 0))
		v, _, err := c.Get(ctx, "p1", "k")
		require.NoError(t, err)
		require.Equal(t, []byte("again"), v)
	})

	t.Run("PurgeAllDropsEveryNamespaceButNotCounters", func(t *testing.T) {
		for i := range 5 {
			require.NoError(t, c.Set(ctx, fmt.Sprintf("all%d", i), "k", []byte("v"), 0))
		}
		n, err := c.Incr(ctx, "limits", "kept", 7, 0)
		require.NoError(t, err)
		require.Equal(t, 7, n)
		require.NoError(t, c.Purge(ctx, ""))
		for i := range 5 {
			_, ok, err := c.Get(ctx, fmt.Sprintf("all%d", i), "k")
			require.NoError(t, err)
			require.False(t, ok, "namespace all%d survived", i)
		}
		n, err = c.Incr(ctx, "limits", "kept", 0, 0)
		require.NoError(t, err)
		require.Equal(t, 7, n)
	})

	t.Run("IncrCounts", func(t *testing.T) {
		for i := 1; i <= 5; i++ {
			n, err := c.Incr(ctx, "rl", "client", 2, time.Minute)
			require.NoError(t, err)
			require.Equal(t, 2*i, n)
		}
		n, err := c.Incr(ctx, "rl", "client", -4, time.Minute)
		require.NoError(t, err)
		require.Equal(t, 6, n)
	})

	t.Run("IncrCounterExpires", func(t *testing.T) {
		n, err := c.Incr(ctx, "rl", "window", 5, 400*time.Millisecond)
		require.NoError(t, err)
		require.Equal(t, 5, n)
		n, err = c.Incr(ctx, "rl", "window", 1, 400*time.Millisecond)
		require.NoError(t, err)
		require.Equal(t, 6, n)
		require.Eventually(t, func() bool {
			n, err := c.Incr(ctx, "rl", "window", 0, 400*time.Millisecond)
			return err == nil && n == 0
		}, waitTimeout, waitTick)
	})

	t.Run("LockIsExclusiveUntilUnlocked", func(t *testing.T) {
		unlock, err := c.Lock(ctx, "coalesce", "key", 10*time.Second)
		require.NoError(t, err)
		_, err = c.Lock(ctx, "coalesce", "key", 10*time.Second)
		require.ErrorIs(t, err, ErrLocked)
		require.NoError(t, unlock(ctx))
		unlock, err = c.Lock(ctx, "coalesce", "key", 10*time.Second)
		require.NoError(t, err)
		require.NoError(t, unlock(ctx))
	})

	t.Run("LockLeaseRunsOut", func(t *testing.T) {
		unlock, err := c.Lock(ctx, "coalesce", "lease", 200*time.Millisecond)
		require.NoError(t, err)
		var again func(context.Context) error
		require.Eventually(t, func() bool {
			again, err = c.Lock(ctx, "coalesce", "lease", 10*time.Second)
			return err == nil
		}, waitTimeout, waitTick)
		require.ErrorIs(t, unlock(ctx), ErrNotLocked, "the first holder's lease ran out")
		require.NoError(t, again(ctx))
	})

	t.Run("RenewedLockOutlivesItsFirstLease", func(t *testing.T) {
		h, err := c.Hold(ctx, "coalesce", "renewed", 300*time.Millisecond)
		require.NoError(t, err)
		require.NoError(t, h.Renew(ctx, 10*time.Second))
		// Well past the first lease (checked by a later holder's own
		// short lease running out, not by sleeping).
		probe, err := c.Hold(ctx, "coalesce", "probe", 300*time.Millisecond)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return errors.Is(probe.Unlock(ctx), ErrNotLocked) }, waitTimeout, waitTick)
		_, err = c.Lock(ctx, "coalesce", "renewed", time.Second)
		require.ErrorIs(t, err, ErrLocked, "the renewed lease ran out with the first one")
		require.NoError(t, h.Unlock(ctx))
	})

	t.Run("StoresTheLargestValueUnderTheLongestKey", func(t *testing.T) {
		key := strings.Repeat("k", MaxKeyLen)
		val := bytes.Repeat([]byte{7}, DefaultMaxValueBytes)
		require.NoError(t, c.Set(ctx, "m1", key, val, 0))
		got, ok, err := c.Get(ctx, "m1", key)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, val, got)
		err = c.Set(ctx, "m1", "big", make([]byte, DefaultMaxValueBytes+1), 0)
		require.ErrorIs(t, err, ErrTooLarge)
	})

	t.Run("ConcurrentSetGet", func(t *testing.T) {
		var wg sync.WaitGroup
		var bad atomic.Int64
		for g := range 8 {
			wg.Go(func() {
				for i := range 50 {
					k := fmt.Sprintf("g%d-%d", g, i)
					if err := c.Set(ctx, "conc", k, []byte(k), time.Minute); err != nil {
						bad.Add(1)
						continue
					}
					v, ok, err := c.Get(ctx, "conc", k)
					if err != nil || !ok || string(v) != k {
						bad.Add(1)
					}
				}
			})
		}
		wg.Wait()
		require.Zero(t, bad.Load())
	})

	t.Run("StatsCount", func(t *testing.T) {
		st := c.Stats()
		require.Equal(t, BackendOlric, st.Backend)
		require.Positive(t, st.Hits)
		require.Positive(t, st.Misses)
		require.Positive(t, st.Sets)
		require.Positive(t, st.Incrs)
		require.Zero(t, st.Errors)
		require.Equal(t, 1, st.Members)
	})
}

func TestOlricNewFailsWhenCacheAddrInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	cfg := olricTestConfig()
	cfg.BindAddr = taken.Addr().String()
	_, err = New(cfg)
	require.ErrorContains(t, err, "cache addr")
}

func TestOlricBeforeStartIsUnavailable(t *testing.T) {
	c, err := New(olricTestConfig())
	require.NoError(t, err)
	ctx := context.Background()
	require.NotEmpty(t, c.MemberlistAddr())
	_, _, err = c.Get(ctx, "m", "k")
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorIs(t, err, ErrNotStarted)
	require.Equal(t, StatusDegraded, c.Health().Status)
	require.Zero(t, c.Members())
	require.NoError(t, c.Close(ctx), "a cache that never started closes cleanly")
	require.ErrorIs(t, c.Start(ctx), ErrClosed)
}

// TestOlricThreeMembersStartedTogether starts three members at the same instant, each with the
// others as peers, as shoal nodes do when a cluster boots.
func TestOlricThreeMembersStartedTogether(t *testing.T) {
	skipUnderRaceWithClusteredOlric(t)
	cs := startCluster(t, 3, func(c *Config) { c.MinMembers = 2 })
	ctx := context.Background()

	t.Run("FormOneCluster", func(t *testing.T) {
		coord := coordinator(t, cs[0])
		require.NotEmpty(t, coord)
		for i, c := range cs {
			require.Equal(t, 3, c.Members(), "member %d", i)
			require.Equal(t, coord, coordinator(t, c), "member %d follows another coordinator", i)
			require.Equal(t, StatusOK, c.Health().Status, "member %d: %s", i, c.Health().Detail)
		}
	})

	t.Run("ValueSetOnOneMemberIsReadOnTheOthers", func(t *testing.T) {
		for i := range 30 {
			require.NoError(t, cs[0].Set(ctx, "shared", fmt.Sprint(i), []byte(fmt.Sprint("v", i)), time.Minute))
		}
		for _, c := range cs[1:] {
			for i := range 30 {
				v, ok, err := c.Get(ctx, "shared", fmt.Sprint(i))
				require.NoError(t, err)
				require.True(t, ok, "key %d", i)
				require.Equal(t, []byte(fmt.Sprint("v", i)), v)
			}
		}
	})

	t.Run("ConcurrentIncrsFromAllMembersSumExactly", func(t *testing.T) {
		const perMember, workers = 100, 4
		keys := []string{"k0", "k1", "k2", "k3", "k4"}
		var wg sync.WaitGroup
		var failed atomic.Int64
		for _, c := range cs {
			for w := range workers {
				wg.Go(func() {
					for i := range perMember / workers {
						if _, err := c.Incr(ctx, "rl", keys[(w+i)%len(keys)], 1, time.Minute); err != nil {
							failed.Add(1)
						}
					}
				})
			}
		}
		wg.Wait()
		require.Zero(t, failed.Load())
		total := 0
		for _, k := range keys {
			n, err := cs[2].Incr(ctx, "rl", k, 0, time.Minute)
			require.NoError(t, err)
			total += n
		}
		require.Equal(t, len(cs)*perMember, total)
	})

	t.Run("LockIsExclusiveAcrossMembers", func(t *testing.T) {
		unlock, err := cs[0].Lock(ctx, "coalesce", "prompt", 10*time.Second)
		require.NoError(t, err)
		for _, c := range cs[1:] {
			_, err := c.Lock(ctx, "coalesce", "prompt", 10*time.Second)
			require.ErrorIs(t, err, ErrLocked)
		}
		require.NoError(t, unlock(ctx))
		unlock, err = cs[1].Lock(ctx, "coalesce", "prompt", 10*time.Second)
		require.NoError(t, err)
		require.NoError(t, unlock(ctx))
	})

	t.Run("ConcurrentLockersGetOneWinner", func(t *testing.T) {
		for round := range 5 {
			key := fmt.Sprint("race", round)
			var winners atomic.Int64
			var wg sync.WaitGroup
			for _, c := range cs {
				for range 4 {
					wg.Go(func() {
						_, err := c.Lock(ctx, "coalesce", key, 10*time.Second)
						if err == nil {
							winners.Add(1)
						} else if !errors.Is(err, ErrLocked) {
							t.Errorf("lock: %v", err)
						}
					})
				}
			}
			wg.Wait()
			require.EqualValues(t, 1, winners.Load(), "round %d", round)
		}
	})

	t.Run("PurgeOnOneMemberClearsAll", func(t *testing.T) {
		require.NoError(t, cs[0].Set(ctx, "gone", "k", []byte("v"), 0))
		require.NoError(t, cs[2].Set(ctx, "kept", "k", []byte("v"), 0))
		require.NoError(t, cs[1].Purge(ctx, "gone"))
		for _, c := range cs {
			_, ok, err := c.Get(ctx, "gone", "k")
			require.NoError(t, err)
			require.False(t, ok)
			_, ok, err = c.Get(ctx, "kept", "k")
			require.NoError(t, err)
			require.True(t, ok)
		}
		require.NoError(t, cs[1].Purge(ctx, ""))
		for _, c := range cs {
			_, ok, err := c.Get(ctx, "kept", "k")
			require.NoError(t, err)
			require.False(t, ok, "namespace registered by another member survived Purge(\"\")")
		}
	})

	// Last: it closes two members. With MinMembers 2 the survivor refuses to serve alone.
	t.Run("SurvivorWithoutQuorumIsUnavailableAndDegraded", func(t *testing.T) {
		closeAll(t, cs[1:])
		require.Eventually(t, func() bool { return cs[0].Members() == 1 }, waitTimeout, waitTick)
		require.Eventually(t, func() bool {
			_, _, err := cs[0].Get(ctx, "shared", "1")
			return errors.Is(err, ErrUnavailable)
		}, waitTimeout, waitTick)
		_, err := cs[0].Incr(ctx, "rl", "k0", 1, time.Minute)
		require.ErrorIs(t, err, ErrUnavailable)
		h := cs[0].Health()
		require.Equal(t, StatusDegraded, h.Status)
		// Ours ("1 cache members visible, 2 required") or, when the routing watch has not
		// yet seen the members go, Olric's own ("failed to find enough peers to create quorum").
		require.Regexp(t, "required|quorum", h.Detail)
	})
}

// TestOlricRetriesAStartThatOlricFailed takes the member's Olric port in the instant between
// New's reservation and Olric's bind, so Olric's own Start fails, as it does for a member that
// loses a boot race with a peer. The member must start a fresh instance on the same ports once
// the port is free again, although Olric's process-wide start checkpoint, left unbalanced by
// the failure, never calls a Started callback again.
func TestOlricRetriesAStartThatOlricFailed(t *testing.T) {
	skipUnderRaceWithClusteredOlric(t)
	if os.Getenv(isolatedEnv) == "" {
		// The failed start leaves Olric's process-wide start checkpoint unbalanced for good,
		// which changes how every later member of the process starts; run it in a process of
		// its own.
		cmd := exec.Command(os.Args[0], "-test.run=^TestOlricRetriesAStartThatOlricFailed$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), isolatedEnv+"=1")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Contains(t, string(out), "--- PASS: TestOlricRetriesAStartThatOlricFailed", "%s", out)
		return
	}
	rec := &recordingHandler{}
	cfg := olricTestConfig()
	cfg.Logger = slog.New(rec)
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAll(t, []*Cache{c}) })
	o := c.st.(*olricStore)
	advertised := c.MemberlistAddr()

	require.NoError(t, o.reserve.Close())
	thief, err := net.Listen("tcp", net.JoinHostPort(o.host, strconv.Itoa(o.port)))
	require.NoError(t, err)
	// start closes the reservation before Olric binds; give it one that holds nothing of ours.
	o.reserve, err = net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	started := make(chan error, 1)
	go func() { started <- c.Start(context.Background()) }()
	require.Eventually(t, func() bool { return rec.logged("olric start failed; retrying with a fresh member") },
		waitTimeout, waitTick, "the failed start was not retried")
	require.NoError(t, thief.Close())
	require.NoError(t, <-started)

	require.Equal(t, advertised, c.MemberlistAddr(), "the retry keeps the advertised address")
	require.Equal(t, StatusOK, c.Health().Status, c.Health().Detail)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "m", "k", []byte("v"), time.Minute))
	v, ok, err := c.Get(ctx, "m", "k")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, []byte("v"), v)
}

// isolatedEnv marks a re-executed test binary that runs one test alone.
const isolatedEnv = "SHOAL_DCACHE_ISOLATED"

// recordingHandler is a slog.Handler that keeps the messages it is given.
type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}

func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }

func (h *recordingHandler) WithGroup(string) slog.Handler { return h }

func (h *recordingHandler) logged(msg string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Contains(h.msgs, msg)
}

// TestOlricSecuredMembers runs members with an encryption key and a password: they form one
// cache; a member with another key cannot join them; a client without the password cannot
// read or write, and one with it can.
func TestOlricSecuredMembers(t *testing.T) {
	skipUnderRaceWithClusteredOlric(t)
	key := bytes.Repeat([]byte{7}, 32)
	const password = "s3cret-derived-from-the-gossip-key"
	cs := startCluster(t, 2, func(c *Config) { c.EncryptKey, c.Password = key, password })
	ctx := context.Background()
	require.Eventually(t, func() bool { return !cs[0].Alone() && !cs[1].Alone() }, 10*time.Second, 10*time.Millisecond,
		"members of one cache still say they are alone")
	require.NoError(t, cs[0].Set(ctx, "m", "k", []byte("v"), time.Minute))
	v, ok, err := cs[1].Get(ctx, "m", "k")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, []byte("v"), v)

	t.Run("MemberWithAnotherKeyStaysOut", func(t *testing.T) {
		cfg := olricTestConfig()
		cfg.EncryptKey, cfg.Password = bytes.Repeat([]byte{8}, 32), password
		cfg.JoinTimeout = 500 * time.Millisecond
		cfg.Peers = func() []string { return []string{cs[0].MemberlistAddr()} }
		outsider, err := New(cfg)
		require.NoError(t, err)
		t.Cleanup(func() { closeAll(t, []*Cache{outsider}) })
		require.NoError(t, outsider.Start(ctx))
		require.Equal(t, 1, outsider.Members(), "the outsider formed a cache of its own")
		require.True(t, outsider.Alone())
		for i, c := range cs {
			require.Equal(t, 2, c.Members(), "member %d", i)
		}
	})

	t.Run("ClientNeedsThePassword", func(t *testing.T) {
		ccfg := config.NewClient()
		ccfg.MaxRetries = -1
		ccfg.DialTimeout = time.Second
		denied := func() error {
			cc, err := olric.NewClusterClient([]string{cs[0].Addr()}, olric.WithConfig(ccfg))
			if err != nil {
				return err
			}
			defer cc.Close(ctx)
			dm, err := cc.NewDMap(respPrefix + "m")
			if err != nil {
				return err
			}
			_, err = dm.Get(ctx, "k")
			return err
		}()
		require.Error(t, denied)
		require.NotErrorIs(t, denied, olric.ErrKeyNotFound)

		cc, err := olric.NewClusterClient([]string{cs[0].Addr()}, olric.WithConfig(ccfg), olric.WithPassword(password))
		require.NoError(t, err)
		defer cc.Close(ctx)
		dm, err := cc.NewDMap(respPrefix + "m")
		require.NoError(t, err)
		_, err = dm.Get(ctx, "no-such-key")
		require.ErrorIs(t, err, olric.ErrKeyNotFound, "with the password the member answers")
	})
}
