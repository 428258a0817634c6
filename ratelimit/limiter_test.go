package ratelimit

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewValidatesConfig(t *testing.T) {
	c := localCache(t)
	tests := []struct {
		name string
		cfg  Config
		err  string
	}{
		{"NoCounter", Config{}, "no counter"},
		{"MaxBlockNegative", Config{Counter: c, MaxBlock: -1}, "max block"},
		{"PrefetchAbove1", Config{Counter: c, PrefetchAt: 1.5}, "prefetch"},
		{"NegativeDuration", Config{Counter: c, IdleReturn: -time.Second}, "negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			require.ErrorContains(t, err, tc.err)
		})
	}
}

func TestSingleNodeAdmitsExactlyTheLimit(t *testing.T) {
	clock := newFakeClock()
	c := localCache(t)
	l := newLimiter(t, Config{Counter: c, Nodes: nodes(1), Now: clock.Now})
	rule := Rule{Policy: PolicyClient, Key: "ip:10.0.0.1", Limit: 10, Window: time.Minute}
	for i := range 10 {
		d := l.Allow(context.Background(), []Rule{rule})
		require.True(t, d.Allowed, "request %d", i)
		require.Equal(t, PolicyClient, d.Policy)
		require.Equal(t, 10, d.Limit)
		require.Equal(t, 10-i-1, d.Remaining, "a lone node knows the exact remainder")
	}
	d := l.Allow(context.Background(), []Rule{rule})
	require.False(t, d.Allowed)
	require.Equal(t, PolicyClient, d.Policy)
	require.Zero(t, d.Remaining)
	require.False(t, d.Degraded)
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 10, counterValue(ct, c, rule, clock.Now())) },
		waitTimeout, waitTick, "the counter holds what was admitted, and no overshoot")
}

// Three nodes sharing one counter, hammered concurrently, never admit more than the limit, and
// every token is eventually admitted.
func TestSharedCounterConcurrentNodesNeverOverAdmit(t *testing.T) {
	clock := newFakeClock()
	c := localCache(t)
	rule := Rule{Policy: PolicyKey, Key: "k", Limit: 100, Window: time.Minute}
	ls := make([]*Limiter, 3)
	for i := range ls {
		ls[i] = newLimiter(t, Config{Counter: c, Nodes: nodes(3), Now: clock.Now})
	}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for _, l := range ls {
		for range 4 {
			wg.Go(func() { admitted.Add(int64(admitN(l, 200, rule))) })
		}
	}
	wg.Wait()
	require.LessOrEqual(t, admitted.Load(), int64(100))
	// Tokens a node saw no room for (another node's lease overshot meanwhile) come back at the
	// node's next look, RetryEvery later.
	require.Eventually(t, func() bool {
		clock.Advance(DefaultRetryEvery)
		for _, l := range ls {
			admitted.Add(int64(admitN(l, 20, rule)))
		}
		return admitted.Load() >= 100
	}, waitTimeout, waitTick)
	require.Equal(t, int64(100), admitted.Load())
}

func TestWindowRolloverResets(t *testing.T) {
	clock := newFakeClock()
	l := newLimiter(t, Config{Counter: localCache(t), Nodes: nodes(1), Now: clock.Now})
	rule := Rule{Policy: PolicyKey, Key: "k", Limit: 5, Window: time.Minute}
	require.Equal(t, 5, admitAll(t, l, rule))
	first := l.Allow(context.Background(), []Rule{rule}).Reset
	clock.Advance(time.Minute)
	d := l.Allow(context.Background(), []Rule{rule})
	require.True(t, d.Allowed)
	require.Equal(t, first.Add(time.Minute), d.Reset)
	require.Equal(t, 4, admitAll(t, l, rule))
}

