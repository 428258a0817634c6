package openai

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
)

// upstream is an in-test OpenAI-compatible model server (the real ones,
// vLLM and friends, live outside the project). It records every request it
// receives and, unless a test installs its own handler, answers the way
// vLLM does: a completion of prompt p is "re: p", a chat answer is
// "re: " + the last message, each word streamed as its own event.
type upstream struct {
	t   testing.TB
	srv *httptest.Server

	// handler, when set, answers instead of the default model; it may call
	// serveModel to answer normally after doing its part.
	handler func(w http.ResponseWriter, r *http.Request, rec recorded)
	// reverse answers grouped prompts with choices in reverse order.
	reverse bool
	// noUsage leaves usage out, as servers without include_usage do.
	noUsage bool

	mu       sync.Mutex
	calls    []recorded
	inflight int
	peak     int
	conns    map[net.Conn]http.ConnState
	newConns int
}

// recorded is one request as the upstream received it.
type recorded struct {
	Path   string
	Header http.Header
	Raw    []byte
	Body   struct {
		Model         string              `json:"model"`
		Prompt        json.RawMessage     `json:"prompt"`
		Messages      []scheduler.Message `json:"messages"`
		MaxTokens     *int                `json:"max_tokens"`
		Temperature   *float64            `json:"temperature"`
		TopP          *float64            `json:"top_p"`
		Seed          *int64              `json:"seed"`
		Stop          []string            `json:"stop"`
		Stream        bool                `json:"stream"`
		StreamOptions *struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
}

// prompts decodes the prompt field, a string or an array of strings.
func (r recorded) prompts(t testing.TB) (list []string, isArray bool) {
	t.Helper()
	var one string
	if json.Unmarshal(r.Body.Prompt, &one) == nil {
		return []string{one}, false
	}
	require.NoError(t, json.Unmarshal(r.Body.Prompt, &list), "prompt is neither string nor array: %s", r.Body.Prompt)
	return list, true
}

func newUpstream(t testing.TB) *upstream {
	t.Helper()
	u := &upstream{t: t, conns: map[net.Conn]http.ConnState{}}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	u.srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		u.mu.Lock()
		defer u.mu.Unlock()
		if st == http.StateNew {
			u.newConns++
		}
		u.conns[c] = st
	}
	u.srv.Start()
	t.Cleanup(u.srv.Close)
	return u
}

// url is the API base, as Config.URL takes it.
func (u *upstream) url() string { return u.srv.URL + "/v1" }

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rec := recorded{Path: r.URL.Path, Header: r.Header.Clone(), Raw: raw}
	if err := json.Unmarshal(raw, &rec.Body); err != nil {
		writeErr(w, http.StatusBadRequest, "invalid_request_error", "bad JSON: "+err.Error())
		return
	}
	u.mu.Lock()
	u.calls = append(u.calls, rec)
	u.inflight++
	u.peak = max(u.peak, u.inflight)
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.inflight--
		u.mu.Unlock()
	}()
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		writeErr(w, http.StatusBadRequest, "invalid_request_error", "want a JSON POST")
		return
	}
	if u.handler != nil {
		u.handler(w, r, rec)
		return
	}
	u.serveModel(w, r, rec)
}

// recordedCalls returns a copy of what has been received so far.
func (u *upstream) recordedCalls() []recorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]recorded(nil), u.calls...)
}

func (u *upstream) stats() (calls, inflight, peak, newConns int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.calls), u.inflight, u.peak, u.newConns
}

