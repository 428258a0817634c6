package gossip

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/require"
)

func TestClusterMembersSeeEachOtherWithMeta(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	for _, g := range nodes {
		members := g.Members()
		require.Len(t, members, 3)
		for i, m := range members {
			want := nodes[i] // Members is sorted by name, n0..n2
			require.Equal(t, want.LocalName(), m.Name)
			require.Equal(t, want.LocalAddr(), m.Addr)
			require.Equal(t, StateAlive, m.State)
			require.Equal(t, testConfig(want.LocalName()).Meta, m.Meta)
		}
	}
}

func TestLocalAddrReportsBoundPort(t *testing.T) {
	g := startNode(t, testConfig("solo"))
	host, port, err := net.SplitHostPort(g.LocalAddr())
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	require.NotZero(t, p)
	self, ok := g.Member("solo")
	require.True(t, ok)
	require.Equal(t, g.LocalAddr(), self.Addr)
}

func TestLoadReachesEveryMember(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	want := sampleLoad(7)
	require.NoError(t, nodes[0].SetLoad(want))
	self, _ := nodes[0].Member("n0")
	seq := self.Load.Seq
	for _, g := range nodes[1:] {
		require.Eventually(t, func() bool {
			m, _ := g.Member("n0")
			return m.Load.Seq == seq
		}, waitTimeout, 5*time.Millisecond, "%s did not get n0's load", g.LocalName())
		m, _ := g.Member("n0")
		require.Equal(t, want.Models, m.Load.Models)
		require.Equal(t, want.GPU, m.Load.GPU)
		require.False(t, m.LoadUpdated.IsZero())
	}
}

func TestLoadEventCarriesNewLoad(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	events, cancel := nodes[1].Subscribe()
	defer cancel()
	require.NoError(t, nodes[0].SetLoad(sampleLoad(42)))
	ev := waitEvent(t, events, EventLoad, "n0")
	for ev.Member.Load.Models["llama-3-8b"].QueueDepth != 42 {
		ev = waitEvent(t, events, EventLoad, "n0")
	}
	require.Equal(t, StateAlive, ev.Member.State)
}

func TestOutOfOrderLoadIgnored(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	a, b := nodes[0], nodes[1]
	require.NoError(t, a.SetLoad(sampleLoad(5)))
	self, _ := a.Member("n0")
	seq := self.Load.Seq
	require.Eventually(t, func() bool {
		m, _ := b.Member("n0")
		return m.Load.Seq == seq
	}, waitTimeout, 5*time.Millisecond)

	// Replay an older report from a, over TCP so it surely arrives.
	old := sampleLoad(999)
	old.Seq = seq - 1
	msg := encodeLoadMsg(loadEntry{Name: "n0", Load: old, Interval: time.Second})
	staleBefore := b.Stats().LoadsStale
	bNode := memberlistNode(t, a, "n1")
	require.NoError(t, a.ml.SendReliable(&bNode, msg))
	require.Eventually(t, func() bool { return b.Stats().LoadsStale > staleBefore }, waitTimeout, 5*time.Millisecond)

	m, _ := b.Member("n0")
	require.Equal(t, seq, m.Load.Seq)
	require.Equal(t, 5, m.Load.Models["llama-3-8b"].QueueDepth)
}

// memberlistNode returns g's memberlist view of name, for raw sends.
func memberlistNode(t *testing.T, g *Gossip, name string) memberlist.Node {
	t.Helper()
	for _, n := range g.ml.Members() {
		if n.Name == name {
			return *n
		}
	}
	t.Fatalf("%s not in %s's memberlist", name, g.LocalName())
	return memberlist.Node{}
}

func TestShutdownWithoutLeaveMarksFailed(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	events, cancel := nodes[0].Subscribe()
	defer cancel()
	require.NoError(t, nodes[2].Shutdown())

	ev := waitEvent(t, events, EventFailed, "n2")
	require.Equal(t, StateDead, ev.Member.State)
	require.Eventually(t, func() bool { return memberState(nodes[1], "n2") == StateDead }, waitTimeout, 10*time.Millisecond)
	for _, g := range nodes[:2] {
		require.NotContains(t, aliveNames(g), "n2", "a dead node must leave Alive")
		require.Len(t, g.Members(), 3, "dead node stays in Members for reconciliation")
	}
}