func TestRetryAfterIsTimeToWindowEnd(t *testing.T) {
	clock := newFakeClock()
	l := newLimiter(t, Config{Counter: localCache(t), Nodes: nodes(1), Now: clock.Now})
	clock.Advance(13*time.Second + 500*time.Millisecond)
	rule := Rule{Policy: PolicyEndpoint, Key: "/v1/infer", Limit: 1, Window: time.Minute}
	ok := l.Allow(context.Background(), []Rule{rule})
	require.True(t, ok.Allowed)
	require.Zero(t, ok.RetryAfter)
	d := l.Allow(context.Background(), []Rule{rule})
	require.False(t, d.Allowed)
	require.Equal(t, 46*time.Second+500*time.Millisecond, d.RetryAfter)
	require.Equal(t, time.Date(2030, 1, 1, 10, 1, 0, 0, time.UTC), d.Reset.UTC())

	hour := Rule{Policy: PolicyEndpoint, Key: "/v1/infer", Limit: 1, Window: time.Hour}
	require.True(t, l.Allow(context.Background(), []Rule{hour}).Allowed)
	d = l.Allow(context.Background(), []Rule{hour})
	require.False(t, d.Allowed)
	require.Equal(t, 59*time.Minute+46*time.Second+500*time.Millisecond, d.RetryAfter, "hour windows align to the hour")
}

func TestAllOrNothingAcrossRules(t *testing.T) {
	clock := newFakeClock()
	l := newLimiter(t, Config{Counter: localCache(t), Nodes: nodes(1), Now: clock.Now})
	loose := Rule{Policy: PolicyEndpoint, Key: "/v1/infer", Limit: 5, Window: time.Minute}
	tight := Rule{Policy: PolicyKey, Key: "k", Limit: 3, Window: time.Minute}
	require.Equal(t, 3, admitAll(t, l, loose, tight))
	d := l.Allow(context.Background(), []Rule{loose, tight})
	require.False(t, d.Allowed)
	require.Equal(t, PolicyKey, d.Policy, "the denying rule decides")
	require.Equal(t, 3, d.Limit)
	require.Equal(t, 2, admitAll(t, l, loose), "denied requests took nothing from the loose rule")
}

func TestAllowedDecisionReportsTightestRule(t *testing.T) {
	clock := newFakeClock()
	l := newLimiter(t, Config{Counter: localCache(t), Nodes: nodes(1), Now: clock.Now})
	d := l.Allow(context.Background(), []Rule{
		{Policy: PolicyEndpoint, Key: "/v1/infer", Limit: 100, Window: time.Minute},
		{Policy: PolicyKey, Key: "k", Limit: 10, Window: time.Minute},
		{Policy: PolicyTenant, Key: "t", Limit: 50, Window: time.Minute},
	})
	require.True(t, d.Allowed)
	require.Equal(t, PolicyKey, d.Policy)
	require.Equal(t, "k", d.Key)
	require.Equal(t, 10, d.Limit)
	require.Equal(t, 9, d.Remaining)
}

func TestRulesWithoutLimitAreIgnored(t *testing.T) {
	l := newLimiter(t, Config{Counter: localCache(t)})
	require.Equal(t, Decision{Allowed: true}, l.Allow(context.Background(), nil))
	d := l.Allow(context.Background(), []Rule{{Policy: PolicyKey, Key: "k"}, {Policy: PolicyKey, Key: "k", Limit: 5, Window: -1}})
	require.Equal(t, Decision{Allowed: true}, d)
	require.Zero(t, l.Stats().Buckets)
}

func TestCostAboveLimitIsDenied(t *testing.T) {
	l := newLimiter(t, Config{Counter: localCache(t), Nodes: nodes(1)})
	d := l.Allow(context.Background(), []Rule{{Policy: PolicyKeyTPM, Key: "k", Limit: 100, Cost: 101}})
	require.False(t, d.Allowed)
	require.True(t, l.Allow(context.Background(), []Rule{{Policy: PolicyKeyTPM, Key: "k", Limit: 100, Cost: 100}}).Allowed)
}

