package ratelimit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Client identities are client input: once idle and given back, their buckets are forgotten
// within the window, so memory follows the clients active now, not those seen this window.
func TestIdleClientBucketsAreForgotten(t *testing.T) {
	clock := newFakeClock()
	c := localCache(t)
	l := newLimiter(t, Config{Counter: c, Nodes: nodes(1), Now: clock.Now, IdleReturn: time.Second})
	rule := func(i int) Rule {
		return Rule{Policy: PolicyClient, Key: fmt.Sprintf("ip:10.0.%d.%d", i/256, i%256), Limit: 5, Window: time.Minute}
	}
	const clients = 1000
	for i := range clients {
		require.True(t, l.Allow(context.Background(), []Rule{rule(i)}).Allowed)
	}
	require.Equal(t, clients, l.Stats().Buckets)
	clock.Advance(time.Second)
	require.Eventually(t, func() bool { return l.Stats().Buckets == 0 }, waitTimeout, waitTick)
	// What they leased went back; what they used stays counted for the window.
	require.Equal(t, 1, counterValue(t, c, rule(7), clock.Now()))
	// A forgotten client is still held to its limit in the window.
	require.Equal(t, 4, admitAll(t, l, rule(7)))
}

// Token-per-minute buckets stay until their window ends: a refund after a long request is
// bounded by what the bucket admitted.
func TestIdleTokenBucketsAreKeptForTheirWindow(t *testing.T) {
	clock := newFakeClock()
	l := newLimiter(t, Config{Counter: localCache(t), Nodes: nodes(1), Now: clock.Now, IdleReturn: time.Second})
	rule := Rule{Policy: PolicyKeyTPM, Key: "k", Limit: 1000, Window: time.Minute, Cost: 100}
	require.True(t, l.Allow(context.Background(), []Rule{rule}).Allowed)
	clock.Advance(2 * time.Second)
	require.Eventually(t, func() bool { b, _ := held(l, rule); return b == 0 }, waitTimeout, waitTick, "idle return")
	require.Equal(t, 1, l.Stats().Buckets)
	clock.Advance(time.Minute)
	require.Eventually(t, func() bool { return l.Stats().Buckets == 0 }, waitTimeout, waitTick)
}

// With MaxBuckets held, a new key is decided by the counter itself: still exact, no state.
func TestFullTableDecidesNewKeysByTheCounter(t *testing.T) {
	clock := newFakeClock()
	c := localCache(t)
	l := newLimiter(t, Config{Counter: c, Nodes: nodes(1), Now: clock.Now, MaxBuckets: 10})
	for i := range 10 {
		require.True(t, l.Allow(context.Background(), []Rule{{Policy: PolicyClient, Key: fmt.Sprint("ip:", i), Limit: 5}}).Allowed)
	}
	late := Rule{Policy: PolicyClient, Key: "ip:late", Limit: 3, Window: time.Minute}
	d := l.Allow(context.Background(), []Rule{late})
	require.True(t, d.Allowed)
	require.Equal(t, 3, d.Limit)
	require.Equal(t, 2, d.Remaining)
	require.Equal(t, 2, admitN(l, 5, late))
	st := l.Stats()
	require.Equal(t, 10, st.Buckets)
	require.EqualValues(t, 6, st.Overflow)
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 3, counterValue(ct, c, late, clock.Now())) }, waitTimeout, waitTick,
		"denied requests give their tokens back")

	// All or nothing: a later rule's denial gives the direct tokens back.
	other := Rule{Policy: PolicyClient, Key: "ip:other", Limit: 10, Window: time.Minute}
	require.False(t, l.Allow(context.Background(), []Rule{other, late}).Allowed)
	require.EventuallyWithT(t, func(ct *assert.CollectT) { assert.Equal(ct, 0, counterValue(ct, c, other, clock.Now())) }, waitTimeout, waitTick)
}

func TestFullTableDeniesWhenTheCounterFails(t *testing.T) {
	flaky := &flakyCounter{c: localCache(t)}
	l := newLimiter(t, Config{Counter: flaky, Nodes: nodes(1), MaxBuckets: 1})
	require.True(t, l.Allow(context.Background(), []Rule{{Policy: PolicyClient, Key: "ip:a", Limit: 5}}).Allowed)
	flaky.failing.Store(true)
	d := l.Allow(context.Background(), []Rule{{Policy: PolicyClient, Key: "ip:b", Limit: 5}})
	require.False(t, d.Allowed)
	require.True(t, d.Degraded)
	require.Equal(t, 1, l.Stats().Buckets)
}
