package node

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/httpapi"
)

// v2Client is a client of the Open Inference Protocol written from the
// protocol's documents (KServe v2 REST, Triton's generate extension), not
// from shoal's code, so the tests check shoal against the protocol.
type v2Client struct {
	t    *testing.T
	base string
	// header is sent with every call.
	header map[string]string
}

type v2Tensor struct {
	Name     string  `json:"name"`
	Shape    []int64 `json:"shape"`
	Datatype string  `json:"datatype"`
	Data     any     `json:"data"`
}

type v2InferRequest struct {
	ID         string         `json:"id,omitempty"`
	Parameters map[string]any `json:"parameters,omitempty"`
	Inputs     []v2Tensor     `json:"inputs"`
}

type v2InferResponse struct {
	ModelName    string         `json:"model_name"`
	ModelVersion string         `json:"model_version"`
	ID           string         `json:"id"`
	Parameters   map[string]any `json:"parameters"`
	Outputs      []struct {
		Name     string   `json:"name"`
		Shape    []int64  `json:"shape"`
		Datatype string   `json:"datatype"`
		Data     []string `json:"data"`
	} `json:"outputs"`
}

type v2GenerateResponse struct {
	ModelName    string `json:"model_name"`
	ModelVersion string `json:"model_version"`
	TextOutput   string `json:"text_output"`
	FinishReason string `json:"finish_reason"`
}

// v2Error is the protocol's error object: one string.
type v2Error struct {
	Error string `json:"error"`
}

func (c *v2Client) do(method, path string, body any) reply {
	c.t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		raw = b
	default:
		var err error
		raw, err = json.Marshal(b)
		require.NoError(c.t, err)
	}
	var rd io.Reader
	if raw != nil {
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	require.NoError(c.t, err)
	if raw != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := rawClient().Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

func (c *v2Client) infer(model string, req v2InferRequest) (v2InferResponse, reply) {
	c.t.Helper()
	r := c.do(http.MethodPost, "/v2/models/"+model+"/infer", req)
	var out v2InferResponse
	if r.status == http.StatusOK {
		require.NoError(c.t, json.Unmarshal(r.body, &out), "body: %s", r.body)
	}
	return out, r
}

func (c *v2Client) generate(model string, body map[string]any) (v2GenerateResponse, reply) {
	c.t.Helper()
	r := c.do(http.MethodPost, "/v2/models/"+model+"/generate", body)
	var out v2GenerateResponse
	if r.status == http.StatusOK {
		require.NoError(c.t, json.Unmarshal(r.body, &out), "body: %s", r.body)
	}
	return out, r
}

// generateStream reads every server-sent event of generate_stream.
func (c *v2Client) generateStream(model string, body map[string]any) ([]map[string]any, reply) {
	c.t.Helper()
	r := c.do(http.MethodPost, "/v2/models/"+model+"/generate_stream", body)
	if r.status != http.StatusOK {
		return nil, r
	}
	require.True(c.t, strings.HasPrefix(r.header.Get("Content-Type"), "text/event-stream"))
	var events []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		require.True(c.t, ok, "line %q is not an SSE data line", line)
		var ev map[string]any
		require.NoError(c.t, json.Unmarshal([]byte(data), &ev), "event %q", data)
		events = append(events, ev)
	}
	return events, r
}

// requireV2Error checks the status and that the body is exactly the
// protocol's {"error": "..."}.
func requireV2Error(t *testing.T, r reply, status int) string {
	t.Helper()
	e := requireStrictJSON[v2Error](t, r, status)
	require.NotEmpty(t, e.Error)
	return e.Error
}

func textInput(prompts ...string) v2Tensor {
	data := make([][]string, len(prompts))
	for i, p := range prompts {
		data[i] = []string{p}
	}
	return v2Tensor{Name: "text_input", Shape: []int64{int64(len(prompts)), 1}, Datatype: "BYTES", Data: data}
}

func newV2Client(t *testing.T, n *Node) *v2Client {
	return &v2Client{t: t, base: baseURL(n)}
}

