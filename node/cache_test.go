package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/olric-data/olric"
	"github.com/olric-data/olric/config"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/httpapi"
	"github.com/shoal-dev/shoal/respcache"
	"github.com/shoal-dev/shoal/scheduler"
)

// olricCluster starts n nodes sharing an embedded Olric cache and waits
// until every cache member sees all the others.
func olricCluster(t *testing.T, n int, mutate func(i int, cfg *Config)) *testCluster {
	t.Helper()
	tc := mustNewCluster(t, n, func(i int, cfg *Config) {
		cfg.Cache.Backend = "olric"
		cfg.Tuning.Cache = func(c *dcache.Config) {
			c.Network = "local"
			c.PartitionCount = 23
		}
		if mutate != nil {
			mutate(i, cfg)
		}
	})
	require.Eventually(t, func() bool {
		for _, nd := range tc.nodes {
			// Alone lags Members by up to a watch tick; coalescing
			// across nodes starts once a node no longer thinks it is.
			if nd.cache.Members() != n || nd.cache.Health().Status != dcache.StatusOK || (n > 1) == nd.cache.Alone() {
				return false
			}
		}
		return true
	}, 60*time.Second, 50*time.Millisecond, "olric members never formed one cluster")
	waitCountersAgree(t, tc.nodes)
	return tc
}

// waitCountersAgree waits until the members route counter increments to one
// owner: concurrent increments from every node add up exactly, twice in a
// row. Right after members join, each member's copy of Olric's routing
// table may still name another owner for a while, and increments then
// split between two owners (dcache/DESIGN.md); tests that count admissions
// exactly start after that.
func waitCountersAgree(t *testing.T, nodes []*Node) {
	t.Helper()
	const each = 10
	exact, probe := 0, 0
	// The tick spaces probes past a routing-table refresh (100ms on "local").
	require.Eventually(t, func() bool {
		probe++
		key := fmt.Sprintf("agree-%d", probe)
		var wg sync.WaitGroup
		var failed atomic.Bool
		for _, nd := range nodes {
			wg.Go(func() {
				for range each {
					if _, err := nd.cache.Incr(context.Background(), "test-probe", key, 1, time.Minute); err != nil {
						failed.Store(true)
					}
				}
			})
		}
		wg.Wait()
		v, err := nodes[0].cache.Incr(context.Background(), "test-probe", key, 0, time.Minute)
		if err != nil || failed.Load() || v != each*len(nodes) {
			t.Logf("counter probe %d: %d of %d increments (err %v): the members' routing still differs", probe, v, each*len(nodes), err)
			exact = 0
			return false
		}
		exact++
		return exact >= 2
	}, 60*time.Second, 50*time.Millisecond, "counter increments from different members never added up twice in a row")
}

func mustCacheKey(t *testing.T, input string) string {
	t.Helper()
	// The key the node computes for an infer request of input at
	// temperature 0 and max_tokens 4.
	key, ok := respcache.Key(respcache.KeyInput{Model: "sim-fast", Endpoint: scheduler.EndpointInfer, Prompts: []string{input},
		Params: scheduler.Params{MaxTokens: 4}}, false)
	require.True(t, ok)
	return key
}

func deterministicInfer(t require.TestingT, nd *Node, input string, headers map[string]string) httpResult {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	b, _ := json.Marshal(map[string]any{"model": "sim-fast", "input": input, "parameters": map[string]any{"temperature": 0, "max_tokens": 4}})
	req, err := http.NewRequest(http.MethodPost, "http://"+nd.HTTPAddr()+"/v1/infer", bytes.NewReader(b))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return httpResult{status: resp.StatusCode, header: resp.Header, body: body}
}

func outputText(t *testing.T, body []byte) string {
	var v struct {
		Outputs []struct {
			Text string `json:"text"`
		} `json:"outputs"`
	}
	require.NoError(t, json.Unmarshal(body, &v), string(body))
	require.NotEmpty(t, v.Outputs)
	return v.Outputs[0].Text
}

