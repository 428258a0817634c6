package node

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/breaker"
	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/consensus"
)

// upstream is an in-test OpenAI-compatible model server (outside the
// project, so a fake is the right stand-in) that can be told to fail.
type upstream struct {
	srv     *httptest.Server
	failing atomic.Bool
	calls   atomic.Int64
	// delay, in nanoseconds, holds each answer back.
	delay atomic.Int64
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		time.Sleep(time.Duration(u.delay.Load()))
		if u.failing.Load() {
			http.Error(w, `{"error":{"message":"upstream down","type":"server_error"}}`, http.StatusInternalServerError)
			return
		}
		var body struct {
			Prompt []string `json:"prompt"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		choices := make([]map[string]any, max(1, len(body.Prompt)))
		for i := range choices {
			choices[i] = map[string]any{"index": i, "text": "ok", "finish_reason": "stop"}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"id": "x", "object": "text_completion", "choices": choices,
			"usage": map[string]int{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func openAIModel(url string) ModelConfig {
	m := DefaultModelConfig("up", "openai")
	m.OpenAI.URL = url + "/v1"
	m.OpenAI.Model = "upstream-model"
	m.OpenAI.Timeout = 5 * time.Second
	m.FlushTimeout = time.Millisecond
	return m
}

func inferUp(t require.TestingT, nd *Node, i int) httpResult {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	// temperature 1 without a seed: never cached, every request runs.
	return doJSON(t, http.MethodPost, "http://"+nd.HTTPAddr()+"/v1/infer", "", map[string]any{
		"model": "up", "input": fmt.Sprintf("q%d", i), "parameters": map[string]any{"temperature": 1}})
}

func TestBreakerOpensOnFailingUpstreamAndClosesAfterRecovery(t *testing.T) {
	ups := []*upstream{newUpstream(t), newUpstream(t), newUpstream(t)}
	tc := mustNewCluster(t, 3, func(i int, cfg *Config) {
		withAdminToken(i, cfg)
		cfg.Models = []ModelConfig{openAIModel(ups[i].srv.URL)}
		cfg.CircuitBreaker.FailureThreshold = 3
		cfg.CircuitBreaker.Timeout = 500 * time.Millisecond
		// The test polls every few ms until the breaker opens: on a loaded
		// machine that is more than the default 1000 rpm of one client.
		cfg.RateLimit.RPM = config.DevRPM
	})
	tc.waitServing("up", tc.nodes...)
	sick := tc.nodes[0]
	ups[0].failing.Store(true)

	// Requests keep succeeding while the sick node's backend fails: each
	// failure is retried on a healthy node.
	i := 0
	opened := assert.EventuallyWithT(t, func(c *assert.CollectT) {
		i++
		res := inferUp(c, sick, i)
		// Every answer must be a 200: a wrong one fails the test (Errorf is
		// safe from this goroutine) and ends the wait.
		if !assert.Equal(t, http.StatusOK, res.status, string(res.body)) {
			return
		}
		for _, nd := range tc.nodes {
			assert.Equal(c, consensus.BreakerOpen, nd.Store().State().Breaker(sick.Name(), "up").State, "breaker as %s sees it", nd.Name())
		}
	}, clusterWait, 5*time.Millisecond, "breaker never opened on every node")
	if !opened {
		t.Fatalf("the sick upstream saw %d calls of %d requests; %s", ups[0].calls.Load(), i, breakerDiagnosis(sick, "up"))
	}

	// While open, the sick node gets no work, from any entry node.
	before := ups[0].calls.Load()
	for j := 0; j < 30; j++ {
		res := inferUp(t, tc.nodes[j%3], 1000+j)
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		require.NotEqual(t, sick.Name(), res.header.Get("X-Shoal-Node"))
	}
	require.LessOrEqual(t, ups[0].calls.Load()-before, int64(1), "an open breaker admits at most one probe")

	// After recovery a half-open probe closes the breaker.
	ups[0].failing.Store(false)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		i++
		inferUp(c, sick, i)
		assert.Equal(c, consensus.BreakerClosed, sick.Store().State().Breaker(sick.Name(), "up").State)
	}, clusterWait, 20*time.Millisecond, "breaker never closed after the upstream recovered")

	// Every node sees it closed (replication takes a moment).
	require.Eventually(t, func() bool {
		res := tryJSON(http.MethodGet, "http://"+tc.nodes[2].HTTPAddr()+"/admin/v1/breakers", testToken, nil)
		return res.status == http.StatusOK && strings.Contains(string(res.body), `"state": "closed"`)
	}, 5*time.Second, 10*time.Millisecond, "node 3 never saw the breaker closed")
	metrics := doJSON(t, http.MethodGet, "http://"+sick.HTTPAddr()+"/metrics", "", nil)
	require.Contains(t, string(metrics.body), `inference_breaker_state{model="up",node="n1"} 0`)
}

func TestFlappingUpstreamStaysWithinTransitionBound(t *testing.T) {
	up := newUpstream(t)
	tc := mustNewCluster(t, 1, func(_ int, cfg *Config) {
		cfg.Models = []ModelConfig{openAIModel(up.srv.URL)}
		cfg.CircuitBreaker.FailureThreshold = 1
		cfg.CircuitBreaker.Timeout = 50 * time.Millisecond
	})
	nd := tc.nodes[0]
	// The leader seeds the limit policy once; count only what follows.
	require.Eventually(t, func() bool { return nd.Store().State().Limits != nil }, clusterWait, 10*time.Millisecond)
	start := nd.Store().AppliedIndex()
	// Flip the upstream on every request for a few seconds.
	deadline := time.Now().Add(4 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		up.failing.Store(i%2 == 0)
		inferUp(t, nd, i)
	}
	transitions := nd.Store().AppliedIndex() - start
	t.Logf("%d raft entries for a flapping upstream in 4s", transitions)
	require.LessOrEqual(t, transitions, uint64(breaker.TransitionsPerMinute+2))
}

// An overloaded upstream's own Retry-After reaches the client, for a 429
// passed through and for a 5xx answered as 502.
func TestUpstreamRetryAfterReachesClient(t *testing.T) {
	var status atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "7")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(int(status.Load()))
		_, _ = w.Write([]byte(`{"error":{"message":"busy","type":"overloaded"}}`))
	}))
	t.Cleanup(srv.Close)
	tc := mustNewCluster(t, 1, func(i int, cfg *Config) {
		cfg.Models = []ModelConfig{openAIModel(srv.URL)}
		cfg.CircuitBreaker.FailureThreshold = 1000
	})
	for upstream, want := range map[int]int{http.StatusTooManyRequests: http.StatusTooManyRequests, http.StatusServiceUnavailable: http.StatusBadGateway} {
		status.Store(int64(upstream))
		res := inferUp(t, tc.nodes[0], upstream)
		require.Equal(t, want, res.status, string(res.body))
		require.Equal(t, "7", res.header.Get("Retry-After"))
	}
}

// breakerDiagnosis says, for a failed wait on a breaker, what nd's own
// breaker set and routing saw, so a failure on a loaded machine tells a
// breaker that never tripped from one whose transition was never
// committed.
func breakerDiagnosis(nd *Node, model string) string {
	st := nd.Store().State().Breaker(nd.Name(), model)
	resp, err := http.Get("http://" + nd.HTTPAddr() + "/metrics")
	if err != nil {
		return fmt.Sprintf("replicated state %s; metrics: %v", st.State, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var lines []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "inference_routed_total") || strings.HasPrefix(l, "inference_retries_total") ||
			strings.HasPrefix(l, "inference_breaker") || strings.HasPrefix(l, "inference_requests_total") {
			lines = append(lines, l)
		}
	}
	return fmt.Sprintf("replicated state %s (trips %d, leader %q); %s", st.State, st.Trips, nd.Store().LeaderID(), strings.Join(lines, "; "))
}

// A node's breaker protects it even while Raft cannot replicate the trip (here: no quorum,
// two of four voters down): after the threshold of failures the node stops sending its own
// backend work and routes to a healthy peer, so clients see no errors and the retry budget
// is not spent on a backend known to be down. Before, the node kept routing to itself until
// the transition was committed, and once the budget ran out clients got 502s.
func TestBreakerHoldsLocallyWithoutAQuorum(t *testing.T) {
	ups := []*upstream{newUpstream(t), newUpstream(t), newUpstream(t), newUpstream(t)}
	tc := mustNewCluster(t, 4, func(i int, cfg *Config) {
		cfg.Models = []ModelConfig{openAIModel(ups[i].srv.URL)}
		cfg.CircuitBreaker.FailureThreshold = 3
		cfg.CircuitBreaker.Timeout = time.Minute
		cfg.RateLimit.RPM = config.DevRPM
	})
	tc.waitServing("up", tc.nodes...)
	leader := tc.waitLeader(tc.nodes...)
	// Stop the leader and one follower; keep a failing node and a healthy one.
	var kept []int
	for i, nd := range tc.nodes {
		if nd.Name() != leader && len(kept) < 2 {
			kept = append(kept, i)
		}
	}
	for i, nd := range tc.nodes {
		if i != kept[0] && i != kept[1] {
			stopNode(nd)
		}
	}
	sick, healthy := tc.nodes[kept[0]], tc.nodes[kept[1]]
	require.Eventually(t, func() bool {
		c := sick.candidates("up")
		return len(c) == 2 && (c[0].Node == healthy.Name() || c[1].Node == healthy.Name())
	}, clusterWait, 20*time.Millisecond, "the stopped nodes never left the candidates")

	ups[kept[0]].failing.Store(true)
	before := ups[kept[0]].calls.Load()
	// The router may prefer either node at first; send until the sick backend has failed the
	// threshold's three times. Each failure is retried on the healthy node.
	// A plain loop: the checks run on the test's goroutine (Eventually's condition does not).
	deadline := time.Now().Add(clusterWait)
	var served []string
	for i := 0; ups[kept[0]].calls.Load()-before < 3; i++ {
		require.True(t, time.Now().Before(deadline), "the sick backend got %d calls, not 3; answers came from %v; %s",
			ups[kept[0]].calls.Load()-before, served[max(0, len(served)-20):], breakerDiagnosis(sick, "up"))
		res := inferUp(t, sick, i)
		require.Equal(t, http.StatusOK, res.status, "request %d: %s", i, res.body)
		served = append(served, res.header.Get("X-Shoal-Node")+"/"+res.header.Get("X-Shoal-Route"))
	}
	require.Equal(t, int64(3), ups[kept[0]].calls.Load()-before)
	for j := range 40 {
		res := inferUp(t, sick, 1000+j)
		require.Equal(t, http.StatusOK, res.status, "request %d: %s", j, res.body)
		require.Equal(t, healthy.Name(), res.header.Get("X-Shoal-Node"))
	}
	require.Equal(t, int64(3), ups[kept[0]].calls.Load()-before, "the sick backend kept getting work after the threshold")
	require.Equal(t, consensus.BreakerClosed, sick.Store().State().Breaker(sick.Name(), "up").State, "without a quorum nothing is replicated")
	health := doJSON(t, http.MethodGet, "http://"+sick.HTTPAddr()+"/health", "", nil)
	require.Contains(t, string(health.body), `"breakers":{"status":"unavailable","detail":"every model's breaker is open","data":{"open":["up"]}}`)
}