func TestKServeServerMetadataAndHealth(t *testing.T) {
	n := startTestNode(t, nil)
	c := newV2Client(t, n)
	r := c.do(http.MethodGet, "/v2", nil)
	require.Equal(t, http.StatusOK, r.status)
	var meta struct {
		Name       string   `json:"name"`
		Version    string   `json:"version"`
		Extensions []string `json:"extensions"`
	}
	require.NoError(t, json.Unmarshal(r.body, &meta))
	require.Equal(t, "shoal", meta.Name)
	require.Equal(t, Version, meta.Version)
	require.Contains(t, meta.Extensions, "generate")

	require.Equal(t, http.StatusOK, c.do(http.MethodGet, "/v2/health/live", nil).status)
	require.Equal(t, http.StatusOK, c.do(http.MethodGet, "/v2/health/ready", nil).status)
	require.Equal(t, http.StatusOK, c.do(http.MethodGet, "/v2/models/"+testModel+"/ready", nil).status)
	require.Equal(t, http.StatusOK, c.do(http.MethodGet, "/v2/models/"+testModel+"/versions/1/ready", nil).status)
	requireV2Error(t, c.do(http.MethodGet, "/v2/models/nope/ready", nil), http.StatusNotFound)
}

func TestKServeModelMetadata(t *testing.T) {
	n := startTestNode(t, nil)
	c := newV2Client(t, n)
	for _, path := range []string{"/v2/models/" + testModel, "/v2/models/" + testModel + "/versions/1"} {
		r := c.do(http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, r.status, "%s: %s", path, r.body)
		var meta struct {
			Name     string     `json:"name"`
			Versions []string   `json:"versions"`
			Platform string     `json:"platform"`
			Inputs   []v2Tensor `json:"inputs"`
			Outputs  []v2Tensor `json:"outputs"`
		}
		require.NoError(t, json.Unmarshal(r.body, &meta))
		require.Equal(t, testModel, meta.Name)
		require.Equal(t, []string{"1"}, meta.Versions)
		require.Equal(t, "text_input", meta.Inputs[0].Name)
		require.Equal(t, "BYTES", meta.Inputs[0].Datatype)
		require.Equal(t, "text_output", meta.Outputs[0].Name)
	}
	requireV2Error(t, c.do(http.MethodGet, "/v2/models/nope", nil), http.StatusNotFound)
	requireV2Error(t, c.do(http.MethodGet, "/v2/models/"+testModel+"/versions/7", nil), http.StatusNotFound)
}

// An infer call answers one text_output element per text_input element,
// with the same text /v1/infer gives for the same prompts, and is counted
// under its own endpoint label.
func TestKServeInferAnswersTextOutputPerInput(t *testing.T) {
	n := startTestNode(t, nil)
	c := newV2Client(t, n)
	params := map[string]any{"max_tokens": 4, "temperature": 0}
	out, r := c.infer(testModel, v2InferRequest{ID: "req-1", Parameters: params, Inputs: []v2Tensor{textInput("hello there", "second prompt")}})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, testModel, out.ModelName)
	require.Equal(t, "1", out.ModelVersion)
	require.Equal(t, "req-1", out.ID)
	require.Len(t, out.Outputs, 1)
	o := out.Outputs[0]
	require.Equal(t, "text_output", o.Name)
	require.Equal(t, "BYTES", o.Datatype)
	require.Equal(t, []int64{2, 1}, o.Shape)
	require.Len(t, o.Data, 2)
	require.NotEmpty(t, r.header.Get("X-Request-ID"))
	require.Contains(t, r.header.Get("X-Shoal-Route"), "local")

	v1 := postJSON(t, n, "/v1/infer", map[string]any{"model": testModel, "input": []string{"hello there", "second prompt"}, "parameters": params})
	require.Equal(t, http.StatusOK, v1.status)
	var v1out struct {
		Outputs []struct {
			Text string `json:"text"`
		} `json:"outputs"`
	}
	require.NoError(t, json.Unmarshal(v1.body, &v1out))
	require.Equal(t, v1out.Outputs[0].Text, o.Data[0])
	require.Equal(t, v1out.Outputs[1].Text, o.Data[1])

	// Generation parameters as scalar tensors, TensorRT-LLM's way, and a
	// flat [n] shape.
	out, r = c.infer(testModel, v2InferRequest{Inputs: []v2Tensor{
		{Name: "text_input", Shape: []int64{1}, Datatype: "BYTES", Data: []string{"hello there"}},
		{Name: "max_tokens", Shape: []int64{1, 1}, Datatype: "INT32", Data: [][]int{{4}}},
		{Name: "temperature", Shape: []int64{1}, Datatype: "FP32", Data: []float64{0}},
	}})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, []int64{1}, out.Outputs[0].Shape)
	require.Equal(t, v1out.Outputs[0].Text, out.Outputs[0].Data[0])

	m := send(t, http.MethodGet, baseURL(n)+"/metrics", nil, nil)
	require.Contains(t, string(m.body), `endpoint="v2_infer"`)
}

