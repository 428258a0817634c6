package node

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/scheduler/triton/tritontest"
)

// withTritonModel serves testModel from the fake Triton f, batching three
// requests at a time (a lone request waits a second).
func withTritonModel(f *tritontest.Server) func(*Config) {
	return func(c *Config) {
		m := DefaultModelConfig(testModel, "triton")
		m.Triton.URL, m.Triton.Model, m.Triton.Timeout = f.URL, "llm", 5*time.Second
		m.Triton.HealthInterval = 100 * time.Millisecond
		m.MaxSize, m.FlushTimeout = 3, time.Second
		c.Models = []ModelConfig{m}
	}
}

// A v2 infer call of three prompts reaches a batching Triton model as one
// upstream infer call with a [3, 1] BYTES tensor.
func TestTritonBackendSendsAFlushedBatchAsOneInferCall(t *testing.T) {
	f := tritontest.New("llm", 8)
	defer f.Close()
	n := startTestNode(t, withTritonModel(f))
	c := newV2Client(t, n)
	out, r := c.infer(testModel, v2InferRequest{Parameters: map[string]any{"max_tokens": 5}, Inputs: []v2Tensor{textInput("a b", "c", "d")}})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, []string{"re: a b", "re: c", "re: d"}, out.Outputs[0].Data)

	calls := f.Calls("/infer")
	require.Len(t, calls, 1)
	require.Equal(t, "/v2/models/llm/infer", calls[0].Path)
	body, err := calls[0].InferBody()
	require.NoError(t, err)
	require.Equal(t, []int{3, 1}, body.Inputs[0].Shape)
	require.Equal(t, []string{"a b", "c", "d"}, body.Inputs[0].Data)
	require.EqualValues(t, 5, body.Parameters["max_tokens"])

	// Streams go to generate_stream and arrive event by event.
	events, r := c.generateStream(testModel, map[string]any{"text_input": "one two"})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Len(t, events, 4, "three words and the closing event")
	require.Equal(t, "re: ", events[0]["text_output"])
	require.Len(t, f.Calls("/generate_stream"), 1)
}

// An upstream 429 reaches the client as 429 with the upstream's
// Retry-After, in the front's error shape; it does not open the breaker.
func TestTritonUpstreamRateLimitPassesThrough(t *testing.T) {
	f := tritontest.New("llm", 0)
	defer f.Close()
	n := startTestNode(t, func(c *Config) {
		withTritonModel(f)(c)
		c.Models[0].MaxSize, c.Models[0].FlushTimeout = 1, 0
	})
	f.Fail(http.StatusTooManyRequests, "slow down", "7")
	c := newV2Client(t, n)
	for i := 0; i < 4; i++ {
		_, r := c.generate(testModel, map[string]any{"text_input": "x", "parameters": map[string]any{"temperature": 1}})
		msg := requireV2Error(t, r, http.StatusTooManyRequests)
		require.Contains(t, msg, "slow down")
		require.Equal(t, "7", r.header.Get("Retry-After"))
	}
	require.Equal(t, consensus.BreakerClosed, n.Store().State().Breaker(n.Name(), testModel).State)
}

// An upstream whose /v2/health/ready fails shows in /health and opens the
// model's breaker without any request failing; it recovers by itself.
func TestTritonReadinessFeedsHealthAndTheBreaker(t *testing.T) {
	f := tritontest.New("llm", 4)
	defer f.Close()
	n := startTestNode(t, withTritonModel(f))
	// upstream takes the CollectT inside conditions, so a failed read ends
	// that tick rather than the test from the wrong goroutine.
	upstream := func(t require.TestingT) ops.Component {
		var h struct {
			Components map[string]ops.Component `json:"components"`
		}
		r := send(t, http.MethodGet, baseURL(n)+"/health", nil, nil)
		require.NoError(t, json.Unmarshal(r.body, &h), "body: %s", r.body)
		return h.Components["upstream/"+testModel]
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, true, upstream(c).Data["ready"]) }, apiWait, 10*time.Millisecond)
	require.Equal(t, ops.StatusOK, upstream(t).Status)

	f.SetReady(false)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, ops.StatusDegraded, upstream(c).Status) }, apiWait, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		return n.Store().State().Breaker(n.Name(), testModel).State == consensus.BreakerOpen
	}, apiWait, 10*time.Millisecond, "failed readiness checks open the breaker")
	c := newV2Client(t, n)
	r := c.do(http.MethodGet, "/v2/models/"+testModel+"/ready", nil)
	require.Equal(t, http.StatusServiceUnavailable, r.status)
	// With the only node's breaker open, a call is refused at once: 503
	// with Retry-After, in the protocol's shape.
	_, r = c.generate(testModel, map[string]any{"text_input": "x"})
	requireV2Error(t, r, http.StatusServiceUnavailable)
	require.NotEmpty(t, r.header.Get("Retry-After"))

	f.SetReady(true)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, ops.StatusOK, upstream(c).Status) }, apiWait, 10*time.Millisecond)
}
