package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/shoal-dev/shoal/scheduler"
	"github.com/stretchr/testify/require"
)

func TestChatCompletionAnswersInOpenAIShape(t *testing.T) {
	n := startTestNode(t, nil)
	r := postJSON(t, n, "/v1/chat/completions", chatRequest(testModel, "hello there"))
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	var got struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Index        int    `json:"index"`
			FinishReason string `json:"finish_reason"`
			Message      struct {
				Role    string `json:"role"`
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
		Usage usage `json:"usage"`
	}
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.True(t, strings.HasPrefix(got.ID, "chatcmpl-"))
	require.Equal(t, "chat.completion", got.Object)
	require.Equal(t, testModel, got.Model)
	require.Len(t, got.Choices, 1)
	require.Equal(t, "assistant", got.Choices[0].Message.Role)
	require.NotEmpty(t, got.Choices[0].Message.Content)
	require.Contains(t, []string{"stop", "length"}, got.Choices[0].FinishReason)
	require.Positive(t, got.Usage.PromptTokens)
	require.Positive(t, got.Usage.CompletionTokens)
	require.Equal(t, got.Usage.PromptTokens+got.Usage.CompletionTokens, got.Usage.TotalTokens)
}

func TestCompletionWithPromptArrayAnswersEachPrompt(t *testing.T) {
	n := startTestNode(t, nil)
	r := postJSON(t, n, "/v1/completions", map[string]any{"model": testModel, "prompt": []string{"one", "two", "three"}, "max_tokens": 4})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	var got struct {
		Object  string             `json:"object"`
		Choices []completionChoice `json:"choices"`
		Usage   usage              `json:"usage"`
	}
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Equal(t, "text_completion", got.Object)
	require.Len(t, got.Choices, 3)
	for i, c := range got.Choices {
		require.Equal(t, i, c.Index)
		require.Len(t, strings.Fields(c.Text), 4)
		require.Equal(t, "length", c.FinishReason)
	}
	require.Equal(t, 3, got.Usage.PromptTokens)
	require.Equal(t, 12, got.Usage.CompletionTokens)
}

func TestInferAnswersOutputsUsageAndNode(t *testing.T) {
	n := startTestNode(t, nil)
	r := postJSON(t, n, "/v1/infer", map[string]any{"model": testModel, "input": []string{"a b", "c"}, "parameters": map[string]any{"max_tokens": 5, "temperature": 0}})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	var got struct {
		Model   string        `json:"model"`
		Node    string        `json:"node"`
		Outputs []inferOutput `json:"outputs"`
		Usage   usage         `json:"usage"`
	}
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Equal(t, "test-node", got.Node)
	require.Len(t, got.Outputs, 2)
	require.Equal(t, 3, got.Usage.PromptTokens)
	require.Equal(t, 10, got.Usage.CompletionTokens)
}