func TestCacheAnswerComputedOnOneNodeHitsOnAnother(t *testing.T) {
	tc := olricCluster(t, 3, withAdminToken)
	a, b := tc.nodes[0], tc.nodes[1]
	first := deterministicInfer(t, a, "shared   question", nil)
	require.Equal(t, http.StatusOK, first.status, string(first.body))
	require.Equal(t, httpapi.CacheMiss, first.header.Get("X-Shoal-Cache"))
	// The answer is stored in the background; wait until it is there.
	key := mustCacheKey(t, "shared question")
	require.Eventually(t, func() bool {
		_, found, err := b.cache.Get(context.Background(), "sim-fast", key)
		return err == nil && found
	}, 10*time.Second, 10*time.Millisecond, "the answer was never stored")
	// Whitespace differs: normalization makes it the same entry.
	second := deterministicInfer(t, b, "  shared question ", nil)
	require.Equal(t, httpapi.CacheHit, second.header.Get("X-Shoal-Cache"))
	require.Equal(t, outputText(t, first.body), outputText(t, second.body))

	// no-cache skips the lookup; no-store skips storing.
	nc := deterministicInfer(t, b, "shared question", map[string]string{"Cache-Control": "no-cache"})
	require.Equal(t, httpapi.CacheBypass, nc.header.Get("X-Shoal-Cache"))
	ns := deterministicInfer(t, a, "never stored", map[string]string{"Cache-Control": "no-store"})
	require.Equal(t, httpapi.CacheBypass, ns.header.Get("X-Shoal-Cache"))
	require.Equal(t, httpapi.CacheMiss, deterministicInfer(t, b, "never stored", nil).header.Get("X-Shoal-Cache"))

	// Sampling without a seed is never cached.
	sampled := doJSON(t, http.MethodPost, "http://"+a.HTTPAddr()+"/v1/infer", "", map[string]any{"model": "sim-fast", "input": "x", "parameters": map[string]any{"temperature": 0.7}})
	require.Equal(t, httpapi.CacheBypass, sampled.header.Get("X-Shoal-Cache"))

	// Every node answers the hot key from its near cache now, without
	// asking the key's owner.
	near := func(nd *Node) float64 { return metricSum(scrapeMetrics(t, nd), "inference_cache_near_hits_total") }
	for _, nd := range tc.nodes {
		for range 2 {
			require.Equal(t, httpapi.CacheHit, deterministicInfer(t, nd, "shared question", nil).header.Get("X-Shoal-Cache"), nd.Name())
		}
		require.Positive(t, near(nd), "%s: the hit was not near", nd.Name())
	}

	// The admin API purges a model's entries cluster-wide, near caches
	// included: once it answers, no node answers from before it.
	res := doJSON(t, http.MethodDelete, "http://"+tc.nodes[2].HTTPAddr()+"/admin/v1/cache?model=sim-fast", testToken, nil)
	require.Equal(t, http.StatusOK, res.status, string(res.body))
	require.Equal(t, httpapi.CacheMiss, deterministicInfer(t, b, "shared question", nil).header.Get("X-Shoal-Cache"))
	for _, nd := range tc.nodes {
		// b's recomputed answer may be stored by now: a hit on it is
		// right, a near one (from before the purge) is not.
		before := near(nd)
		deterministicInfer(t, nd, "shared question", nil)
		require.Equal(t, before, near(nd), "%s answered from its near cache after the purge", nd.Name())
	}
}

// tasksRun is how many requests a node's backends ran: the sum of its
// inference_batch_size histogram.
func tasksRun(t *testing.T, nd *Node) float64 {
	t.Helper()
	mfs, err := nd.metrics.Registry.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == "inference_batch_size" {
			sum := 0.0
			for _, m := range mf.GetMetric() {
				sum += m.GetHistogram().GetSampleSum()
			}
			return sum
		}
	}
	return 0
}

