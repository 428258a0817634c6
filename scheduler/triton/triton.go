// Package triton is a scheduler backend that sends work to a Triton
// Inference Server or any KServe v2 (Open Inference Protocol) server
// serving a text model: a text_input BYTES tensor in, text_output out, as
// Triton's vLLM and TensorRT-LLM backends take them.
//
// A flushed batch goes upstream as one POST .../infer with an [n, 1]
// text_input tensor when the upstream model batches (its configuration's
// max_batch_size > 0; batches larger than that are split), otherwise as one
// infer call per request. Streaming requests go one by one to Triton's
// generate_stream. Generation parameters travel in the request's
// "parameters" object.
package triton

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/scheduler"
	"github.com/shoal-dev/shoal/scheduler/internal/upcall"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout          = 60 * time.Second
	DefaultMaxConns         = 64
	DefaultMaxResponseBytes = 16 << 20
)

// Errors that mark a call that failed on the upstream's side; the node's
// breaker counts them.
var (
	// ErrUnavailable marks a call that got no complete answer: refused,
	// reset, or no answer (or, streaming, no event) within the timeout.
	ErrUnavailable = errors.New("unavailable")
	// ErrBadResponse marks an answer that does not follow the protocol: not
	// JSON, no text_output, the wrong number of elements, over the size
	// bound.
	ErrBadResponse = errors.New("bad response")
	// ErrNotReady marks an upstream whose health or model readiness check
	// failed.
	ErrNotReady = errors.New("not ready")
)

// Config points the backend at one model on one upstream server.
type Config struct {
	// Model is our name for the model, used in logs.
	Model string
	// URL is the upstream's base, e.g. http://127.0.0.1:8000; calls go to
	// URL + "/v2/models/{model}[/versions/{version}]/infer".
	URL string
	// UpstreamModel is the model name upstream (default Model).
	UpstreamModel string
	// Version is the upstream model version; empty lets the server choose.
	Version string
	// Timeout bounds one upstream call (default 60s); for a stream it
	// bounds the wait for each event.
	Timeout time.Duration
	// MaxConns bounds pooled connections to the upstream (default 64).
	MaxConns int
	// MaxResponseBytes bounds one upstream answer (default 16 MiB).
	MaxResponseBytes int64
	// Logger receives the backend's logs; nil discards them.
	Logger *slog.Logger
	// Client replaces the pooled HTTP client (tests).
	Client *http.Client
}

// Validate reports the first field out of range, by its configuration key.
func (c Config) Validate() error {
	if c.Model == "" && c.UpstreamModel == "" {
		return fmt.Errorf("model must be set")
	}
	if err := upcall.CheckBaseURL(c.URL); err != nil {
		return err
	}
	switch {
	case strings.Contains(c.Version, "/"):
		return fmt.Errorf("version must not contain '/', got %q", c.Version)
	case c.Timeout < 0:
		return fmt.Errorf("timeout must not be negative, got %s", c.Timeout)
	case c.MaxConns < 0:
		return fmt.Errorf("max_conns must not be negative, got %d", c.MaxConns)
	case c.MaxResponseBytes < 0:
		return fmt.Errorf("max_response_bytes must not be negative, got %d", c.MaxResponseBytes)
	}
	return nil
}

// Backend sends batches to a v2 server. It implements scheduler.Backend;
// Run may be called from many goroutines at once.
type Backend struct {
	cfg       Config
	client    *http.Client
	transport *http.Transport
	logger    *slog.Logger
	base      string // URL + "/v2"
	model     string // base + "/models/{model}[/versions/{v}]"
	// noAnswer is the cause of a call's timeout, made once: CallContext
	// mostly leaves it unused.
	noAnswer error

	// maxBatch is the upstream's max_batch_size once read (0: it does not
	// batch); known says it was read.
	mu       sync.Mutex
	maxBatch int
	known    bool
	ready    atomic.Bool
}