// serveModel answers like an OpenAI-compatible server.
func (u *upstream) serveModel(w http.ResponseWriter, r *http.Request, rec recorded) {
	var prompts []string
	chat := rec.Path == "/v1/chat/completions"
	switch {
	case chat:
		if len(rec.Body.Messages) == 0 {
			writeErr(w, http.StatusBadRequest, "invalid_request_error", "messages must not be empty")
			return
		}
		prompts = []string{rec.Body.Messages[len(rec.Body.Messages)-1].Content}
	case rec.Path == "/v1/completions":
		prompts, _ = rec.prompts(u.t)
	default:
		writeErr(w, http.StatusNotFound, "invalid_request_error", "no route "+rec.Path)
		return
	}
	texts := make([]string, len(prompts))
	use := usage{}
	for i, p := range prompts {
		texts[i] = answerText(p, rec.Body.MaxTokens)
		use.PromptTokens += countWords(p)
		use.CompletionTokens += countWords(texts[i])
	}
	if rec.Body.Stream {
		u.streamModel(w, chat, texts[0], use, rec)
		return
	}
	choices := make([]map[string]any, len(texts))
	for i, text := range texts {
		c := map[string]any{"index": i, "finish_reason": "stop", "logprobs": nil}
		if chat {
			c["message"] = map[string]any{"role": "assistant", "content": text}
		} else {
			c["text"] = text
		}
		choices[i] = c
	}
	if u.reverse {
		for i, j := 0, len(choices)-1; i < j; i, j = i+1, j-1 {
			choices[i], choices[j] = choices[j], choices[i]
		}
	}
	out := map[string]any{"id": "cmpl-1", "object": "text_completion", "model": rec.Body.Model, "choices": choices}
	if !u.noUsage {
		out["usage"] = map[string]int{"prompt_tokens": use.PromptTokens, "completion_tokens": use.CompletionTokens, "total_tokens": use.PromptTokens + use.CompletionTokens}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// answerText is the model's deterministic output, cut to maxTokens words.
func answerText(prompt string, maxTokens *int) string {
	words := append([]string{"re:"}, strings.Fields(prompt)...)
	if maxTokens != nil && *maxTokens > 0 && *maxTokens < len(words) {
		words = words[:*maxTokens]
	}
	return strings.Join(words, " ")
}

// streamModel sends text one word per event, flushing each, then the
// finish reason, the usage chunk when asked for, and [DONE].
func (u *upstream) streamModel(w http.ResponseWriter, chat bool, text string, use usage, rec recorded) {
	sse := newSSE(w)
	words := strings.SplitAfter(text, " ")
	if chat {
		sse.event(`{"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}`)
	}
	for _, word := range words {
		sse.event(chunkJSON(chat, word, ""))
	}
	sse.event(chunkJSON(chat, "", "stop"))
	if rec.Body.StreamOptions != nil && rec.Body.StreamOptions.IncludeUsage && !u.noUsage {
		sse.event(fmt.Sprintf(`{"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}`, use.PromptTokens, use.CompletionTokens))
	}
	sse.done()
}

// chunkJSON is one stream chunk carrying text, and a finish reason if set.
func chunkJSON(chat bool, text, finish string) string {
	c := map[string]any{"index": 0, "finish_reason": nil}
	if finish != "" {
		c["finish_reason"] = finish
	}
	if chat {
		c["delta"] = map[string]any{"content": text}
	} else {
		c["text"] = text
	}
	b, _ := json.Marshal(map[string]any{"object": "chunk", "choices": []any{c}})
	return string(b)
}

type sse struct {
	w http.ResponseWriter
	f http.Flusher
}

func newSSE(w http.ResponseWriter) *sse {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	f, _ := w.(http.Flusher)
	return &sse{w: w, f: f}
}

func (s *sse) event(data string) {
	_, _ = fmt.Fprintf(s.w, "data: %s\n\n", data)
	s.f.Flush()
}

func (s *sse) done() { s.event("[DONE]") }

func writeErr(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": status}})
}

// newBackend builds a backend on u with the given tweaks, closed at cleanup.
func newBackend(t *testing.T, u *upstream, tweak func(*Config)) *Backend {
	t.Helper()
	cfg := Config{Model: "m", URL: u.url(), Timeout: 30 * time.Second}
	if tweak != nil {
		tweak(&cfg)
	}
	b, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

// completion, chat and stream make requests of each shape.
func completion(prompt string, p scheduler.Params) *scheduler.Request {
	return &scheduler.Request{ID: "req-" + prompt, Model: "m", Endpoint: scheduler.EndpointCompletion, Prompt: prompt, Params: p}
}

func chat(content string) *scheduler.Request {
	return &scheduler.Request{ID: "chat-" + content, Model: "m", Endpoint: scheduler.EndpointChat, Messages: []scheduler.Message{
		{Role: "system", Content: "be brief"}, {Role: "user", Content: content},
	}}
}

func stream(req *scheduler.Request) *scheduler.Request {
	req.Stream = true
	return req
}

// tasks makes a task per request, all bound to ctx.
func tasks(ctx context.Context, reqs ...*scheduler.Request) []*scheduler.Task {
	out := make([]*scheduler.Task, len(reqs))
	for i, r := range reqs {
		out[i] = scheduler.NewTask(ctx, r)
	}
	return out
}

// outcome waits for t to finish and returns what it finished with.
func outcome(t *testing.T, task *scheduler.Task) (scheduler.Result, error) {
	t.Helper()
	select {
	case <-task.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("task %s did not finish", task.Request().ID)
	}
	return task.Outcome()
}

// runAsync runs batch on b in the background; the returned channel closes
// when Run returns.
func runAsync(b *Backend, batch []*scheduler.Task) <-chan struct{} {
	return runAsyncUnder(context.Background(), b, batch)
}

// runAsyncUnder is runAsync with ctx as Run's context.
func runAsyncUnder(ctx context.Context, b *Backend, batch []*scheduler.Task) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run(ctx, batch)
	}()
	return done
}

// wait fails the test if ch does not close in time; the bound is a guard
// against hanging, not a synchronisation.
func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}