func TestChargeDebitsTokensPerMinute(t *testing.T) {
	clock := newFakeClock()
	c := localCache(t)
	l := newLimiter(t, Config{Counter: c, Nodes: nodes(1), Now: clock.Now})
	tpm := func(cost int) Rule {
		return Rule{Policy: PolicyKeyTPM, Key: "k", Limit: 1000, Window: time.Minute, Cost: cost}
	}
	allow := func(cost int) Decision { return l.Allow(context.Background(), []Rule{tpm(cost)}) }

	require.True(t, allow(100).Allowed)
	l.Charge(context.Background(), tpm(0), 850) // the response was longer than the estimate
	d := allow(100)
	require.False(t, d.Allowed, "950 of 1000 tokens are spent")
	require.Equal(t, PolicyKeyTPM, d.Policy)
	require.True(t, allow(50).Allowed)
	require.False(t, allow(1).Allowed)
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 1000, counterValue(ct, c, tpm(0), clock.Now())) }, waitTimeout, waitTick)

	l.Charge(context.Background(), tpm(0), 200)
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 1200, counterValue(ct, c, tpm(0), clock.Now())) },
		waitTimeout, waitTick, "a charge past the limit is recorded")
	l.Charge(context.Background(), tpm(0), -300)
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 900, counterValue(ct, c, tpm(0), clock.Now())) },
		waitTimeout, waitTick, "a refund goes back through the counter")
	clock.Advance(DefaultRetryEvery)
	require.Eventually(t, func() bool { return allow(100).Allowed }, waitTimeout, waitTick)
	require.False(t, allow(1).Allowed, "a refund frees only what the window really has left")

	clock.Advance(time.Minute)
	require.True(t, allow(1000).Allowed, "the next window starts afresh")
}

func TestChargeIsSeenByOtherNodes(t *testing.T) {
	clock := newFakeClock()
	c := localCache(t)
	a := newLimiter(t, Config{Counter: c, Nodes: nodes(2), Now: clock.Now})
	b := newLimiter(t, Config{Counter: c, Nodes: nodes(2), Now: clock.Now})
	tpm := Rule{Policy: PolicyTenantTPM, Key: "acme", Limit: 1000, Window: time.Minute, Cost: 10}
	require.True(t, a.Allow(context.Background(), []Rule{tpm}).Allowed)
	a.Charge(context.Background(), tpm, 990)
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 1000, counterValue(ct, c, tpm, clock.Now())) }, waitTimeout, waitTick)
	tpm.Cost = 1
	require.False(t, b.Allow(context.Background(), []Rule{tpm}).Allowed)
}

func TestCounterFailureFallsBackToShare(t *testing.T) {
	clock := newFakeClock()
	flaky := &flakyCounter{c: localCache(t)}
	flaky.failing.Store(true)
	l := newLimiter(t, Config{Counter: flaky, Nodes: nodes(3), Now: clock.Now})
	rule := Rule{Policy: PolicyClient, Key: "ip:10.0.0.1", Limit: 90, Window: time.Minute}

	d := l.Allow(context.Background(), []Rule{rule})
	require.True(t, d.Allowed)
	require.True(t, d.Degraded)
	require.Equal(t, 29, d.Remaining, "of this node's share of 30")
	require.Equal(t, 29, admitAll(t, l, rule), "each of 3 nodes admits a third of the limit")
	d = l.Allow(context.Background(), []Rule{rule})
	require.False(t, d.Allowed)
	require.True(t, d.Degraded)
	st := l.Stats()
	require.True(t, st.Degraded)
	require.Equal(t, int64(30), st.FallbackAllowed)
	require.Positive(t, st.CounterErrors)
	require.Contains(t, st.LastError, "injected")
}

func TestCounterRecoveryChargesFallbackAdmissions(t *testing.T) {
	clock := newFakeClock()
	cache := localCache(t)
	flaky := &flakyCounter{c: cache}
	flaky.failing.Store(true)
	l := newLimiter(t, Config{Counter: flaky, Nodes: nodes(3), Now: clock.Now})
	rule := Rule{Policy: PolicyClient, Key: "ip:10.0.0.1", Limit: 90, Window: time.Minute}
	require.Equal(t, 30, admitAll(t, l, rule))

	flaky.failing.Store(false)
	clock.Advance(DefaultRetryEvery)
	d := l.Allow(context.Background(), []Rule{rule})
	require.False(t, d.Allowed, "decided by the exhausted share; it starts the retry")
	// Degraded clears as the counter answers, before the lease's outcome is
	// in the bucket; until then the share still decides (and is spent). A
	// lease counts once its outcome is recorded.
	require.Eventually(t, func() bool { s := l.Stats(); return !s.Degraded && s.Leases > 0 }, waitTimeout, waitTick)
	require.GreaterOrEqual(t, counterValue(t, cache, rule, clock.Now()), 30, "fallback admissions were charged")
	require.Equal(t, 60, admitAll(t, l, rule), "the window admits only what the fallback left")
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 90, counterValue(ct, cache, rule, clock.Now())) }, waitTimeout, waitTick)
}