// New validates cfg, fills in its defaults and returns a backend. It makes
// no network call: the model's configuration is read on first use.
func New(cfg Config) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("triton %s: %w", cfg.Model, err)
	}
	if cfg.UpstreamModel == "" {
		cfg.UpstreamModel = cfg.Model
	}
	if cfg.Model == "" {
		cfg.Model = cfg.UpstreamModel
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxResponseBytes == 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base := strings.TrimRight(cfg.URL, "/") + "/v2"
	model := base + "/models/" + url.PathEscape(cfg.UpstreamModel)
	if cfg.Version != "" {
		model += "/versions/" + url.PathEscape(cfg.Version)
	}
	b := &Backend{cfg: cfg, client: cfg.Client, base: base, model: model, noAnswer: fmt.Errorf("no answer within %s", cfg.Timeout),
		logger: logger.With("component", "triton", "model", cfg.Model, "upstream", base)}
	if b.client == nil {
		b.transport = upcall.NewTransport(cfg.Timeout, cfg.MaxConns)
		b.client = &http.Client{Transport: b.transport}
	}
	return b, nil
}

// Close closes idle pooled connections.
func (b *Backend) Close() error {
	if b.transport != nil {
		b.transport.CloseIdleConnections()
	} else {
		b.client.CloseIdleConnections()
	}
	return nil
}

// Probe checks the upstream's /v2/health/ready and the model's ready
// endpoint, and rereads the model's max_batch_size when it comes back
// ready after not being so. A nil error means both answered 200.
func (b *Backend) Probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, min(b.cfg.Timeout, 5*time.Second))
	defer cancel()
	for _, u := range []string{b.base + "/health/ready", b.model + "/ready"} {
		if err := b.get(ctx, u, nil); err != nil {
			b.ready.Store(false)
			return fmt.Errorf("upstream %s: %w: %w", u, ErrNotReady, err)
		}
	}
	if !b.ready.Swap(true) {
		b.mu.Lock()
		b.known = false
		b.mu.Unlock()
	}
	return nil
}

// MaxBatch is the upstream model's max_batch_size, read from its
// configuration (GET .../config) on first use: 0 means the model does not
// batch, so each request goes alone. A server without the config endpoint
// (a plain KServe server) counts as not batching.
func (b *Backend) MaxBatch(ctx context.Context) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.known {
		return b.maxBatch
	}
	var cfg struct {
		MaxBatchSize int `json:"max_batch_size"`
	}
	cctx, cancel := context.WithTimeout(ctx, min(b.cfg.Timeout, 5*time.Second))
	defer cancel()
	err := b.get(cctx, b.model+"/config", &cfg)
	var ue *UpstreamError
	switch {
	case err == nil:
		b.maxBatch, b.known = max(cfg.MaxBatchSize, 0), true
	case errors.As(err, &ue) && ue.Status < 500:
		b.maxBatch, b.known = 0, true
	default:
		// Unknown for now: send one at a time and ask again next batch.
		b.logger.Debug("reading the model config failed", "err", err)
		return 0
	}
	b.logger.Info("upstream model configuration read", "max_batch_size", b.maxBatch)
	return b.maxBatch
}

// get fetches u and decodes its JSON into v (nil: only the status counts).
func (b *Backend) get(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return err
	}
	defer upcall.CloseBody(resp.Body)
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return decodeError(resp.StatusCode, raw, resp.Header.Get("Retry-After"))
	}
	if v == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, b.cfg.MaxResponseBytes)).Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadResponse, err)
	}
	return nil
}