func TestLeaveMarksLeft(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	events, cancel := nodes[0].Subscribe()
	defer cancel()
	require.NoError(t, nodes[2].Leave(5*time.Second))
	require.NoError(t, nodes[2].Shutdown())

	ev := waitEvent(t, events, EventLeft, "n2")
	require.Equal(t, StateLeft, ev.Member.State)
	require.Eventually(t, func() bool { return memberState(nodes[1], "n2") == StateLeft }, waitTimeout, 10*time.Millisecond)
	require.NotContains(t, aliveNames(nodes[0]), "n2")
}

func TestLateLeaveIntentTurnsDeadIntoLeft(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	require.NoError(t, nodes[2].Shutdown())
	require.Eventually(t, func() bool { return memberState(nodes[1], "n2") == StateDead }, waitTimeout, 10*time.Millisecond)

	// n2's intent, delivered (here relayed by n0) after n1 saw it die.
	events, cancel := nodes[1].Subscribe()
	defer cancel()
	to := memberlistNode(t, nodes[0], "n1")
	require.NoError(t, nodes[0].ml.SendReliable(&to, encodeLeaveMsg("n2")))
	ev := waitEvent(t, events, EventLeft, "n2")
	require.Equal(t, StateLeft, ev.Member.State)
}

func TestLeaveStopsJoinAndMetaUpdates(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	require.NoError(t, nodes[1].Leave(5*time.Second))
	require.NoError(t, nodes[1].Leave(time.Second), "second Leave is a no-op")
	_, err := nodes[1].Join(context.Background(), []string{nodes[0].LocalAddr()})
	require.ErrorIs(t, err, ErrLeft)
	require.ErrorIs(t, nodes[1].UpdateMeta(context.Background(), Meta{}), ErrLeft)
	self, _ := nodes[1].Member("n1")
	require.Equal(t, StateLeft, self.State)
}

func TestSuspectWhenLoadReportsStop(t *testing.T) {
	nodes := startCluster(t, 3, func(i int, cfg *Config) {
		cfg.LoadInterval = 50 * time.Millisecond
		cfg.SuspectAfter = 400 * time.Millisecond
		cfg.Tune = func(c *memberlist.Config) {
			fastTune(c)
			// memberlist never probes, so only our load heartbeat can
			// notice the silent node.
			c.ProbeInterval = time.Hour
		}
	})
	events, cancel := nodes[0].Subscribe()
	defer cancel()
	require.NoError(t, nodes[2].Shutdown())

	ev := waitEvent(t, events, EventSuspect, "n2")
	require.Equal(t, StateSuspect, ev.Member.State)
	require.Eventually(t, func() bool { return memberState(nodes[1], "n2") == StateSuspect }, waitTimeout, 10*time.Millisecond)
	require.NotContains(t, aliveNames(nodes[0]), "n2", "a suspect member must not receive work")
}

func TestSuspectRecoversWhenLoadResumes(t *testing.T) {
	quiet := testConfig("quiet")
	quiet.LoadInterval = time.Hour // reports only on change
	sender := startNode(t, quiet)
	watchCfg := testConfig("watcher")
	watchCfg.SuspectAfter = 300 * time.Millisecond
	watcher := startNode(t, watchCfg)
	events, cancel := watcher.Subscribe()
	defer cancel()
	mustJoin(t, watcher, sender)

	waitEvent(t, events, EventSuspect, "quiet")
	require.NotContains(t, aliveNames(watcher), "quiet")
	require.NoError(t, sender.SetLoad(sampleLoad(1)))
	ev := waitEvent(t, events, EventUpdate, "quiet")
	require.Equal(t, StateAlive, ev.Member.State)
}

func TestUpdateMetaPropagates(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	events, cancel := nodes[1].Subscribe()
	defer cancel()
	meta := testConfig("n0").Meta
	meta.RaftHasState = true
	meta.Version = "v2"
	ctx, cancelCtx := context.WithTimeout(context.Background(), waitTimeout)
	defer cancelCtx()
	require.NoError(t, nodes[0].UpdateMeta(ctx, meta))

	ev := waitEvent(t, events, EventUpdate, "n0")
	require.Equal(t, meta, ev.Member.Meta)
	require.Eventually(t, func() bool {
		m, _ := nodes[2].Member("n0")
		return m.Meta == meta
	}, waitTimeout, 10*time.Millisecond)
	self, _ := nodes[0].Member("n0")
	require.Equal(t, meta, self.Meta)
}