func TestKServeGenerateAndStreamAgree(t *testing.T) {
	n := startTestNode(t, nil)
	c := newV2Client(t, n)
	body := map[string]any{"text_input": "tell me a story", "parameters": map[string]any{"max_tokens": 6, "temperature": 0}}
	g, r := c.generate(testModel, body)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, testModel, g.ModelName)
	require.NotEmpty(t, g.TextOutput)
	require.NotEmpty(t, g.FinishReason)

	// Top-level parameter keys (the model's scalar inputs) work too.
	body2 := map[string]any{"text_input": "tell me a story", "max_tokens": 6, "temperature": 0}
	g2, r := c.generate(testModel, body2)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, g.TextOutput, g2.TextOutput)

	// Bypass the cache so the stream is generated, not replayed.
	c.header = map[string]string{"Cache-Control": "no-cache, no-store"}
	events, r := c.generateStream(testModel, body)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Greater(t, len(events), 1)
	var text strings.Builder
	for i, ev := range events {
		require.Equal(t, testModel, ev["model_name"])
		require.NotContains(t, ev, "error")
		text.WriteString(ev["text_output"].(string))
		if i < len(events)-1 {
			require.NotContains(t, ev, "finish_reason")
		}
	}
	require.Equal(t, g.TextOutput, text.String())
	require.Equal(t, g.FinishReason, events[len(events)-1]["finish_reason"])

	m := string(send(t, http.MethodGet, baseURL(n)+"/metrics", nil, nil).body)
	require.Contains(t, m, `endpoint="v2_generate"`)
	require.Contains(t, m, `endpoint="v2_generate_stream"`)
}

// A deterministic call is answered from the response cache the second time,
// as on /v1.
func TestKServeRepeatIsACacheHit(t *testing.T) {
	n := startTestNode(t, nil)
	c := newV2Client(t, n)
	req := v2InferRequest{Parameters: map[string]any{"max_tokens": 4, "temperature": 0}, Inputs: []v2Tensor{textInput("cache me")}}
	first, r := c.infer(testModel, req)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, httpapi.CacheMiss, r.header.Get("X-Shoal-Cache"))
	raw, err := json.Marshal(req)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		r := send(ct, http.MethodPost, c.base+"/v2/models/"+testModel+"/infer", raw, c.header)
		assert.Equal(ct, http.StatusOK, r.status)
		assert.Equal(ct, httpapi.CacheHit, r.header.Get("X-Shoal-Cache"))
	}, apiWait, 10*time.Millisecond)
	second, r := c.infer(testModel, req)
	require.Equal(t, httpapi.CacheHit, r.header.Get("X-Shoal-Cache"))
	require.Equal(t, first.Outputs[0].Data, second.Outputs[0].Data)
	require.Equal(t, "cache", r.header.Get("X-Shoal-Route"))

	// A cached answer replays as a stream too.
	events, r := c.generateStream(testModel, map[string]any{"text_input": "cache me", "parameters": map[string]any{"max_tokens": 4, "temperature": 0}})
	require.Equal(t, http.StatusOK, r.status)
	require.NotEmpty(t, events)
}

func TestKServeRateLimitIs429WithRetryAfter(t *testing.T) {
	n := startTestNode(t, func(c *Config) { c.RateLimit.RPM = 2 })
	c := newV2Client(t, n)
	body := map[string]any{"text_input": "limited", "parameters": map[string]any{"max_tokens": 2}}
	var last reply
	clearOfMinuteEdge(t)
	for i := 0; i < 4; i++ {
		_, last = c.generate(testModel, body)
	}
	requireV2Error(t, last, http.StatusTooManyRequests)
	require.NotEmpty(t, last.header.Get("Retry-After"))
	require.NotEmpty(t, last.header.Get("X-RateLimit-Limit"))
}