func TestSlowCounterFirstRequestFallsBackAfterLeaseTimeout(t *testing.T) {
	block := make(chan struct{})
	slow := &slowCounter{c: localCache(t), block: block}
	l := newLimiter(t, Config{Counter: slow, Nodes: nodes(2), LeaseTimeout: 20 * time.Millisecond, CallTimeout: waitTimeout})
	rule := Rule{Policy: PolicyKey, Key: "k", Limit: 10}
	d := l.Allow(context.Background(), []Rule{rule})
	require.True(t, d.Allowed, "decided by the share while the lease hangs")
	require.True(t, d.Degraded)
	require.Equal(t, int64(1), l.Stats().Waits)
	d = l.Allow(context.Background(), []Rule{rule})
	require.True(t, d.Allowed)
	require.True(t, d.Degraded)
	require.Equal(t, int64(1), l.Stats().Waits, "once one request gave up on the lease, the next do not wait for it")
	close(block)
	require.Eventually(t, func() bool { return l.Stats().Leases > 0 }, waitTimeout, waitTick)
	d = l.Allow(context.Background(), []Rule{rule})
	require.True(t, d.Allowed)
	require.False(t, d.Degraded, "served from the lease again")
}

// slowCounter holds every call until block closes.
type slowCounter struct {
	c     Counter
	block chan struct{}
}

func (s *slowCounter) Incr(ctx context.Context, ns, key string, delta int, ttl time.Duration) (int, error) {
	select {
	case <-s.block:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return s.c.Incr(ctx, ns, key, delta, ttl)
}

func TestIdleReturnGivesTokensBack(t *testing.T) {
	clock := newFakeClock()
	c := localCache(t)
	l := newLimiter(t, Config{Counter: c, Nodes: nodes(2), Now: clock.Now, IdleReturn: time.Second})
	rule := Rule{Policy: PolicyKey, Key: "k", Limit: 100, Window: time.Minute}
	require.True(t, l.Allow(context.Background(), []Rule{rule}).Allowed)
	require.Equal(t, 25, counterValue(t, c, rule, clock.Now()), "a first lease is limit/(2*nodes)")
	clock.Advance(time.Second)
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 1, counterValue(ct, c, rule, clock.Now())) }, waitTimeout, waitTick)
	require.Equal(t, int64(24), l.Stats().ReturnedTokens)
}

func TestClientMovingBetweenNodesGetsWholeLimit(t *testing.T) {
	clock := newFakeClock()
	c := localCache(t)
	cfg := Config{Counter: c, Nodes: nodes(2), Now: clock.Now, IdleReturn: time.Second}
	a, b := newLimiter(t, cfg), newLimiter(t, cfg)
	rule := Rule{Policy: PolicyKey, Key: "k", Limit: 100, Window: time.Minute}
	require.True(t, a.Allow(context.Background(), []Rule{rule}).Allowed)
	require.Equal(t, 75, admitAll(t, b, rule), "node a still holds its lease")

	clock.Advance(time.Second) // a has been idle for the key long enough to give its lease back
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 76, counterValue(ct, c, rule, clock.Now())) }, waitTimeout, waitTick)
	more := 0
	require.Eventually(t, func() bool {
		if b.Allow(context.Background(), []Rule{rule}).Allowed {
			more++
			return true
		}
		return false
	}, waitTimeout, waitTick)
	more += admitAll(t, b, rule)
	require.Equal(t, 24, more)
}

func TestCloseReturnsLeasedTokens(t *testing.T) {
	clock := newFakeClock()
	c := localCache(t)
	l, err := New(Config{Counter: c, Nodes: nodes(2), Now: clock.Now})
	require.NoError(t, err)
	rule := Rule{Policy: PolicyKey, Key: "k", Limit: 100, Window: time.Minute}
	require.True(t, l.Allow(context.Background(), []Rule{rule}).Allowed)
	require.Equal(t, 25, counterValue(t, c, rule, clock.Now()))
	require.NoError(t, l.Close(context.Background()))
	require.Equal(t, 1, counterValue(t, c, rule, clock.Now()))
	require.ErrorIs(t, l.Close(context.Background()), ErrClosed)

	d := l.Allow(context.Background(), []Rule{rule})
	require.True(t, d.Allowed, "a closed limiter still answers from its share")
	require.True(t, d.Degraded)
}