func TestNewJoinerLearnsLoadsViaPushPull(t *testing.T) {
	slow := func(i int, cfg *Config) {
		cfg.LoadInterval = time.Hour // no periodic refresh can help
		cfg.Tune = nil               // memberlist defaults: gossip every 200 ms
	}
	nodes := startCluster(t, 2, slow)
	a, b := nodes[0], nodes[1]
	require.NoError(t, b.SetLoad(sampleLoad(11)))
	bSelf, _ := b.Member("n1")
	require.Eventually(t, func() bool {
		m, _ := a.Member("n1")
		return m.Load.Seq == bSelf.Load.Seq
	}, waitTimeout, 5*time.Millisecond)
	require.NoError(t, a.SetLoad(sampleLoad(3)))
	aSelf, _ := a.Member("n0")

	cfg := testConfig("late")
	slow(0, &cfg)
	c := startNode(t, cfg)
	mustJoin(t, c, a)

	// Join returns after the push-pull merge. b has not even heard of c
	// yet (that takes a gossip round), so b's load can only have come
	// from a's push-pull state.
	mb, ok := c.Member("n1")
	require.True(t, ok)
	require.Equal(t, bSelf.Load.Seq, mb.Load.Seq)
	require.Equal(t, 11, mb.Load.Models["llama-3-8b"].QueueDepth)
	ma, _ := c.Member("n0")
	require.Equal(t, aSelf.Load.Seq, ma.Load.Seq)
}

func TestEncryptionSameKeyJoins(t *testing.T) {
	key := "cg8StVXbQJ0gPvMd9o7yrg==" // consul keygen, 16 bytes
	nodes := startCluster(t, 2, func(i int, cfg *Config) { cfg.EncryptKey = key })
	require.NoError(t, nodes[0].SetLoad(sampleLoad(4)))
	require.Eventually(t, func() bool {
		m, _ := nodes[1].Member("n0")
		return m.Load.Models["llama-3-8b"].QueueDepth == 4
	}, waitTimeout, 5*time.Millisecond, "load messages are encrypted too")
}

func TestEncryptionMismatchCannotJoin(t *testing.T) {
	const (
		key1 = "cg8StVXbQJ0gPvMd9o7yrg=="
		key2 = "4le0nSsm0KgyKc6dTmBnAA6Tq5pbxI5oWJL0WWHk0Kw=" // 32 bytes
	)
	cases := []struct {
		name             string
		seedKey, joinKey string
	}{
		{"different keys", key1, key2},
		{"joiner has no key", key1, ""},
		{"joiner has a key, cluster none", "", key2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seedLog := &logBuffer{}
			seedCfg := testConfig("seed")
			seedCfg.EncryptKey = tc.seedKey
			seedCfg.Logger = testLogger(seedLog)
			seed := startNode(t, seedCfg)

			joinLog := &logBuffer{}
			joinCfg := testConfig("joiner")
			joinCfg.EncryptKey = tc.joinKey
			joinCfg.Logger = testLogger(joinLog)
			joiner := startNode(t, joinCfg)

			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			n, err := joiner.Join(ctx, []string{seed.LocalAddr()})
			require.Error(t, err)
			require.Zero(t, n)
			require.ErrorIs(t, err, ErrLikelyKeyMismatch)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.Contains(t, err.Error(), seed.LocalAddr())
			require.Contains(t, err.Error(), "gossip.encrypt_key")
			require.Contains(t, joinLog.String(), "gossip.encrypt_key")
			// The seed, which saw the bad handshake, says so too.
			require.Eventually(t, func() bool {
				return containsAll(seedLog.String(), "level=ERROR", "gossip.encrypt_key")
			}, waitTimeout, 10*time.Millisecond)
			require.Len(t, seed.Members(), 1)
			require.Len(t, joiner.Members(), 1)
		})
	}
}

func TestInvalidEncryptKeyIsConfigError(t *testing.T) {
	cases := map[string]string{
		"not base64":    "not*base64!",
		"wrong length":  "c2hvcnQ=", // "short"
		"17 bytes":      "AAAAAAAAAAAAAAAAAAAAAAA=",
		"url alphabet ": "4le0nSsm0KgyKc6dTmBnAA6Tq5pbxI5oWJL0WWHk0K_",
	}
	for name, key := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig("bad")
			cfg.EncryptKey = key
			_, err := New(cfg)
			require.ErrorIs(t, err, ErrInvalidKey)
			require.Contains(t, err.Error(), "gossip.encrypt_key")
		})
	}
}