func TestKServeBadRequestsAnswerInProtocolShape(t *testing.T) {
	n := startTestNode(t, func(c *Config) { c.HTTP.MaxBodyBytes = 4096 })
	c := newV2Client(t, n)
	infer := "/v2/models/" + testModel + "/infer"
	cases := []struct {
		name   string
		path   string
		body   any
		status int
	}{
		{"MalformedJSON", infer, []byte(`{"inputs": [`), http.StatusBadRequest},
		{"NoInputs", infer, map[string]any{"inputs": []any{}}, http.StatusBadRequest},
		{"WrongDatatype", infer, v2InferRequest{Inputs: []v2Tensor{{Name: "text_input", Shape: []int64{1, 1}, Datatype: "FP32", Data: []float64{1}}}}, http.StatusBadRequest},
		{"ShapeDataMismatch", infer, v2InferRequest{Inputs: []v2Tensor{{Name: "text_input", Shape: []int64{2, 1}, Datatype: "BYTES", Data: []string{"a"}}}}, http.StatusBadRequest},
		{"NumberInBytesTensor", infer, v2InferRequest{Inputs: []v2Tensor{{Name: "text_input", Shape: []int64{1}, Datatype: "BYTES", Data: []int{3}}}}, http.StatusBadRequest},
		{"UnknownInput", infer, v2InferRequest{Inputs: []v2Tensor{textInput("a"), {Name: "image", Shape: []int64{1}, Datatype: "FP32", Data: []float64{1}}}}, http.StatusBadRequest},
		{"BadParameterRange", infer, v2InferRequest{Parameters: map[string]any{"temperature": 9}, Inputs: []v2Tensor{textInput("a")}}, http.StatusBadRequest},
		{"UnknownModel", "/v2/models/nope/infer", v2InferRequest{Inputs: []v2Tensor{textInput("a")}}, http.StatusNotFound},
		{"UnknownVersion", "/v2/models/" + testModel + "/versions/3/infer", v2InferRequest{Inputs: []v2Tensor{textInput("a")}}, http.StatusNotFound},
		{"TooLarge", infer, v2InferRequest{Inputs: []v2Tensor{textInput(strings.Repeat("x", 8192))}}, http.StatusRequestEntityTooLarge},
		{"TooManyElements", infer, v2InferRequest{Inputs: []v2Tensor{{Name: "text_input", Shape: []int64{1 << 20, 1}, Datatype: "BYTES", Data: []string{}}}}, http.StatusRequestEntityTooLarge},
		{"GenerateWithoutText", "/v2/models/" + testModel + "/generate", map[string]any{"max_tokens": 3}, http.StatusBadRequest},
		{"GenerateStreamFlagOnGenerate", "/v2/models/" + testModel + "/generate", map[string]any{"text_input": "a", "stream": true}, http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			requireV2Error(t, c.do(http.MethodPost, tc.path, tc.body), tc.status)
		})
	}
	t.Run("WrongMethod", func(t *testing.T) {
		r := c.do(http.MethodGet, infer, nil)
		requireV2Error(t, r, http.StatusMethodNotAllowed)
		require.Equal(t, "POST", r.header.Get("Allow"))
	})
	t.Run("UnknownPath", func(t *testing.T) {
		requireV2Error(t, c.do(http.MethodGet, "/v2/repository/index", nil), http.StatusNotFound)
	})
	t.Run("StreamErrorBeforeFirstEvent", func(t *testing.T) {
		r := c.do(http.MethodPost, "/v2/models/nope/generate_stream", map[string]any{"text_input": "a"})
		requireV2Error(t, r, http.StatusNotFound)
	})
}