// Run sends one batch upstream and finishes every task in it.
func (b *Backend) Run(ctx context.Context, batch []*scheduler.Task) {
	var wg sync.WaitGroup
	groups := map[string][]*scheduler.Task{}
	var order []string
	for _, t := range batch {
		if err := t.Context().Err(); err != nil {
			t.Finish(scheduler.Result{}, err)
			continue
		}
		if t.Request().Stream {
			wg.Go(func() { b.runStream(ctx, t) })
			continue
		}
		key, _ := json.Marshal(toParams(t.Request().Params))
		if _, ok := groups[string(key)]; !ok {
			order = append(order, string(key))
		}
		groups[string(key)] = append(groups[string(key)], t)
	}
	size := 1
	if len(order) > 0 {
		size = max(1, b.MaxBatch(ctx))
	}
	for _, k := range order {
		tasks := groups[k]
		for len(tasks) > 0 {
			n := min(size, len(tasks))
			chunk := tasks[:n:n]
			tasks = tasks[n:]
			wg.Go(func() { b.runInfer(ctx, chunk, size > 1) })
		}
	}
	wg.Wait()
}

// params is the request-level "parameters" object sent upstream.
type params struct {
	MaxTokens   int      `json:"max_tokens,omitempty"`
	Temperature float64  `json:"temperature"`
	TopP        float64  `json:"top_p,omitempty"`
	Seed        *int64   `json:"seed,omitempty"`
	Stop        []string `json:"stop,omitempty"`
	Stream      *bool    `json:"stream,omitempty"`
}

func toParams(p scheduler.Params) params {
	return params{MaxTokens: p.MaxTokens, Temperature: p.Temperature, TopP: p.TopP, Seed: p.Seed, Stop: p.Stop}
}

type inputTensor struct {
	Name     string   `json:"name"`
	Shape    []int    `json:"shape"`
	Datatype string   `json:"datatype"`
	Data     []string `json:"data"`
}

type inferBody struct {
	ID         string        `json:"id,omitempty"`
	Parameters params        `json:"parameters"`
	Inputs     []inputTensor `json:"inputs"`
	Outputs    []struct {
		Name string `json:"name"`
	} `json:"outputs"`
}

// runInfer sends tasks (which share their parameters) as one infer call
// with an [n, 1] text_input tensor.
func (b *Backend) runInfer(runCtx context.Context, tasks []*scheduler.Task, batched bool) {
	ctx, stop := upcall.GroupContext(runCtx, tasks)
	defer stop()
	prompts := make([]string, len(tasks))
	for i, t := range tasks {
		prompts[i] = t.Request().Prompt
		if t.Request().Endpoint == scheduler.EndpointChat {
			prompts[i] = t.Request().PromptText()
		}
	}
	body := inferBody{Parameters: toParams(tasks[0].Request().Params),
		Inputs: []inputTensor{{Name: "text_input", Shape: []int{len(prompts), 1}, Datatype: "BYTES", Data: prompts}}}
	body.Outputs = append(body.Outputs, struct {
		Name string `json:"name"`
	}{Name: "text_output"})
	if len(tasks) == 1 {
		body.ID = tasks[0].Request().ID
	}
	callCtx, cancel := upcall.CallContext(ctx, b.cfg.Timeout, b.noAnswer)
	defer cancel()
	start := time.Now()
	texts, err := b.infer(callCtx, body, len(tasks))
	if err != nil {
		upcall.FinishAll(tasks, nil, b.callError(ctx, callCtx, "infer", len(tasks), start, err))
		return
	}
	b.logger.Debug("upstream infer done", "prompts", len(tasks), "batched", batched, "elapsed", time.Since(start))
	results := make([]scheduler.Result, len(tasks))
	for i, t := range tasks {
		results[i] = result(t.Request(), texts[i])
	}
	upcall.FinishAll(tasks, results, nil)
}

// result estimates usage in words (the protocol reports none) and the
// finish reason from the length bound.
func result(req *scheduler.Request, text string) scheduler.Result {
	res := scheduler.Result{Text: text, FinishReason: "stop", PromptTokens: countWords(req.PromptText()), CompletionTokens: countWords(text)}
	if req.Params.MaxTokens > 0 && res.CompletionTokens >= req.Params.MaxTokens {
		res.FinishReason = "length"
	}
	return res
}

func countWords(s string) int { return len(strings.Fields(s)) }