func TestMetaOverLimitIsAnError(t *testing.T) {
	cfg := testConfig("big")
	cfg.Meta.Version = strings.Repeat("v", MetaMaxSize)
	_, err := New(cfg)
	require.ErrorIs(t, err, ErrMetaTooLarge)

	g := startNode(t, testConfig("small"))
	big := testConfig("small").Meta
	big.HTTPAddr = strings.Repeat("h", 400)
	big.RaftAddr = strings.Repeat("r", 100)
	err = g.UpdateMeta(context.Background(), big)
	require.ErrorIs(t, err, ErrMetaTooLarge)
	self, _ := g.Member("small")
	require.Equal(t, testConfig("small").Meta, self.Meta, "a rejected update changes nothing")
}

func TestJoinRetriesUntilPeerStarts(t *testing.T) {
	// Find a port free for both TCP and UDP, then start the seed on it
	// only after Join has begun retrying.
	addr := freeAddr(t)
	joinLog := &logBuffer{}
	joinCfg := testConfig("joiner")
	joinCfg.Logger = testLogger(joinLog)
	joiner := startNode(t, joinCfg)
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	go func() {
		n, err := joiner.Join(ctx, []string{addr})
		done <- result{n, err}
	}()
	require.Eventually(t, func() bool { return strings.Contains(joinLog.String(), "gossip join failed") },
		waitTimeout, 10*time.Millisecond, "first join attempt should fail")
	seedCfg := testConfig("seed")
	seedCfg.BindAddr = addr
	seed := startNode(t, seedCfg)
	res := <-done
	require.NoError(t, res.err)
	require.Equal(t, 1, res.n)
	waitAllAlive(t, []*Gossip{seed, joiner})
}

// freeAddr returns a 127.0.0.1 address whose port was just free for TCP
// and UDP.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			return addr
		}
	}
	t.Fatal("no free port")
	return ""
}

func TestJoinFailureNamesAddresses(t *testing.T) {
	g := startNode(t, testConfig("lonely"))
	dead := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := g.Join(ctx, []string{dead})
	require.Error(t, err)
	require.Contains(t, err.Error(), dead)
	require.NotErrorIs(t, err, ErrLikelyKeyMismatch, "a refused connection is not a key problem")
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestSlowSubscriberDropsAndCounts(t *testing.T) {
	nodes := startCluster(t, 2, func(i int, cfg *Config) {
		cfg.EventBuffer = 1
		cfg.MinPushInterval = time.Millisecond
	})
	events, cancel := nodes[1].Subscribe()
	defer cancel()
	// Never read: the buffer fills and further events are dropped, and
	// gossip carries on.
	for i := range 50 {
		require.NoError(t, nodes[0].SetLoad(sampleLoad(i)))
		self, _ := nodes[0].Member("n0")
		require.Eventually(t, func() bool {
			m, _ := nodes[1].Member("n0")
			return m.Load.Seq == self.Load.Seq
		}, waitTimeout, time.Millisecond)
	}
	require.Positive(t, nodes[1].Stats().EventsDropped)
	require.Len(t, events, 1)
}

func TestSubscribeCancelAndShutdownCloseChannels(t *testing.T) {
	g := startNode(t, testConfig("solo"))
	ch1, cancel1 := g.Subscribe()
	ch2, _ := g.Subscribe()
	cancel1()
	cancel1() // idempotent
	_, ok := <-ch1
	require.False(t, ok)
	require.NoError(t, g.Shutdown())
	_, ok = <-ch2
	require.False(t, ok)
	ch3, cancel3 := g.Subscribe()
	_, ok = <-ch3
	require.False(t, ok, "subscribing after Shutdown yields a closed channel")
	cancel3()
}

func TestCallsAfterShutdown(t *testing.T) {
	g := startNode(t, testConfig("solo"))
	require.NoError(t, g.Shutdown())
	require.NoError(t, g.Shutdown(), "second Shutdown is a no-op")
	require.ErrorIs(t, g.Leave(time.Second), ErrClosed)
	require.ErrorIs(t, g.SetLoad(Load{}), ErrClosed)
	_, err := g.Join(context.Background(), []string{"127.0.0.1:1"})
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, g.UpdateMeta(context.Background(), Meta{}), ErrClosed)
}