// A v2 call entering a node that does not serve the model is routed to the
// peer that does, as /v1 is, and still answers in the v2 shape, streams
// included.
func TestKServeCallsAreForwardedToThePeerServingTheModel(t *testing.T) {
	tc := mustNewCluster(t, 2, func(i int, cfg *Config) {
		if i == 0 {
			cfg.Models[0].Name = "elsewhere"
		}
	})
	entry := tc.nodes[0]
	require.Eventually(t, func() bool { return len(entry.candidates("sim-fast")) == 1 }, clusterWait, 10*time.Millisecond)
	c := newV2Client(t, entry)
	c.header = map[string]string{"Cache-Control": "no-cache, no-store"}

	r := c.do(http.MethodGet, "/v2/models/sim-fast", nil)
	require.Equal(t, http.StatusOK, r.status, "metadata lists models served anywhere: %s", r.body)

	out, r := c.infer("sim-fast", v2InferRequest{Parameters: map[string]any{"max_tokens": 3}, Inputs: []v2Tensor{textInput("a", "b")}})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Contains(t, r.header.Get("X-Shoal-Route"), "forward")
	require.Equal(t, "n2", r.header.Get("X-Shoal-Node"))
	require.Len(t, out.Outputs[0].Data, 2)

	events, r := c.generateStream("sim-fast", map[string]any{"text_input": "stream me", "max_tokens": 3})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Contains(t, r.header.Get("X-Shoal-Route"), "forward")
	require.NotEmpty(t, events)
	require.Equal(t, "sim-fast", events[0]["model_name"])
	require.Contains(t, events[len(events)-1], "finish_reason")
}

// Per-endpoint limits see the v2 path the client called, not the /v1/infer
// request that carries it through the node.
func TestKServeEndpointLimitMatchesTheV2Path(t *testing.T) {
	n := startTestNode(t, func(c *Config) { c.Admin.Token = testToken })
	path := "/v2/models/" + testModel + "/generate"
	require.Eventually(t, func() bool { return n.Store().LeaderID() != "" }, apiWait, 10*time.Millisecond)
	putLimits(t, n, map[string]any{"default_rpm": 0, "endpoints": map[string]any{path: map[string]any{"rpm": 1}}})
	waitPolicy(t, []*Node{n}, func(p *consensus.LimitPolicy) bool { return p.Endpoints[path].RPM == 1 })
	c := newV2Client(t, n)
	body := map[string]any{"text_input": "x", "parameters": map[string]any{"temperature": 1, "max_tokens": 2}}
	clearOfMinuteEdge(t)
	_, r := c.generate(testModel, body)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	_, r = c.generate(testModel, body)
	requireV2Error(t, r, http.StatusTooManyRequests)
	require.NotEmpty(t, r.header.Get("Retry-After"))
	// Other paths, /v1/infer included, are not under that limit.
	v1 := postJSON(t, n, "/v1/infer", map[string]any{"model": testModel, "input": "x", "parameters": map[string]any{"temperature": 1}})
	require.Equal(t, http.StatusOK, v1.status, "body: %s", v1.body)
	_, r = c.infer(testModel, v2InferRequest{Parameters: map[string]any{"temperature": 1}, Inputs: []v2Tensor{textInput("x")}})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
}

// Triton's timeout parameter (microseconds) bounds the call as
// X-Shoal-Timeout does: a deadline passed is a 504.
func TestKServeTimeoutParameterIsTheDeadline(t *testing.T) {
	n := startTestNode(t, withSimModel(2*time.Second, 0, 0))
	c := newV2Client(t, n)
	_, r := c.generate(testModel, map[string]any{"text_input": "slow", "parameters": map[string]any{"timeout": 50000}})
	requireV2Error(t, r, http.StatusGatewayTimeout)
	c.header = map[string]string{"X-Shoal-Timeout": "50ms"}
	_, r = c.infer(testModel, v2InferRequest{Inputs: []v2Tensor{textInput("slow")}})
	requireV2Error(t, r, http.StatusGatewayTimeout)
}

// Request bodies are decoded as on /v1: gzip is accepted.
func TestKServeAcceptsGzipBodies(t *testing.T) {
	n := startTestNode(t, nil)
	raw, err := json.Marshal(v2InferRequest{Inputs: []v2Tensor{textInput("zipped")}})
	require.NoError(t, err)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(raw)
	require.NoError(t, zw.Close())
	r := send(t, http.MethodPost, baseURL(n)+"/v2/models/"+testModel+"/infer", buf.Bytes(), map[string]string{"Content-Encoding": "gzip"})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Contains(t, string(r.body), `"text_output"`)
}