// waitLockOwner waits until every member agrees who holds key's
// coalescing lock: Olric settles partition ownership shortly after members
// join.
func waitLockOwner(t *testing.T, tc *testCluster, key string) {
	t.Helper()
	require.Eventually(t, func() bool {
		ctx := context.Background()
		unlock, err := tc.nodes[0].cache.Lock(ctx, "sim-fast", "lock:"+key, time.Second)
		if err != nil {
			return false
		}
		defer func() { _ = unlock(ctx) }()
		for _, nd := range tc.nodes[1:] {
			if _, err := nd.cache.Lock(ctx, "sim-fast", "lock:"+key, time.Second); !errors.Is(err, dcache.ErrLocked) {
				return false
			}
		}
		return true
	}, 30*time.Second, 50*time.Millisecond, "olric members never agreed on the lock owner")
}

// waitRunning waits until nd's backend runs a request.
func waitRunning(t *testing.T, nd *Node) {
	t.Helper()
	require.Eventually(t, func() bool { return nd.Scheduler().Load()["sim-fast"].Running > 0 },
		10*time.Second, time.Millisecond, "the first request never started")
}

// A request with a long deadline that joins an identical one with a short
// deadline gets the answer: it is not cut short by the other's deadline.
func TestCoalescedRequestKeepsItsOwnDeadline(t *testing.T) {
	nd := mustNewCluster(t, 1, func(_ int, cfg *Config) { cfg.Models[0].Sim.Base = time.Second }).nodes[0]
	short := make(chan httpResult, 1)
	go func() {
		short <- deterministicInfer(t, nd, "deadlines apart", map[string]string{"X-Shoal-Timeout": "200ms"})
	}()
	waitRunning(t, nd)
	long := deterministicInfer(t, nd, "deadlines apart", map[string]string{"X-Shoal-Timeout": "10s"})
	require.Equal(t, http.StatusOK, long.status, string(long.body))
	require.Equal(t, http.StatusGatewayTimeout, (<-short).status)
	require.Equal(t, 1.0, tasksRun(t, nd), "the two requests ran the model twice")
}

// A generation several lock leases long still runs once per cluster: its
// node renews the lock, and the other node waits for the answer instead
// of computing it again once the first lease is over.
func TestLongGenerationRunsOncePerClusterPastTheLockLease(t *testing.T) {
	tc := olricCluster(t, 2, func(_ int, cfg *Config) {
		cfg.Tuning.CacheLockLease = 300 * time.Millisecond
		cfg.Models[0].Sim.Base = 1500 * time.Millisecond
	})
	waitLockOwner(t, tc, mustCacheKey(t, "a long answer"))
	first := make(chan httpResult, 1)
	go func() { first <- deterministicInfer(t, tc.nodes[0], "a long answer", nil) }()
	waitRunning(t, tc.nodes[0])
	second := deterministicInfer(t, tc.nodes[1], "a long answer", nil)
	require.Equal(t, http.StatusOK, second.status, string(second.body))
	require.Contains(t, second.header.Get("X-Shoal-Route"), "local", "the second node must wait on the lock, not forward")
	require.Equal(t, http.StatusOK, (<-first).status)
	require.Equal(t, 1.0, tasksRun(t, tc.nodes[0])+tasksRun(t, tc.nodes[1]), "the model ran on both nodes")
}

func TestIdenticalMissesRunTheModelOncePerCluster(t *testing.T) {
	tc := olricCluster(t, 3, func(_ int, cfg *Config) {
		// Slow enough that all requests arrive while the first computes.
		cfg.Models[0].Sim.Base = 300 * time.Millisecond
		// The cache fails open past its lookup bound (a slow lock or read
		// means computing without it); on a loaded machine 50 ms is missed,
		// and this test is about coalescing, not that bound.
		cfg.Cache.LookupTimeout = 2 * time.Second
	})
	waitLockOwner(t, tc, mustCacheKey(t, "the same burst"))

	var wg sync.WaitGroup
	statuses := make([]int, 100)
	texts := make([]string, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res := deterministicInfer(t, tc.nodes[i%3], "the same burst", nil)
			statuses[i] = res.status
			if res.status == http.StatusOK {
				texts[i] = outputText(t, res.body)
			}
		}(i)
	}
	wg.Wait()
	for i := range statuses {
		require.Equal(t, http.StatusOK, statuses[i])
		require.Equal(t, texts[0], texts[i])
	}
	total := 0.0
	for _, nd := range tc.nodes {
		total += tasksRun(t, nd)
	}
	require.Equal(t, 1.0, total, "100 identical concurrent misses over 3 nodes must run the model once")
}