func TestModelsListsServedModels(t *testing.T) {
	n := startTestNode(t, nil)
	r := send(t, http.MethodGet, baseURL(n)+"/v1/models", nil, nil)
	require.Equal(t, http.StatusOK, r.status)
	var got struct {
		Object string `json:"object"`
		Data   []struct {
			ID     string `json:"id"`
			Object string `json:"object"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Equal(t, "list", got.Object)
	require.Len(t, got.Data, 1)
	require.Equal(t, testModel, got.Data[0].ID)
	require.Equal(t, "model", got.Data[0].Object)
}

func TestMalformedJSONIs400(t *testing.T) {
	n := startTestNode(t, nil)
	for _, tc := range []struct {
		name string
		path string
		body string
	}{
		{"truncated", "/v1/chat/completions", `{"model": "sim-test", "messages": [`},
		{"not json", "/v1/completions", `model=sim-test`},
		{"array", "/v1/infer", `["sim-test"]`},
		{"trailing data", "/v1/infer", `{"model":"sim-test","input":"x"} {"again":1}`},
		{"empty", "/v1/chat/completions", ``},
		{"whitespace", "/v1/chat/completions", "  \n "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := requireAPIError(t, send(t, http.MethodPost, baseURL(n)+tc.path, []byte(tc.body), nil), http.StatusBadRequest)
			require.Equal(t, "invalid_request_error", e.Error.Type)
			require.Equal(t, "invalid_json", e.Error.Code)
		})
	}
}

func TestBadFieldsAre400NamingTheField(t *testing.T) {
	n := startTestNode(t, nil)
	msgs := []map[string]any{{"role": "user", "content": "hi"}}
	for _, tc := range []struct {
		name  string
		path  string
		body  map[string]any
		param string
	}{
		{"negative max_tokens", "/v1/chat/completions", map[string]any{"model": testModel, "messages": msgs, "max_tokens": -1}, "max_tokens"},
		{"zero max_tokens", "/v1/completions", map[string]any{"model": testModel, "prompt": "x", "max_tokens": 0}, "max_tokens"},
		{"huge max_tokens", "/v1/completions", map[string]any{"model": testModel, "prompt": "x", "max_tokens": 1 << 20}, "max_tokens"},
		{"max_tokens wrong type", "/v1/chat/completions", map[string]any{"model": testModel, "messages": msgs, "max_tokens": "ten"}, "max_tokens"},
		{"temperature wrong type", "/v1/chat/completions", map[string]any{"model": testModel, "messages": msgs, "temperature": "hot"}, "temperature"},
		{"model wrong type", "/v1/chat/completions", map[string]any{"model": 7, "messages": msgs}, "model"},
		{"messages wrong type", "/v1/chat/completions", map[string]any{"model": testModel, "messages": "hi"}, "messages"},
		{"prompt wrong type", "/v1/completions", map[string]any{"model": testModel, "prompt": 5}, "prompt"},
		{"input wrong type", "/v1/infer", map[string]any{"model": testModel, "input": map[string]any{"a": 1}}, "input"},
		{"stop wrong type", "/v1/completions", map[string]any{"model": testModel, "prompt": "x", "stop": 3}, "stop"},
		{"content wrong type", "/v1/chat/completions", map[string]any{"model": testModel, "messages": []map[string]any{{"role": "user", "content": 5}}}, "messages.content"},
		{"empty messages", "/v1/chat/completions", map[string]any{"model": testModel, "messages": []any{}}, "messages"},
		{"missing messages", "/v1/chat/completions", map[string]any{"model": testModel}, "messages"},
		{"bad role", "/v1/chat/completions", map[string]any{"model": testModel, "messages": []map[string]any{{"role": "robot", "content": "x"}}}, "messages[0].role"},
		{"temperature too high", "/v1/chat/completions", map[string]any{"model": testModel, "messages": msgs, "temperature": 2.5}, "temperature"},
		{"temperature negative", "/v1/completions", map[string]any{"model": testModel, "prompt": "x", "temperature": -0.1}, "temperature"},
		{"top_p zero", "/v1/completions", map[string]any{"model": testModel, "prompt": "x", "top_p": 0}, "top_p"},
		{"n above one", "/v1/chat/completions", map[string]any{"model": testModel, "messages": msgs, "n": 2}, "n"},
		{"missing model", "/v1/chat/completions", map[string]any{"messages": msgs}, "model"},
		{"bad priority", "/v1/chat/completions", map[string]any{"model": testModel, "messages": msgs, "priority": "urgent"}, "priority"},
		{"too many stops", "/v1/completions", map[string]any{"model": testModel, "prompt": "x", "stop": []string{"a", "b", "c", "d", "e"}}, "stop"},
		{"empty stop", "/v1/completions", map[string]any{"model": testModel, "prompt": "x", "stop": ""}, "stop"},
		{"missing prompt", "/v1/completions", map[string]any{"model": testModel}, "prompt"},
		{"empty prompt array", "/v1/completions", map[string]any{"model": testModel, "prompt": []string{}}, "prompt"},
		{"stream with many prompts", "/v1/completions", map[string]any{"model": testModel, "prompt": []string{"a", "b"}, "stream": true}, "prompt"},
		{"missing input", "/v1/infer", map[string]any{"model": testModel}, "input"},
		{"infer negative max_tokens", "/v1/infer", map[string]any{"model": testModel, "input": "x", "parameters": map[string]any{"max_tokens": -5}}, "max_tokens"},
		{"infer parameters wrong type", "/v1/infer", map[string]any{"model": testModel, "input": "x", "parameters": map[string]any{"temperature": "x"}}, "parameters.temperature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := requireAPIError(t, postJSON(t, n, tc.path, tc.body), http.StatusBadRequest)
			require.Equal(t, "invalid_request_error", e.Error.Type)
			require.NotNil(t, e.Error.Param, "message: %s", e.Error.Message)
			require.Equal(t, tc.param, *e.Error.Param)
			require.Contains(t, e.Error.Message, tc.param)
		})
	}
}

func TestUnknownModelIs404(t *testing.T) {
	n := startTestNode(t, nil)
	for _, path := range []string{"/v1/chat/completions", "/v1/completions", "/v1/infer"} {
		body := map[string]any{"model": "no-such-model", "messages": []map[string]any{{"role": "user", "content": "x"}}, "prompt": "x", "input": "x"}
		if path != "/v1/chat/completions" {
			delete(body, "messages")
		}
		if path != "/v1/completions" {
			delete(body, "prompt")
		}
		if path != "/v1/infer" {
			delete(body, "input")
		}
		e := requireAPIError(t, postJSON(t, n, path, body), http.StatusNotFound)
		require.Equal(t, "model_not_found", e.Error.Code, path)
		require.Contains(t, e.Error.Message, "no-such-model")
	}
}

func TestUnknownPathIs404(t *testing.T) {
	n := startTestNode(t, nil)
	for _, path := range []string{"/v2/chat", "/v1/chat/completions/extra", "/"} {
		e := requireAPIError(t, send(t, http.MethodGet, baseURL(n)+path, nil, nil), http.StatusNotFound)
		require.Equal(t, "not_found", e.Error.Code)
	}
}

func TestWrongMethodIs405WithAllow(t *testing.T) {
	n := startTestNode(t, nil)
	for _, tc := range []struct {
		method, path, allow string
	}{
		{http.MethodGet, "/v1/chat/completions", "POST"},
		{http.MethodPut, "/v1/completions", "POST"},
		{http.MethodGet, "/v1/infer", "POST"},
		{http.MethodPost, "/v1/models", "GET, HEAD"},
		{http.MethodDelete, "/health", "GET, HEAD"},
		{http.MethodPost, "/metrics", "GET"},
	} {
		r := send(t, tc.method, baseURL(n)+tc.path, nil, nil)
		e := requireAPIError(t, r, http.StatusMethodNotAllowed)
		require.Equal(t, "method_not_allowed", e.Error.Code)
		require.Equal(t, tc.allow, r.header.Get("Allow"), "%s %s", tc.method, tc.path)
	}
}

func TestBodyOverLimitIs413(t *testing.T) {
	n := startTestNode(t, func(c *Config) { c.HTTP.MaxBodyBytes = 4096 })
	big := fmt.Sprintf(`{"model":%q,"prompt":%q}`, testModel, strings.Repeat("x", 5000))
	e := requireAPIError(t, send(t, http.MethodPost, baseURL(n)+"/v1/completions", []byte(big), nil), http.StatusRequestEntityTooLarge)
	require.Equal(t, "body_too_large", e.Error.Code)

	fits := fmt.Sprintf(`{"model":%q,"prompt":%q,"max_tokens":2}`, testModel, strings.Repeat("x", 3000))
	require.Equal(t, http.StatusOK, send(t, http.MethodPost, baseURL(n)+"/v1/completions", []byte(fits), nil).status)
}

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	_, err := w.Write(b)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return buf.Bytes()
}

func TestGzipBombIs413(t *testing.T) {
	n := startTestNode(t, nil)
	// 8 MiB of JSON whitespace squeezes to a few KiB: small on the wire,
	// eight times the 1 MiB limit once inflated.
	inflated := append([]byte(`{"model":"sim-test","prompt":"x"`), bytes.Repeat([]byte(" "), 8<<20)...)
	inflated = append(inflated, '}')
	bomb := gzipped(t, inflated)
	require.Less(t, len(bomb), 64<<10)
	e := requireAPIError(t, send(t, http.MethodPost, baseURL(n)+"/v1/completions", bomb, map[string]string{"Content-Encoding": "gzip"}), http.StatusRequestEntityTooLarge)
	require.Equal(t, "body_too_large", e.Error.Code)
}

func TestZstdWindowOverLimitIs413(t *testing.T) {
	n := startTestNode(t, nil)
	// An 8 MiB window asks the decoder for more memory than twice the
	// 1 MiB body limit: refused like the gzip bomb, not as a corrupt body.
	inflated := append([]byte(`{"model":"sim-test","prompt":"x"`), bytes.Repeat([]byte(" "), 8<<20)...)
	inflated = append(inflated, '}')
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithWindowSize(8<<20), zstd.WithSingleSegment(false))
	require.NoError(t, err)
	_, err = zw.Write(inflated)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	require.Less(t, buf.Len(), 64<<10)
	e := requireAPIError(t, send(t, http.MethodPost, baseURL(n)+"/v1/completions", buf.Bytes(), map[string]string{"Content-Encoding": "zstd"}), http.StatusRequestEntityTooLarge)
	require.Equal(t, "body_too_large", e.Error.Code)
}

func TestHeadersOverLimitAreAJSON431(t *testing.T) {
	n := startTestNode(t, nil)
	r := send(t, http.MethodPost, baseURL(n)+"/v1/completions", []byte(`{"model":"sim-test","prompt":"x"}`),
		map[string]string{"X-Padding": strings.Repeat("p", 100<<10)})
	e := requireAPIError(t, r, http.StatusRequestHeaderFieldsTooLarge)
	require.Equal(t, "headers_too_large", e.Error.Code)
	require.Equal(t, n.Name(), r.header.Get("X-Shoal-Node"))
}

func TestWrongContentTypeIs415(t *testing.T) {
	n := startTestNode(t, nil)
	body := []byte(`{"model":"sim-test","prompt":"x"}`)
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "not a media type;;"} {
		e := requireAPIError(t, send(t, http.MethodPost, baseURL(n)+"/v1/completions", body, map[string]string{"Content-Type": ct}), http.StatusUnsupportedMediaType)
		require.Equal(t, "unsupported_media_type", e.Error.Code, ct)
	}
	// Parameters on the right type are fine.
	r := send(t, http.MethodPost, baseURL(n)+"/v1/completions", body, map[string]string{"Content-Type": "application/json; charset=utf-8"})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
}

func TestUnknownContentEncodingIs415(t *testing.T) {
	n := startTestNode(t, nil)
	e := requireAPIError(t, send(t, http.MethodPost, baseURL(n)+"/v1/completions", []byte(`{"model":"sim-test","prompt":"x"}`),
		map[string]string{"Content-Encoding": "br"}), http.StatusUnsupportedMediaType)
	require.Equal(t, "unsupported_encoding", e.Error.Code)
}

func TestCorruptGzipBodyIs400(t *testing.T) {
	n := startTestNode(t, nil)
	e := requireAPIError(t, send(t, http.MethodPost, baseURL(n)+"/v1/completions", []byte("this is not gzip"),
		map[string]string{"Content-Encoding": "gzip"}), http.StatusBadRequest)
	require.Equal(t, "invalid_body", e.Error.Code)
}

func TestCompressedRequestBodiesAccepted(t *testing.T) {
	n := startTestNode(t, nil)
	body := []byte(`{"model":"sim-test","prompt":"compressed hello","max_tokens":3}`)
	enc, err := zstd.NewWriter(nil)
	require.NoError(t, err)
	defer enc.Close()
	for _, tc := range []struct {
		encoding string
		body     []byte
	}{
		{"gzip", gzipped(t, body)},
		{"zstd", enc.EncodeAll(body, nil)},
	} {
		r := send(t, http.MethodPost, baseURL(n)+"/v1/completions", tc.body, map[string]string{"Content-Encoding": tc.encoding})
		require.Equal(t, http.StatusOK, r.status, "%s: %s", tc.encoding, r.body)
		require.Contains(t, string(r.body), `"text_completion"`)
	}
}

// bigInfer asks for enough outputs that the answer is worth compressing.
func bigInfer() []byte {
	inputs := make([]string, 64)
	for i := range inputs {
		inputs[i] = fmt.Sprint("input number ", i)
	}
	b, _ := json.Marshal(map[string]any{"model": testModel, "input": inputs, "parameters": map[string]any{"max_tokens": 16}})
	return b
}

func TestResponsesCompressedWhenAccepted(t *testing.T) {
	n := startTestNode(t, nil)
	plain := send(t, http.MethodPost, baseURL(n)+"/v1/infer", bigInfer(), map[string]string{"Accept-Encoding": "identity"})
	require.Equal(t, http.StatusOK, plain.status)
	require.Empty(t, plain.header.Get("Content-Encoding"))
	require.Greater(t, len(plain.body), 1024, "the answer must exceed httpapi's compression threshold")

	for _, tc := range []struct {
		accept, want string
		decode       func([]byte) ([]byte, error)
	}{
		{"gzip", "gzip", func(b []byte) ([]byte, error) {
			r, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				return nil, err
			}
			return io.ReadAll(r)
		}},
		{"gzip, deflate, br, zstd", "zstd", func(b []byte) ([]byte, error) {
			d, err := zstd.NewReader(nil)
			if err != nil {
				return nil, err
			}
			defer d.Close()
			return d.DecodeAll(b, nil)
		}},
		{"zstd;q=0, gzip", "gzip", func(b []byte) ([]byte, error) {
			r, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				return nil, err
			}
			return io.ReadAll(r)
		}},
	} {
		t.Run(tc.accept, func(t *testing.T) {
			r := send(t, http.MethodPost, baseURL(n)+"/v1/infer", bigInfer(), map[string]string{"Accept-Encoding": tc.accept})
			require.Equal(t, http.StatusOK, r.status)
			require.Equal(t, tc.want, r.header.Get("Content-Encoding"))
			require.Contains(t, r.header.Values("Vary"), "Accept-Encoding")
			require.Less(t, len(r.body), len(plain.body))
			out, err := tc.decode(r.body)
			require.NoError(t, err)
			require.Equal(t, sameOutputs(t, plain.body), sameOutputs(t, out))
		})
	}
}

// usage, chatChoice, completionChoice and inferOutput are the answer's shapes as a client reads them.
type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type chatChoice struct {
	Index        int               `json:"index"`
	Message      scheduler.Message `json:"message"`
	FinishReason string            `json:"finish_reason"`
	Logprobs     *struct{}         `json:"logprobs"`
}

type completionChoice struct {
	Index        int       `json:"index"`
	Text         string    `json:"text"`
	FinishReason string    `json:"finish_reason"`
	Logprobs     *struct{} `json:"logprobs"`
}

type inferOutput struct {
	Index        int    `json:"index"`
	Text         string `json:"text"`
	FinishReason string `json:"finish_reason"`
}

func sameOutputs(t testing.TB, b []byte) []inferOutput {
	t.Helper()
	var got struct {
		Outputs []inferOutput `json:"outputs"`
	}
	require.NoError(t, json.Unmarshal(b, &got), "body: %.200s", b)
	require.Len(t, got.Outputs, 64)
	return got.Outputs
}

func TestSmallResponsesNotCompressed(t *testing.T) {
	n := startTestNode(t, nil)
	r := send(t, http.MethodGet, baseURL(n)+"/v1/models", nil, map[string]string{"Accept-Encoding": "gzip, zstd"})
	require.Equal(t, http.StatusOK, r.status)
	require.Empty(t, r.header.Get("Content-Encoding"))
}

// holdSlot starts a request that occupies the model's only batch slot
// until the test ends (its client goes away then), and waits until it runs.
func holdSlot(t *testing.T, n *Node, prompt string) {
	t.Helper()
	go func() {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, baseURL(n)+"/v1/completions",
			strings.NewReader(fmt.Sprintf(`{"model":%q,"prompt":%q}`, testModel, prompt)))
		if err != nil {
			return
		}
		req.Header.Set("Content-Type", "application/json")
		if resp, err := rawClient().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	require.Eventually(t, func() bool { return n.Scheduler().Load()[testModel].ActiveBatches == 1 }, apiWait, time.Millisecond)
}

func TestQueueFullIs429WithRetryAfter(t *testing.T) {
	n := startTestNode(t, func(c *Config) {
		withSimModel(time.Minute, 0, 0)(c)
		c.Models[0].MaxSize = 1
		c.Batching.MaxQueue = 1
	})
	holdSlot(t, n, "running")
	// The next request fills the one-place queue.
	go func() {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, baseURL(n)+"/v1/completions", strings.NewReader(`{"model":"sim-test","prompt":"queued"}`))
		if resp, err := rawClient().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	require.Eventually(t, func() bool { return n.Scheduler().Load()[testModel].QueueDepth == 1 }, apiWait, time.Millisecond)

	r := postJSON(t, n, "/v1/completions", map[string]any{"model": testModel, "prompt": "rejected"})
	e := requireAPIError(t, r, http.StatusTooManyRequests)
	require.Equal(t, "queue_full", e.Error.Code)
	secs, err := strconv.Atoi(r.header.Get("Retry-After"))
	require.NoError(t, err)
	require.Positive(t, secs)
}

func TestDrainingIs503WithRetryAfter(t *testing.T) {
	n := startTestNode(t, nil)
	require.NoError(t, n.Scheduler().Drain(t.Context()))
	r := postJSON(t, n, "/v1/chat/completions", chatRequest(testModel, "too late"))
	e := requireAPIError(t, r, http.StatusServiceUnavailable)
	require.Equal(t, "draining", e.Error.Code)
	require.NotEmpty(t, r.header.Get("Retry-After"))
}

func TestShoalTimeoutWhileRunningIs504(t *testing.T) {
	n := startTestNode(t, withSimModel(time.Minute, 0, 0))
	start := time.Now()
	r := send(t, http.MethodPost, baseURL(n)+"/v1/completions", []byte(`{"model":"sim-test","prompt":"slow"}`), map[string]string{"X-Shoal-Timeout": "200ms"})
	e := requireAPIError(t, r, http.StatusGatewayTimeout)
	require.Equal(t, "deadline_exceeded", e.Error.Code)
	require.Less(t, time.Since(start), apiWait, "the deadline cut the minute-long batch short")
}

func TestShoalTimeoutWhileQueuedIs504(t *testing.T) {
	n := startTestNode(t, func(c *Config) {
		withSimModel(time.Minute, 0, 0)(c)
		c.Models[0].MaxSize = 1
	})
	holdSlot(t, n, "running")
	r := send(t, http.MethodPost, baseURL(n)+"/v1/chat/completions", []byte(`{"model":"sim-test","messages":[{"role":"user","content":"waits"}]}`),
		map[string]string{"X-Shoal-Timeout": "0.2"})
	e := requireAPIError(t, r, http.StatusGatewayTimeout)
	require.Equal(t, "deadline_exceeded", e.Error.Code)
	require.Zero(t, n.Scheduler().Load()[testModel].QueueDepth, "the expired request left the queue")
}

func TestStreamTimeoutBeforeFirstTokenIs504(t *testing.T) {
	n := startTestNode(t, withSimModel(time.Minute, 0, 0))
	r := send(t, http.MethodPost, baseURL(n)+"/v1/chat/completions",
		[]byte(`{"model":"sim-test","stream":true,"messages":[{"role":"user","content":"slow"}]}`), map[string]string{"X-Shoal-Timeout": "150ms"})
	requireAPIError(t, r, http.StatusGatewayTimeout)
}

func TestBadShoalHeadersAre400(t *testing.T) {
	n := startTestNode(t, nil)
	body := []byte(`{"model":"sim-test","prompt":"x"}`)
	for _, tc := range []struct {
		header, value, param string
	}{
		{"X-Shoal-Timeout", "soon", "X-Shoal-Timeout"},
		{"X-Shoal-Timeout", "-1s", "X-Shoal-Timeout"},
		{"X-Shoal-Timeout", "0", "X-Shoal-Timeout"},
		{"X-Shoal-Priority", "urgent", "priority"},
	} {
		e := requireAPIError(t, send(t, http.MethodPost, baseURL(n)+"/v1/completions", body, map[string]string{tc.header: tc.value}), http.StatusBadRequest)
		require.Equal(t, tc.param, *e.Error.Param)
	}
	r := send(t, http.MethodPost, baseURL(n)+"/v1/completions", body, map[string]string{"X-Shoal-Priority": "high", "X-Shoal-Timeout": "5s"})
	require.Equal(t, http.StatusOK, r.status)
}

func TestRequestIDEchoedOrGenerated(t *testing.T) {
	n := startTestNode(t, nil)
	echoed := send(t, http.MethodGet, baseURL(n)+"/v1/models", nil, map[string]string{"X-Request-ID": "client-id-42"})
	require.Equal(t, "client-id-42", echoed.header.Get("X-Request-ID"))

	a := send(t, http.MethodGet, baseURL(n)+"/v1/models", nil, nil)
	b := send(t, http.MethodGet, baseURL(n)+"/v1/models", nil, nil)
	require.Len(t, a.header.Get("X-Request-ID"), 24)
	require.NotEqual(t, a.header.Get("X-Request-ID"), b.header.Get("X-Request-ID"))

	// An ID unsafe to echo is replaced.
	unsafe := send(t, http.MethodGet, baseURL(n)+"/v1/models", nil, map[string]string{"X-Request-ID": "a b<script>"})
	require.NotEqual(t, "a b<script>", unsafe.header.Get("X-Request-ID"))
	require.NotEmpty(t, unsafe.header.Get("X-Request-ID"))

	// The chat answer's id carries the request ID.
	r := send(t, http.MethodPost, baseURL(n)+"/v1/chat/completions", []byte(`{"model":"sim-test","messages":[{"role":"user","content":"x"}]}`),
		map[string]string{"X-Request-ID": "trace-7"})
	require.Equal(t, "trace-7", r.header.Get("X-Request-ID"))
	require.Contains(t, string(r.body), `"chatcmpl-trace-7"`)
}

func TestEveryResponseNamesTheNode(t *testing.T) {
	n := startTestNode(t, nil)
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/health"}, {http.MethodGet, "/metrics"}, {http.MethodGet, "/v1/models"},
		{http.MethodGet, "/nowhere"}, {http.MethodPost, "/v1/infer"},
	} {
		r := send(t, tc.method, baseURL(n)+tc.path, nil, nil)
		require.Equal(t, "test-node", r.header.Get("X-Shoal-Node"), "%s %s", tc.method, tc.path)
		require.NotEmpty(t, r.header.Get("X-Request-ID"), "%s %s", tc.method, tc.path)
	}
}

func TestInvalidUTF8DoesNotBreakTheNode(t *testing.T) {
	n := startTestNode(t, nil)
	bodies := [][]byte{
		[]byte("{\"model\":\"sim-test\",\"prompt\":\"\xff\xfe\xfd bad bytes\"}"),
		[]byte("{\"model\":\"sim-\xc3\",\"prompt\":\"x\"}"),
		[]byte("{\"model\":\"sim-test\",\"prompt\":\"x\",\"\xff\":1}"),
		[]byte("\xff\xff\xff"),
	}
	for _, b := range bodies {
		r := send(t, http.MethodPost, baseURL(n)+"/v1/completions", b, nil)
		require.Contains(t, []int{http.StatusOK, http.StatusBadRequest, http.StatusNotFound}, r.status, "body: %s", r.body)
		require.True(t, json.Valid(r.body), "answer is valid JSON: %q", r.body)
	}
	require.Equal(t, http.StatusOK, postJSON(t, n, "/v1/chat/completions", chatRequest(testModel, "still alive")).status)
}

func TestDeeplyNestedJSONIs400(t *testing.T) {
	n := startTestNode(t, nil)
	deep := strings.Repeat("[", 100_000)
	for _, body := range []string{
		deep,
		`{"model":"sim-test","prompt":` + deep,
		`{"model":"sim-test","messages":[{"role":"user","content":` + deep + `}]}`,
		`{"model":"sim-test","prompt":"x","extra":` + strings.Repeat(`{"a":`, 50_000) + `1` + strings.Repeat("}", 50_000) + `}`,
	} {
		done := make(chan reply, 1)
		go func() { done <- send(t, http.MethodPost, baseURL(n)+"/v1/chat/completions", []byte(body), nil) }()
		select {
		case r := <-done:
			requireAPIError(t, r, http.StatusBadRequest)
		case <-time.After(apiWait):
			t.Fatal("nested JSON hung the node")
		}
	}
	require.Equal(t, http.StatusOK, postJSON(t, n, "/v1/chat/completions", chatRequest(testModel, "still alive")).status)
}

// sseEvents checks the framing of a server-sent-events body (every event a
// single "data: " line followed by a blank line, [DONE] last) and returns
// the JSON payloads before [DONE].
func sseEvents(t testing.TB, body []byte) []map[string]any {
	t.Helper()
	text := string(body)
	require.True(t, strings.HasSuffix(text, "data: [DONE]\n\n"), "stream ends with [DONE]: %q", text)
	frames := strings.Split(strings.TrimSuffix(text, "\n\n"), "\n\n")
	require.Equal(t, "data: [DONE]", frames[len(frames)-1])
	var out []map[string]any
	for _, f := range frames[:len(frames)-1] {
		require.True(t, strings.HasPrefix(f, "data: "), "frame %q", f)
		require.NotContains(t, f, "\n", "one line per event")
		var ev map[string]any
		require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(f, "data: ")), &ev), "frame %q", f)
		out = append(out, ev)
	}
	return out
}

func choice(ev map[string]any) map[string]any {
	cs, _ := ev["choices"].([]any)
	if len(cs) == 0 {
		return nil
	}
	c, _ := cs[0].(map[string]any)
	return c
}

func TestChatStreamFraming(t *testing.T) {
	n := startTestNode(t, withSimModel(time.Millisecond, 0, time.Millisecond))
	req := map[string]any{"model": testModel, "temperature": 0, "max_tokens": 12,
		"messages": []map[string]any{{"role": "user", "content": "stream to me"}}}
	// no-store keeps the response cache out, so both answers come from
	// the backend.
	noCache := map[string]string{"Cache-Control": "no-store"}
	body, _ := json.Marshal(req)
	plain := send(t, http.MethodPost, baseURL(n)+"/v1/chat/completions", body, noCache)
	require.Equal(t, http.StatusOK, plain.status)
	var want struct {
		Choices []chatChoice `json:"choices"`
		Usage   usage        `json:"usage"`
	}
	require.NoError(t, json.Unmarshal(plain.body, &want))

	req["stream"] = true
	req["stream_options"] = map[string]any{"include_usage": true}
	body, _ = json.Marshal(req)
	r := send(t, http.MethodPost, baseURL(n)+"/v1/chat/completions", body, noCache)
	require.Equal(t, http.StatusOK, r.status)
	require.NotEqual(t, "hit", r.header.Get("X-Shoal-Cache"))
	require.Equal(t, "text/event-stream", r.header.Get("Content-Type"))
	require.Empty(t, r.header.Get("Content-Encoding"), "streams are never compressed")
	events := sseEvents(t, r.body)
	require.GreaterOrEqual(t, len(events), 4)

	first := choice(events[0])
	require.Equal(t, "assistant", first["delta"].(map[string]any)["role"], "role chunk first")
	var content strings.Builder
	finish := ""
	for i, ev := range events[:len(events)-1] {
		require.Equal(t, "chat.completion.chunk", ev["object"])
		c := choice(ev)
		require.NotNil(t, c, "event %d has a choice", i)
		if s, ok := c["delta"].(map[string]any)["content"].(string); ok {
			content.WriteString(s)
		}
		if fr, ok := c["finish_reason"].(string); ok {
			require.Empty(t, finish, "one finish chunk")
			finish = fr
		}
	}
	require.Equal(t, want.Choices[0].FinishReason, finish)
	require.Equal(t, want.Choices[0].Message.Content, content.String())

	last := events[len(events)-1]
	require.Empty(t, last["choices"], "usage chunk has no choices")
	u := last["usage"].(map[string]any)
	require.EqualValues(t, want.Usage.PromptTokens, u["prompt_tokens"])
	require.EqualValues(t, want.Usage.CompletionTokens, u["completion_tokens"])
	require.EqualValues(t, want.Usage.TotalTokens, u["total_tokens"])
}

func TestChatStreamWithoutUsageOption(t *testing.T) {
	n := startTestNode(t, nil)
	r := postJSON(t, n, "/v1/chat/completions", map[string]any{"model": testModel, "stream": true, "max_tokens": 3,
		"messages": []map[string]any{{"role": "user", "content": "x"}}})
	require.Equal(t, http.StatusOK, r.status)
	for _, ev := range sseEvents(t, r.body) {
		require.NotContains(t, ev, "usage")
		require.NotNil(t, choice(ev))
	}
}

func TestCompletionAndInferStreamFraming(t *testing.T) {
	n := startTestNode(t, nil)
	for _, tc := range []struct {
		path string
		body map[string]any
		text func(map[string]any) (string, string, bool)
	}{
		{"/v1/completions", map[string]any{"model": testModel, "prompt": "count", "max_tokens": 5, "stream": true}, func(ev map[string]any) (string, string, bool) {
			c := choice(ev)
			if c == nil {
				return "", "", false
			}
			fr, _ := c["finish_reason"].(string)
			return c["text"].(string), fr, true
		}},
		{"/v1/infer", map[string]any{"model": testModel, "input": "count", "parameters": map[string]any{"max_tokens": 5}, "stream": true}, func(ev map[string]any) (string, string, bool) {
			s, ok := ev["text"].(string)
			fr, _ := ev["finish_reason"].(string)
			return s, fr, ok
		}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			r := postJSON(t, n, tc.path, tc.body)
			require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
			var text strings.Builder
			finish := ""
			for _, ev := range sseEvents(t, r.body) {
				s, fr, ok := tc.text(ev)
				if !ok {
					continue
				}
				text.WriteString(s)
				if fr != "" {
					finish = fr
				}
			}
			require.Equal(t, "length", finish)
			require.Len(t, strings.Fields(text.String()), 5)
		})
	}
}

func TestStreamFlushesTokensAsProduced(t *testing.T) {
	// Tokens come 100ms apart: the first event must reach the client long
	// before the last token is produced.
	n := startTestNode(t, withSimModel(time.Millisecond, 0, 100*time.Millisecond))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, baseURL(n)+"/v1/completions",
		strings.NewReader(`{"model":"sim-test","prompt":"slowly","max_tokens":30,"stream":true}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := rawClient().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	k, err := resp.Body.Read(buf)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(buf[:k]), "data: "))
	require.NotContains(t, string(buf[:k]), "[DONE]", "the first read arrives while generation goes on")
	require.Eventually(t, func() bool { return n.Scheduler().Load()[testModel].Running == 1 }, apiWait, time.Millisecond,
		"the task is still running after the client got its first token")
}

func TestHealthReportsComponents(t *testing.T) {
	n := startTestNode(t, nil)
	r := send(t, http.MethodGet, baseURL(n)+"/health", nil, nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, "application/json", r.header.Get("Content-Type"))
	var rep struct {
		Status     string `json:"status"`
		Node       string `json:"node"`
		Components map[string]struct {
			Status string         `json:"status"`
			Data   map[string]any `json:"data"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(r.body, &rep))
	require.Equal(t, "test-node", rep.Node)
	require.Contains(t, []string{"ok", "degraded"}, rep.Status)
	require.Equal(t, "ok", rep.Components["scheduler"].Status)
	model := rep.Components["model/"+testModel]
	require.Equal(t, "ok", model.Status)
	require.Equal(t, "sim", model.Data["backend"])
	for _, c := range []string{"raft", "gossip", "cache", "breakers"} {
		require.Contains(t, rep.Components, c)
	}
	head := send(t, http.MethodHead, baseURL(n)+"/health", nil, nil)
	require.Equal(t, http.StatusOK, head.status)
	require.Empty(t, head.body)
}

func TestMetricsExposeInferenceSeries(t *testing.T) {
	n := startTestNode(t, nil)
	require.Equal(t, http.StatusOK, postJSON(t, n, "/v1/chat/completions", chatRequest(testModel, "count me")).status)
	requireAPIError(t, postJSON(t, n, "/v1/chat/completions", chatRequest("missing-model", "x")), http.StatusNotFound)
	// The batch's bookkeeping ends just after its answer is written, so
	// the gauge reaches 0 a moment after the response; it must not stay up.
	var text string
	require.Eventually(t, func() bool {
		r := send(t, http.MethodGet, baseURL(n)+"/metrics", nil, nil)
		require.Equal(t, http.StatusOK, r.status)
		text = string(r.body)
		return strings.Contains(text, `inference_active_batches{model="sim-test"} 0`)
	}, apiWait, 10*time.Millisecond, "active batches never went back to 0")
	for _, want := range []string{
		`inference_request_duration_ms_bucket{code="200",endpoint="chat",model="sim-test"`,
		// A model nobody serves is counted under _unknown, not under its name.
		`inference_request_duration_ms_count{code="404",endpoint="chat",model="_unknown"} 1`,
		`inference_queue_depth{model="sim-test"} 0`,
		`inference_active_batches{model="sim-test"} 0`,
		`inference_batch_size_bucket{model="sim-test"`,
		`inference_queue_wait_ms_bucket{model="sim-test"`,
		`inference_requests_total{code="200",endpoint="chat",model="sim-test"} 1`,
		`inference_tokens_total{model="sim-test",type="prompt"}`,
		`inference_tokens_total{model="sim-test",type="completion"}`,
		"go_goroutines ",
	} {
		require.Contains(t, text, want)
	}
}

func TestConcurrentRequestsAreBatched(t *testing.T) {
	n := startTestNode(t, func(c *Config) {
		withSimModel(20*time.Millisecond, 0, 0)(c)
		c.Models[0].MaxSize = 8
		c.Models[0].FlushTimeout = 50 * time.Millisecond
	})
	const clients = 16
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		go func() {
			b, _ := json.Marshal(map[string]any{"model": testModel, "prompt": fmt.Sprint("client ", i), "max_tokens": 2})
			resp, err := rawClient().Post(baseURL(n)+"/v1/completions", "application/json", bytes.NewReader(b))
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			errs <- err
		}()
	}
	for i := 0; i < clients; i++ {
		require.NoError(t, <-errs)
	}
	r := send(t, http.MethodGet, baseURL(n)+"/metrics", nil, nil)
	count, sum := histogramTotals(t, string(r.body), "inference_batch_size", testModel)
	require.Equal(t, float64(clients), sum, "every request went through a batch")
	require.Less(t, count, float64(clients), "some requests shared a batch")
}

// histogramTotals reads a histogram's _count and _sum for a model.
func histogramTotals(t testing.TB, text, name, model string) (count, sum float64) {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		for suffix, dst := range map[string]*float64{"_count": &count, "_sum": &sum} {
			prefix := fmt.Sprintf("%s%s{model=%q} ", name, suffix, model)
			if strings.HasPrefix(line, prefix) {
				v, err := strconv.ParseFloat(strings.TrimPrefix(line, prefix), 64)
				require.NoError(t, err)
				*dst = v
			}
		}
	}
	return count, sum
}

// The node must not let a cancelled client's work run on: a client that
// goes away while queued leaves the queue.
func TestClientGoingAwayLeavesQueue(t *testing.T) {
	n := startTestNode(t, func(c *Config) {
		withSimModel(time.Minute, 0, 0)(c)
		c.Models[0].MaxSize = 1
	})
	holdSlot(t, n, "running")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, baseURL(n)+"/v1/completions", strings.NewReader(`{"model":"sim-test","prompt":"leaves"}`))
		if resp, err := rawClient().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	require.Eventually(t, func() bool { return n.Scheduler().Load()[testModel].QueueDepth == 1 }, apiWait, time.Millisecond)
	cancel()
	<-done
	require.Eventually(t, func() bool { return n.Scheduler().Load()[testModel].QueueDepth == 0 }, apiWait, time.Millisecond)
}