func TestWarmLeasesMakeNoCounterCallPerRequest(t *testing.T) {
	counting := &flakyCounter{c: localCache(t)}
	l := newLimiter(t, Config{Counter: counting, Nodes: nodes(3)})
	rule := Rule{Policy: PolicyEndpoint, Key: "/v1/infer", Limit: 1_000_000, Window: time.Hour}
	const requests = 20_000
	require.Equal(t, requests, admitN(l, requests, rule))
	require.Less(t, counting.calls.Load(), int64(requests/200), "a lease serves hundreds of requests")
}

func TestLongKeysAreHashed(t *testing.T) {
	c := localCache(t)
	l := newLimiter(t, Config{Counter: c, Nodes: nodes(1)})
	long1 := Rule{Policy: PolicyClient, Key: "ip:" + strings.Repeat("a", 1000), Limit: 1, Window: time.Minute}
	long2 := long1
	long2.Key += "b"
	k1, k2 := counterKey(long1.id(), 7), counterKey(long2.id(), 7)
	require.LessOrEqual(t, len(k1), maxCounterKey)
	require.NotEqual(t, k1, k2)
	require.True(t, l.Allow(context.Background(), []Rule{long1}).Allowed)
	require.True(t, l.Allow(context.Background(), []Rule{long2}).Allowed)
	require.False(t, l.Allow(context.Background(), []Rule{long1}).Allowed)
	require.False(t, l.Stats().Degraded)
}

func TestPastWindowsAreForgotten(t *testing.T) {
	clock := newFakeClock()
	l := newLimiter(t, Config{Counter: localCache(t), Nodes: nodes(1), Now: clock.Now, IdleReturn: 40 * time.Millisecond})
	for i := range 5 {
		require.True(t, l.Allow(context.Background(), []Rule{{Policy: PolicyClient, Key: string(rune('a' + i)), Limit: 3, Window: time.Minute}}).Allowed)
	}
	require.Equal(t, 5, l.Stats().Buckets)
	clock.Advance(time.Minute)
	require.Eventually(t, func() bool { return l.Stats().Buckets == 0 }, waitTimeout, waitTick)
}

func TestChargeDuringLeaseIsSentAfterIt(t *testing.T) {
	clock := newFakeClock()
	cache := localCache(t)
	block := make(chan struct{})
	gated := &slowCounter{c: cache, block: block}
	l := newLimiter(t, Config{Counter: gated, Nodes: nodes(1), Now: clock.Now, CallTimeout: waitTimeout})
	rule := Rule{Policy: PolicyKeyTPM, Key: "k", Limit: 1000, Window: time.Minute}
	l.Charge(context.Background(), rule, 300) // starts a lease, held at the gate
	l.Charge(context.Background(), rule, 200) // arrives while it is in flight
	close(block)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		balance, debt := held(l, rule)
		assert.Zero(ct, debt)
		assert.Equal(ct, 500, counterValue(ct, cache, rule, clock.Now())-balance)
	}, waitTimeout, waitTick, "both charges reach the counter without another request")
}

// held returns what this node holds for rule: leased tokens and debt not yet sent.
func held(l *Limiter, rule Rule) (balance, debt int) {
	rule.normalize()
	b := l.bucketFor(rule.id())
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.balance, b.debt
}

func TestLimitChangeAppliesWithinTheWindow(t *testing.T) {
	clock := newFakeClock()
	l := newLimiter(t, Config{Counter: localCache(t), Nodes: nodes(1), Now: clock.Now})
	rule := Rule{Policy: PolicyEndpoint, Key: "/v1/infer", Limit: 5, Window: time.Minute}
	require.Equal(t, 5, admitAll(t, l, rule))
	rule.Limit = 8
	require.Equal(t, 3, admitAll(t, l, rule), "a raised limit admits the difference at once")
	rule.Limit = 4
	require.Zero(t, admitAll(t, l, rule), "a lowered limit below the count denies")
}
