package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/breaker"
	"github.com/shoal-dev/shoal/ops"
)

// metricValue reads one sample from a node's /metrics; found is false when absent.
func metricValue(t require.TestingT, addr, sample string) (float64, bool) {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	r := doJSON(t, http.MethodGet, "http://"+addr+"/metrics", "", nil)
	require.Equal(t, http.StatusOK, r.status)
	for _, line := range strings.Split(string(r.body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f, true
		}
	}
	return 0, false
}

// breakerComponent is the breakers entry of a node's /health.
func breakerComponent(t *testing.T, addr string) ops.Component {
	t.Helper()
	r := doJSON(t, http.MethodGet, "http://"+addr+"/health", "", nil)
	var rep ops.Report
	require.NoError(t, json.Unmarshal(r.body, &rep), string(r.body))
	return rep.Components["breakers"]
}

// The error-rate trip, seen from outside: a backend that fails every other request never
// fails twice in a row, so the consecutive-failure threshold (1000 here) never trips; once
// breaker.RateMin requests are in the window with half of them failed, the breaker opens.
// No admin token is configured.
func TestErrorRateTripsBreakerBlackBox(t *testing.T) {
	up := newUpstream(t)
	n := startTestNode(t, func(c *Config) {
		c.Models = []ModelConfig{openAIModel(up.srv.URL)}
		c.CircuitBreaker.FailureThreshold = 1000
		c.CircuitBreaker.Timeout = time.Minute
	})
	addr := n.HTTPAddr()
	// Transitions go through Raft: wait for the node to lead.
	require.Eventually(t, func() bool { return n.Store().IsLeader() }, apiWait, 10*time.Millisecond)
	isOpen := func() bool { return fmt.Sprint(breakerComponent(t, addr).Data["open"]) == "[up]" }
	sent := 0
	for ; sent < 3*breaker.RateMin; sent++ {
		if isOpen() {
			break
		}
		up.failing.Store(sent%2 == 0)
		res := inferUp(t, n, sent)
		// The breaker opens through Raft, so it may open between isOpen
		// and this request: then the node refuses it with 503.
		if res.status == http.StatusServiceUnavailable && isOpen() {
			break
		}
		if sent%2 == 0 {
			require.Equal(t, http.StatusBadGateway, res.status, string(res.body))
		} else {
			require.Equal(t, http.StatusOK, res.status, string(res.body))
		}
		if sent+1 < breaker.RateMin {
			require.False(t, isOpen(), "opened before %d requests were in the window", breaker.RateMin)
		}
	}
	require.Less(t, sent, 3*breaker.RateMin, "the error rate never tripped the breaker")
	t.Logf("breaker opened after %d requests, half failed", sent)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v, ok := metricValue(c, addr, `inference_breaker_state{model="up",node="test-node"}`)
		assert.True(c, ok, "no breaker state sample")
		assert.Equal(c, 2.0, v)
	}, apiWait, 20*time.Millisecond, "the breaker state metric never said open")

	// While open the model is not run here: the upstream sees nothing more.
	calls := up.calls.Load()
	up.failing.Store(false)
	res := inferUp(t, n, 1000)
	require.GreaterOrEqual(t, res.status, 500, string(res.body))
	require.NotEmpty(t, res.header.Get("Retry-After"))
	require.Equal(t, calls, up.calls.Load())
}

// Retry-budget exhaustion, seen from outside: n1's backend fails every request, and n1 sends
// every other request to itself (round-robin). Each local failure is retried on n2 while the
// budget lasts (10 retries, refilled by one per 5 requests), then answered 502 without a retry.
// Fewer than breaker.RateMin requests fail on n1, so its breaker stays closed throughout. No
// admin token is configured.
func TestRetryBudgetExhaustionBlackBox(t *testing.T) {
	ups := []*upstream{newUpstream(t), newUpstream(t)}
	ups[0].failing.Store(true)
	tc := mustNewCluster(t, 2, func(i int, cfg *Config) {
		cfg.Admin.Token = ""
		cfg.Models = []ModelConfig{openAIModel(ups[i].srv.URL)}
		cfg.CircuitBreaker.FailureThreshold = 1000
		cfg.Router.Policy = "round-robin"
	})
	entry := tc.nodes[0]
	require.Eventually(t, func() bool { return len(entry.candidates("up")) == 2 }, clusterWait, 10*time.Millisecond)

	retried, direct, refused := 0, 0, 0
	for i := 0; retried+refused < breaker.RateMin-1 && i < 100; i++ {
		res := inferUp(t, entry, i)
		switch res.status {
		case http.StatusOK:
			require.Equal(t, "n2", res.header.Get("X-Shoal-Node"))
			if strings.Contains(res.header.Get("X-Shoal-Route"), "retry") {
				retried++
				continue
			}
			direct++
		case http.StatusBadGateway:
			require.GreaterOrEqual(t, retried, 10, "request %d answered 502 while the budget lasted", i)
			refused++
		default:
			t.Fatalf("request %d: status %d: %s", i, res.status, res.body)
		}
	}
	t.Logf("%d retried on n2, %d sent to n2 directly, %d answered 502 once the budget ran out", retried, direct, refused)
	require.Positive(t, refused, "the budget never ran out")
	v, ok := metricValue(t, entry.HTTPAddr(), `inference_retries_total{reason="budget_exhausted"}`)
	require.True(t, ok)
	require.EqualValues(t, refused, v)
	c := breakerComponent(t, entry.HTTPAddr())
	require.Empty(t, c.Data["open"], "n1's breaker must not have tripped: %+v", c)
}