func (b *Backend) infer(ctx context.Context, body inferBody, n int) ([]string, error) {
	resp, err := b.post(ctx, b.model+"/infer", body, false, body.ID)
	if err != nil {
		return nil, err
	}
	defer upcall.CloseBody(resp.Body)
	raw, err := io.ReadAll(io.LimitReader(resp.Body, b.cfg.MaxResponseBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(raw)) > b.cfg.MaxResponseBytes {
		return nil, fmt.Errorf("%w: answer larger than %d bytes", ErrBadResponse, b.cfg.MaxResponseBytes)
	}
	return decodeOutputs(raw, n)
}

// decodeOutputs reads n text_output strings from an infer answer.
func decodeOutputs(raw []byte, n int) ([]string, error) {
	var ans struct {
		Outputs []struct {
			Name     string          `json:"name"`
			Datatype string          `json:"datatype"`
			Data     json.RawMessage `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(raw, &ans); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadResponse, err)
	}
	for _, o := range ans.Outputs {
		if o.Name != "text_output" {
			continue
		}
		var flat []string
		if err := json.Unmarshal(o.Data, &flat); err != nil {
			flat = nil
			var nested [][]string
			if err := json.Unmarshal(o.Data, &nested); err != nil {
				return nil, fmt.Errorf("%w: text_output is not an array of strings", ErrBadResponse)
			}
			for _, row := range nested {
				flat = append(flat, row...)
			}
		}
		if len(flat) != n {
			return nil, fmt.Errorf("%w: text_output holds %d elements for %d prompts", ErrBadResponse, len(flat), n)
		}
		return flat, nil
	}
	return nil, fmt.Errorf("%w: the answer has no text_output", ErrBadResponse)
}

// runStream sends one request to generate_stream and emits each event's
// text_output as it arrives.
func (b *Backend) runStream(runCtx context.Context, t *scheduler.Task) {
	tasks := []*scheduler.Task{t}
	ctx, stop := upcall.GroupContext(runCtx, tasks)
	defer stop()
	req := t.Request()
	callCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(b.cfg.Timeout, func() { cancel(fmt.Errorf("no event within %s", b.cfg.Timeout)) })
	defer idle.Stop()
	p := toParams(req.Params)
	yes := true
	p.Stream = &yes
	body := map[string]any{"text_input": req.PromptText(), "parameters": p}
	if req.ID != "" {
		body["id"] = req.ID
	}
	start := time.Now()
	resp, err := b.post(callCtx, b.model+"/generate_stream", body, true, req.ID)
	if err != nil {
		upcall.FinishAll(tasks, nil, b.callError(ctx, callCtx, "generate_stream", 1, start, err))
		return
	}
	defer upcall.CloseBody(resp.Body)
	var text strings.Builder
	read := int64(0)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		idle.Reset(b.cfg.Timeout)
		line := sc.Bytes()
		read += int64(len(line))
		if read > b.cfg.MaxResponseBytes {
			err = fmt.Errorf("%w: stream larger than %d bytes", ErrBadResponse, b.cfg.MaxResponseBytes)
			break
		}
		data, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue
		}
		data = bytes.TrimSpace(data)
		if len(data) == 0 || string(data) == "[DONE]" {
			continue
		}
		var ev struct {
			TextOutput *string         `json:"text_output"`
			Error      json.RawMessage `json:"error"`
		}
		if jerr := json.Unmarshal(data, &ev); jerr != nil {
			err = fmt.Errorf("%w: event is not JSON: %v", ErrBadResponse, jerr)
			break
		}
		if len(ev.Error) > 0 {
			err = decodeError(0, data, "")
			break
		}
		if ev.TextOutput != nil && *ev.TextOutput != "" {
			text.WriteString(*ev.TextOutput)
			t.Emit(*ev.TextOutput)
		}
	}
	if err == nil {
		err = sc.Err()
	}
	if err != nil {
		upcall.FinishAll(tasks, nil, b.callError(ctx, callCtx, "generate_stream", 1, start, err))
		return
	}
	upcall.FinishAll(tasks, []scheduler.Result{result(req, text.String())}, nil)
}

const maxErrorBody = 64 << 10

// post sends one request; a non-2xx answer comes back as *UpstreamError.
func (b *Backend) post(ctx context.Context, u string, body any, stream bool, reqID string) (*http.Response, error) {
	req, err := upcall.NewPost(ctx, u, body, stream, reqID)
	if err != nil {
		return nil, err
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		upcall.CloseBody(resp.Body)
		return nil, decodeError(resp.StatusCode, raw, resp.Header.Get("Retry-After"))
	}
	return resp, nil
}

// callError turns what ended a call into the error its tasks finish with:
// the bare context error when the task's own context ended, the upstream's
// answer as *UpstreamError, anything else wrapped in ErrUnavailable or
// ErrBadResponse.
func (b *Backend) callError(ctx, callCtx context.Context, what string, n int, start time.Time, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	var ue *UpstreamError
	var urlErr *url.Error
	switch {
	case callCtx.Err() != nil:
		err = fmt.Errorf("upstream %s: %w: %w", what, ErrUnavailable, context.Cause(callCtx))
	case errors.As(err, &ue):
		err = ue
	case errors.Is(err, ErrBadResponse):
		err = fmt.Errorf("upstream %s: %w", what, err)
	default:
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		// Transport timeouts match context.DeadlineExceeded; keep them out
		// of the chain so the node does not take them for the client's.
		err = fmt.Errorf("upstream %s: %w: %v", what, ErrUnavailable, err)
	}
	level := slog.LevelDebug
	if IsBackendFailure(err) {
		level = slog.LevelWarn
	}
	b.logger.Log(ctx, level, "upstream call failed", "call", what, "prompts", n, "elapsed", time.Since(start), "err", err)
	return err
}

// IsBackendFailure reports whether err is the upstream's fault: a network
// error, a timeout, a malformed answer or a 5xx.
func IsBackendFailure(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrBadResponse) || errors.Is(err, ErrNotReady) {
		return true
	}
	var ue *UpstreamError
	return errors.As(err, &ue) && ue.Status >= 500
}

// UpstreamError is an error the upstream answered with: a non-2xx status
// or an error event in a stream. It implements HTTPStatus and
// RetryAfterHint, so the node answers the client as for the openai
// backend: 4xx as is, 429 with Retry-After, 5xx as 502, and only 5xx counts
// against the breaker.
type UpstreamError struct {
	Status     int
	Message    string
	RetryAfter time.Duration
}

// Error leaves out the upstream's address: clients see this message.
func (e *UpstreamError) Error() string {
	return fmt.Sprintf("upstream answered %d: %s", e.Status, e.Message)
}

// HTTPStatus is the upstream's status.
func (e *UpstreamError) HTTPStatus() int { return e.Status }

// RetryAfterHint is the upstream's Retry-After.
func (e *UpstreamError) RetryAfterHint() time.Duration { return e.RetryAfter }

// decodeError reads the protocol's {"error": "..."} (or any text) of an
// upstream answer. status 0 means an error event in a stream: 500.
func decodeError(status int, body []byte, retryAfter string) *UpstreamError {
	e := &UpstreamError{Status: status}
	if status == 0 {
		e.Status = http.StatusInternalServerError
	}
	var env struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && len(env.Error) > 0 {
		var s string
		var obj struct {
			Message string `json:"message"`
		}
		switch {
		case json.Unmarshal(env.Error, &s) == nil:
			e.Message = s
		case json.Unmarshal(env.Error, &obj) == nil:
			e.Message = obj.Message
		}
	}
	if e.Message == "" {
		e.Message = strings.TrimSpace(string(body))
	}
	if e.Message == "" {
		e.Message = http.StatusText(e.Status)
	}
	if e.Message == "" {
		e.Message = "status " + strconv.Itoa(e.Status)
	}
	e.Message = upcall.Clip(e.Message, 1024)
	e.RetryAfter = upcall.RetryAfter(retryAfter, time.Now())
	return e
}