func TestRequestsSucceedUncachedWhenTheCacheIsDown(t *testing.T) {
	tc := olricCluster(t, 1, nil)
	nd := tc.nodes[0]
	require.NoError(t, nd.cache.Close(context.Background()))
	for i := 0; i < 3; i++ {
		res := deterministicInfer(t, nd, "cache is down", nil)
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		require.Equal(t, httpapi.CacheMiss, res.header.Get("X-Shoal-Cache"))
	}
	h := doJSON(t, http.MethodGet, "http://"+nd.HTTPAddr()+"/health", "", nil)
	require.Equal(t, http.StatusOK, h.status, "a degraded cache must not make the node unavailable")
	var rep struct {
		Status     string `json:"status"`
		Components map[string]struct {
			Status string `json:"status"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(h.body, &rep))
	require.Equal(t, "degraded", rep.Components["cache"].Status)
	require.Equal(t, "degraded", rep.Status)
}

func TestCachedAnswersExpireAfterTheirTTL(t *testing.T) {
	tc := mustNewCluster(t, 1, func(_ int, cfg *Config) { cfg.Cache.DefaultTTL = time.Second })
	nd := tc.nodes[0]
	require.Equal(t, httpapi.CacheMiss, deterministicInfer(t, nd, "short lived", nil).header.Get("X-Shoal-Cache"))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, httpapi.CacheHit, deterministicInfer(c, nd, "short lived", nil).header.Get("X-Shoal-Cache"))
	}, 5*time.Second, 10*time.Millisecond)
	key := mustCacheKey(t, "short lived")
	require.Eventually(t, func() bool {
		_, found, _ := nd.cache.Get(context.Background(), "sim-fast", key)
		return !found
	}, 10*time.Second, 50*time.Millisecond, "the entry never expired")
	require.Equal(t, httpapi.CacheMiss, deterministicInfer(t, nd, "short lived", nil).header.Get("X-Shoal-Cache"))
}

// With gossip.encrypt_key the cache and Raft are secured as well: the
// nodes' Olric members share answers and a client without the key-derived
// password cannot read them; Raft speaks TLS.
func TestGossipKeySecuresCacheAndRaft(t *testing.T) {
	const key = "cg8StVXbQJ0gPvMd9o7yrg=="
	tc := olricCluster(t, 2, func(i int, cfg *Config) { withAdminToken(i, cfg); cfg.Gossip.EncryptKey = key })
	a, b := tc.nodes[0], tc.nodes[1]
	first := deterministicInfer(t, a, "secured question", nil)
	require.Equal(t, http.StatusOK, first.status, string(first.body))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, httpapi.CacheHit, deterministicInfer(c, b, "secured question", nil).header.Get("X-Shoal-Cache"))
	}, 10*time.Second, 20*time.Millisecond, "node b never hit the answer node a computed")

	ctx := context.Background()
	ccfg := config.NewClient()
	ccfg.MaxRetries = -1
	ccfg.DialTimeout = time.Second
	_, err := func() (any, error) {
		cc, err := olric.NewClusterClient([]string{a.cache.Addr()}, olric.WithConfig(ccfg))
		if err != nil {
			return nil, err
		}
		defer cc.Close(ctx)
		dm, err := cc.NewDMap("resp.sim-fast")
		if err != nil {
			return nil, err
		}
		return dm.Get(ctx, mustCacheKey(t, "secured question"))
	}()
	require.Error(t, err, "the cache answered a client without the password")
	require.NotErrorIs(t, err, olric.ErrKeyNotFound)

	// Writes replicate over Raft between the two nodes, and its port
	// answers with TLS.
	res := doJSON(t, http.MethodPut, "http://"+b.HTTPAddr()+"/admin/v1/batching", testToken,
		map[string]any{"model": "sim-fast", "max_size": 5, "flush_timeout": "1ms"})
	require.Equal(t, http.StatusOK, res.status, string(res.body))
	require.Eventually(t, func() bool { return a.Store().State().Batching["sim-fast"].MaxSize == 5 },
		10*time.Second, 10*time.Millisecond, "the write did not replicate")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", a.Store().Addr(),
		&tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only looking at what the server presents
	require.NoError(t, err)
	defer conn.Close()
	require.NotEmpty(t, conn.ConnectionState().PeerCertificates, "raft presented no certificate")
}

// scopeProbe asks the same deterministic question with key ("" for none)
// and returns X-Shoal-Cache.
func scopeProbe(t require.TestingT, nd *Node, key string) string {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	h := map[string]string{}
	if key != "" {
		h["Authorization"] = "Bearer " + key
	}
	res := deterministicInfer(t, nd, "what did the others ask?", h)
	require.Equal(t, http.StatusOK, res.status, string(res.body))
	return res.header.Get("X-Shoal-Cache")
}

// waitCached asks until the answer of key's first request is stored.
func waitCached(t *testing.T, nd *Node, key string) {
	t.Helper()
	require.Equal(t, httpapi.CacheMiss, scopeProbe(t, nd, key))
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, httpapi.CacheHit, scopeProbe(c, nd, key)) },
		5*time.Second, 10*time.Millisecond, "the first answer was never stored")
}

func addKey(t *testing.T, nd *Node, key, tenant string) {
	t.Helper()
	res := doJSON(t, http.MethodPost, "http://"+nd.HTTPAddr()+"/admin/v1/keys", testToken, map[string]any{"key": key, "rpm": 1000, "tenant": tenant})
	require.Equal(t, http.StatusOK, res.status, string(res.body))
}

func TestCacheIsSharedClusterWideWithoutAuth(t *testing.T) {
	nd := mustNewCluster(t, 1, nil).nodes[0]
	waitCached(t, nd, "sk-scope-key-one-0000000")
	require.Equal(t, httpapi.CacheHit, scopeProbe(t, nd, "sk-scope-key-two-0000000"))
	require.Equal(t, httpapi.CacheHit, scopeProbe(t, nd, ""))
}

func TestCacheScopeKeyKeepsKeysApart(t *testing.T) {
	nd := mustNewCluster(t, 1, func(_ int, cfg *Config) { cfg.Cache.Scope = respcache.ScopeKey }).nodes[0]
	waitCached(t, nd, "sk-scope-key-one-0000000")
	require.Equal(t, httpapi.CacheMiss, scopeProbe(t, nd, "sk-scope-key-two-0000000"))
	require.Equal(t, httpapi.CacheMiss, scopeProbe(t, nd, ""))
}

// With auth required the cache defaults to the tenant scope: keys of one
// tenant share answers, another tenant's key learns nothing from a hit.
func TestCacheScopeDefaultsToTenantWhenAuthRequired(t *testing.T) {
	nd := mustNewCluster(t, 1, withAdminToken).nodes[0]
	putLimits(t, nd, map[string]any{"default_rpm": 1000, "auth_required": true,
		"tenants": map[string]any{"acme": map[string]any{"rpm": 0}, "globex": map[string]any{"rpm": 0}}})
	const acme1, acme2, globex = "sk-acme-one-000000000000", "sk-acme-two-000000000000", "sk-globex-000000000000000"
	addKey(t, nd, acme1, "acme")
	addKey(t, nd, acme2, "acme")
	addKey(t, nd, globex, "globex")
	waitPolicy(t, []*Node{nd}, func(p *consensus.LimitPolicy) bool { return p.AuthRequired && len(p.Keys) == 3 })

	waitCached(t, nd, acme1)
	require.Equal(t, httpapi.CacheHit, scopeProbe(t, nd, acme2), "keys of one tenant share answers")
	require.Equal(t, httpapi.CacheMiss, scopeProbe(t, nd, globex), "a hit told one tenant what another asked")
}

// A purge waits for every live node to drop its near answers; one that
// cannot confirm (frozen, here: its peer plane hangs while gossip and Raft
// go on) is named in a 504 after a bounded wait, not waited on for the
// client's whole deadline.
func TestPurgeNamesANodeThatDoesNotConfirmIt(t *testing.T) {
	stalls := make([]*stallListener, 3)
	tc := olricCluster(t, 3, func(i int, cfg *Config) {
		withAdminToken(i, cfg)
		stalls[i] = newStallListener(cfg.RaftListener)
		stalls[i].peerOnly = true
		cfg.RaftListener = stalls[i]
	})
	leader := tc.node(tc.waitLeader(tc.nodes...))
	var frozen *Node
	for i, nd := range tc.nodes {
		if nd != leader && frozen == nil {
			frozen = nd
			stalls[i].stall()
			t.Cleanup(stalls[i].release) // before the nodes stop
		}
	}
	start := time.Now()
	res := doJSON(t, http.MethodDelete, "http://"+leader.HTTPAddr()+"/admin/v1/cache?model=sim-fast", testToken, nil)
	took := time.Since(start)
	require.Equal(t, http.StatusGatewayTimeout, res.status, string(res.body))
	require.Contains(t, string(res.body), "not confirmed in time by "+frozen.Name()+",")
	require.Contains(t, string(res.body), "cache.near_ttl")
	require.Less(t, took, 10*time.Second, "the purge waited on the frozen node too long")
	t.Logf("purge with a frozen node answered in %s: %s", took, res.body)
}

// A purge ends every node's near answers with no admin token and with or
// without a gossip key: the generation is written and confirmed over the
// peer plane, never on operator credentials. It also holds against an
// answer that reaches the shared cache after it (a store queued before the
// purge and landing after it, or a copy Olric's own purge missed: its
// Destroy has no lock against a partition moving between members): keys
// carry the model's purge epoch from Raft, so such an answer is out of reach.
func TestPurgeEndsNearAnswersInEverySecurityMode(t *testing.T) {
	for _, mode := range securityModes {
		t.Run(mode.name, func(t *testing.T) {
			tc := olricCluster(t, 3, withSecurity(mode.key))
			ctx := context.Background()
			near := func(nd *Node) float64 { return metricSum(scrapeMetrics(t, nd), "inference_cache_near_hits_total") }
			first := deterministicInfer(t, tc.nodes[0], "near everywhere", nil)
			require.Equal(t, http.StatusOK, first.status, string(first.body))
			key := mustCacheKey(t, "near everywhere")
			var stored []byte
			require.Eventually(t, func() bool {
				data, found, err := tc.nodes[1].cache.Get(ctx, "sim-fast", key)
				stored = data
				return err == nil && found
			}, 10*time.Second, 10*time.Millisecond, "the answer was never stored")
			for _, nd := range tc.nodes {
				for range 2 {
					require.Equal(t, httpapi.CacheHit, deterministicInfer(t, nd, "near everywhere", nil).header.Get("X-Shoal-Cache"), nd.Name())
				}
				require.Positive(t, near(nd), "%s: the hit was not near", nd.Name())
			}
			// Through a follower, as the admin API would call it.
			leader := tc.waitLeader(tc.nodes...)
			via := tc.nodes[0]
			if via.Name() == leader {
				via = tc.nodes[1]
			}
			require.NoError(t, via.purgeCache(ctx, "sim-fast"))
			// The answer from before the purge lands in the shared cache after it.
			require.NoError(t, via.cache.Set(ctx, "sim-fast", key, stored, time.Hour))
			_, found, err := tc.nodes[2].cache.Get(ctx, "sim-fast", key)
			require.NoError(t, err)
			require.True(t, found, "the late store is in the shared cache")
			for i, nd := range tc.nodes {
				before := near(nd)
				res := deterministicInfer(t, nd, "near everywhere", nil)
				require.Equal(t, before, near(nd), "%s answered from its near cache after the purge", nd.Name())
				if i == 0 {
					// The first to ask after the purge; the others may hit
					// the answer it stores.
					require.Equal(t, httpapi.CacheMiss, res.header.Get("X-Shoal-Cache"), "%s served an answer from before the purge", nd.Name())
				}
			}
		})
	}
}

// A body answered from the cache keeps its decoded request and key in the
// node's request memo; turning lowercasing on must still give it the
// lowercased key, not the one memoized before.
func TestCacheLowercaseAppliesToABodyAskedBefore(t *testing.T) {
	nd := mustNewCluster(t, 1, nil).nodes[0]
	ctx := context.Background()
	const input = "Mixed Case Question"
	require.Equal(t, httpapi.CacheMiss, deterministicInfer(t, nd, input, nil).header.Get("X-Shoal-Cache"))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, httpapi.CacheHit, deterministicInfer(c, nd, input, nil).header.Get("X-Shoal-Cache"))
	}, 5*time.Second, 10*time.Millisecond, "the first answer was never stored")
	// Asked again, so it is answered from the memo's copy.
	require.Equal(t, httpapi.CacheHit, deterministicInfer(t, nd, input, nil).header.Get("X-Shoal-Cache"))

	require.NoError(t, nd.applyCommand(ctx, consensus.SetCacheSettings{Settings: consensus.CacheSettings{
		Enabled: true, DefaultTTL: time.Hour, Lowercase: true}}))
	require.Eventually(t, func() bool {
		_, lower := nd.cacheSettings()
		return lower
	}, 10*time.Second, 10*time.Millisecond)
	// Only the case-keeping key holds an answer, so the lowercased one misses.
	require.Equal(t, httpapi.CacheMiss, deterministicInfer(t, nd, input, nil).header.Get("X-Shoal-Cache"),
		"the key memoized before lowercasing was turned on answered")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, httpapi.CacheHit, deterministicInfer(c, nd, "mixed case question", nil).header.Get("X-Shoal-Cache"))
	}, 5*time.Second, 10*time.Millisecond, "the lowercased answer was never stored")
}

// Requests of one memoized body share its decoded request's slices; under
// the race detector, hits, bypasses and priorities mixed on the same body
// show that no request writes into what another reads.
func TestOneBodyUnderMixedHeadersSharesNothingWritable(t *testing.T) {
	nd := mustNewCluster(t, 1, nil).nodes[0]
	const input = "asked by everyone"
	require.Equal(t, httpapi.CacheMiss, deterministicInfer(t, nd, input, nil).header.Get("X-Shoal-Cache"))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, httpapi.CacheHit, deterministicInfer(c, nd, input, nil).header.Get("X-Shoal-Cache"))
	}, 5*time.Second, 10*time.Millisecond, "the first answer was never stored")
	want := outputText(t, deterministicInfer(t, nd, input, nil).body)

	headers := []map[string]string{
		nil,
		{"X-Shoal-Priority": "high"},
		{"X-Shoal-Priority": "low", "Authorization": "Bearer sk-anyone-at-all-000000"},
		{"Cache-Control": "no-cache"},
		{"Cache-Control": "no-store", "X-Shoal-Timeout": "5s"},
	}
	var wg sync.WaitGroup
	errs := make(chan string, 4*25+4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				h := headers[(g+i)%len(headers)]
				res := deterministicInfer(goroutineT{errs}, nd, input, h)
				wantCache := httpapi.CacheHit
				if h["Cache-Control"] == "no-cache" {
					wantCache = httpapi.CacheBypass
				}
				got := res.header.Get("X-Shoal-Cache")
				switch {
				case res.status != http.StatusOK:
					errs <- fmt.Sprintf("%v: status %d %s", h, res.status, res.body)
				case h["Cache-Control"] != "no-store" && got != wantCache:
					errs <- fmt.Sprintf("%v: X-Shoal-Cache %q, want %q", h, got, wantCache)
				case !strings.Contains(string(res.body), want):
					errs <- fmt.Sprintf("%v: answer %s, want the text %q", h, res.body, want)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// goroutineT lets require's helpers run off the test's goroutine: a failure
// is sent to errs and ends only the calling goroutine.
type goroutineT struct{ errs chan<- string }

func (g goroutineT) Errorf(format string, args ...any) { g.errs <- fmt.Sprintf(format, args...) }
func (g goroutineT) FailNow()                          { runtime.Goexit() }