func TestSetLoadRejectsOversizedLoad(t *testing.T) {
	g := startNode(t, testConfig("solo"))
	models := make(map[string]ModelLoad, MaxModels+1)
	for i := range MaxModels + 1 {
		models["m"+strconv.Itoa(i)] = ModelLoad{}
	}
	require.ErrorIs(t, g.SetLoad(Load{Models: models}), ErrLoadTooLarge)
	require.ErrorIs(t, g.SetLoad(Load{Models: map[string]ModelLoad{strings.Repeat("x", MaxNameLen+1): {}}}), ErrLoadTooLarge)
}

func TestLargeLoadArrivesIntact(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	models := make(map[string]ModelLoad, 200)
	for i := range 200 {
		models["a-rather-long-model-name-for-testing-"+strconv.Itoa(i)] = ModelLoad{QueueDepth: i, Slots: 8}
	}
	require.Greater(t, len(encodeLoadMsg(loadEntry{Name: "n0", Load: Load{Models: models}})), nodes[0].udpLimit)
	require.NoError(t, nodes[0].SetLoad(Load{Models: models}))
	require.Eventually(t, func() bool {
		m, _ := nodes[1].Member("n0")
		return len(m.Load.Models) == 200
	}, waitTimeout, 10*time.Millisecond)
	m, _ := nodes[1].Member("n0")
	require.Equal(t, models, m.Load.Models)
}

func TestConfigErrors(t *testing.T) {
	cases := map[string]func(*Config){
		"no name":           func(c *Config) { c.Name = "" },
		"long name":         func(c *Config) { c.Name = strings.Repeat("n", MaxNameLen+1) },
		"bad bind":          func(c *Config) { c.BindAddr = "127.0.0.1" },
		"bad bind port":     func(c *Config) { c.BindAddr = "127.0.0.1:http" },
		"negative interval": func(c *Config) { c.LoadInterval = -time.Second },
		"bad advertise":     func(c *Config) { c.AdvertiseAddr = "127.0.0.1:99999" },
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig("x")
			edit(&cfg)
			_, err := New(cfg)
			require.ErrorIs(t, err, ErrInvalidConfig)
		})
	}
}

func TestAdvertiseAddr(t *testing.T) {
	t.Run("host only keeps the bound port", func(t *testing.T) {
		cfg := testConfig("adv")
		cfg.AdvertiseAddr = "127.0.0.2"
		g := startNode(t, cfg)
		_, port, err := net.SplitHostPort(g.LocalAddr())
		require.NoError(t, err)
		require.NotEqual(t, "0", port)
		require.Equal(t, net.JoinHostPort("127.0.0.2", port), g.LocalAddr())
	})
	t.Run("host and port with a fixed bind port", func(t *testing.T) {
		cfg := testConfig("adv")
		cfg.BindAddr = freeAddr(t)
		cfg.AdvertiseAddr = "127.0.0.2:7999" // never listened on
		g := startNode(t, cfg)
		require.Equal(t, "127.0.0.2:7999", g.LocalAddr())
	})
}

func TestRejoinAfterLeaveWithNewInstance(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	require.NoError(t, nodes[1].Leave(5*time.Second))
	require.NoError(t, nodes[1].Shutdown())
	require.Eventually(t, func() bool { return memberState(nodes[0], "n1") == StateLeft }, waitTimeout, 10*time.Millisecond)

	again := startNode(t, testConfig("n1"))
	mustJoin(t, again, nodes[0])
	require.NoError(t, again.SetLoad(sampleLoad(8)))
	self, _ := again.Member("n1")
	require.Eventually(t, func() bool {
		m, _ := nodes[0].Member("n1")
		return m.State == StateAlive && m.Load.Seq == self.Load.Seq && m.Addr == again.LocalAddr()
	}, waitTimeout, 10*time.Millisecond)
}

// Serves answers from live peers' load reports, as Alive's loads would.
func TestServesReadsLivePeersLoads(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	require.NoError(t, nodes[1].SetLoad(Load{Models: map[string]ModelLoad{"m": {Slots: 1}}}))
	require.Eventually(t, func() bool { return nodes[0].Serves("m") }, waitTimeout, 10*time.Millisecond)
	require.False(t, nodes[0].Serves("other"))
	require.False(t, nodes[1].Serves("m"), "its own load is not a peer's")
}

// Listed is what purges, breaker cleanup and pulls count as possibly up:
// alive and suspect members, never dead or left ones.
func TestListedStates(t *testing.T) {
	for s, want := range map[State]bool{StateAlive: true, StateSuspect: true, StateDead: false, StateLeft: false} {
		require.Equal(t, want, s.Listed(), s.String())
	}
}
