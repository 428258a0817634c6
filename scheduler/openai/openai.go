// Package openai is a scheduler backend that sends work to an
// OpenAI-compatible model server (vLLM, llama.cpp server, Ollama, TGI).
//
// A batch is split by shape. Completion and infer requests that share their
// generation parameters go as one POST {URL}/completions with a prompt
// array, so the upstream can batch them on its GPU; chat requests go
// concurrently, one POST {URL}/chat/completions each; streaming requests go
// one by one and pass the upstream's events through as they arrive.
package openai

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/scheduler"
	"github.com/shoal-dev/shoal/scheduler/internal/upcall"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout          = 60 * time.Second
	DefaultMaxConns         = 64
	DefaultMaxPrompts       = 64
	DefaultMaxResponseBytes = 16 << 20
)

// Config points the backend at one upstream server.
type Config struct {
	// Model is our name for the model, used in logs.
	Model string
	// URL is the upstream's API base, e.g. http://127.0.0.1:8000/v1;
	// requests go to URL + "/completions" and URL + "/chat/completions".
	URL string
	// UpstreamModel is the model name sent upstream (default Model).
	UpstreamModel string
	// APIKey is sent as "Authorization: Bearer <key>" when set.
	APIKey string
	// Timeout bounds one upstream call (default 60s). For a streamed call
	// it bounds the wait for each event instead, so a long generation that
	// keeps producing is never cut off.
	Timeout time.Duration
	// MaxConns bounds the pooled connections to the upstream (default 64);
	// calls beyond it wait for a free connection.
	MaxConns int
	// MaxPrompts bounds the prompts in one grouped completions call
	// (default 64). Set 1 for servers that take no prompt arrays (Ollama's
	// OpenAI API, older llama.cpp); every completion then goes alone.
	MaxPrompts int
	// MaxResponseBytes bounds one upstream answer, streamed or not
	// (default 16 MiB).
	MaxResponseBytes int64
	// Logger receives the backend's logs; nil discards them.
	Logger *slog.Logger
	// Client replaces the pooled HTTP client (tests); MaxConns and Timeout
	// then do not shape its transport, though Timeout still bounds calls.
	Client *http.Client
}

// Validate reports the first field that is out of range, by its
// configuration key.
func (c Config) Validate() error {
	if c.Model == "" && c.UpstreamModel == "" {
		return fmt.Errorf("model must be set")
	}
	if err := upcall.CheckBaseURL(c.URL); err != nil {
		return err
	}
	switch {
	case c.Timeout < 0:
		return fmt.Errorf("timeout must not be negative, got %s", c.Timeout)
	case c.MaxConns < 0:
		return fmt.Errorf("max_conns must not be negative, got %d", c.MaxConns)
	case c.MaxPrompts < 0:
		return fmt.Errorf("max_prompts must not be negative, got %d", c.MaxPrompts)
	case c.MaxResponseBytes < 0:
		return fmt.Errorf("max_response_bytes must not be negative, got %d", c.MaxResponseBytes)
	}
	return nil
}

// Backend sends batches to an OpenAI-compatible server. It implements
// scheduler.Backend; Run may be called from many goroutines at once.
type Backend struct {
	cfg         Config
	client      *http.Client
	transport   idleCloser // nil when Config.Client was given
	logger      *slog.Logger
	poster      *upcall.Poster
	completions *upcall.Endpoint
	chat        *upcall.Endpoint
	// noAnswer is the cause of a call's timeout, made once.
	noAnswer error
}

// New validates cfg, fills in its defaults, and returns a backend with its
// own pooled transport. It makes no network call.
func New(cfg Config) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("openai %s: %w", cfg.Model, err)
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
	if cfg.MaxPrompts == 0 {
		cfg.MaxPrompts = DefaultMaxPrompts
	}
	if cfg.MaxResponseBytes == 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base := strings.TrimRight(cfg.URL, "/")
	completions, err := upcall.NewEndpoint(base + "/completions")
	if err != nil {
		return nil, fmt.Errorf("openai %s: %w", cfg.Model, err)
	}
	chat, err := upcall.NewEndpoint(base + "/chat/completions")
	if err != nil {
		return nil, fmt.Errorf("openai %s: %w", cfg.Model, err)
	}
	b := &Backend{
		cfg:         cfg,
		client:      cfg.Client,
		logger:      logger.With("component", "openai", "model", cfg.Model, "upstream", base),
		completions: completions,
		chat:        chat,
		noAnswer:    fmt.Errorf("no answer within %s", cfg.Timeout),
	}
	var direct http.RoundTripper
	if b.client == nil {
		rt := newUpstreamTransport(cfg)
		b.transport = rt
		b.client = &http.Client{Transport: rt}
		direct = rt
	}
	b.poster = upcall.NewPoster(b.client, direct, cfg.APIKey)
	return b, nil
}

// Close closes the idle pooled connections. Calls still in flight finish
// on their own connections.
func (b *Backend) Close() error {
	if b.transport != nil {
		b.transport.CloseIdleConnections()
	} else {
		b.client.CloseIdleConnections()
	}
	return nil
}

// Run sends one batch upstream and finishes every task in it: grouped
// completions, concurrent chats and individual streams all run at once,
// bounded only by MaxConns. A task whose context ends is finished at once
// with the context's error; its upstream call is aborted when no other
// task still waits on it. ctx is the scheduler's batch context, which ends
// when every task has ended.
func (b *Backend) Run(ctx context.Context, batch []*scheduler.Task) {
	type group struct {
		params wireParams
		tasks  []*scheduler.Task
	}
	if len(batch) == 1 {
		// Nothing to group or overlap: run it on this goroutine.
		t := batch[0]
		if req := t.Request(); t.Context().Err() == nil && req.Stream {
			b.runStream(ctx, t)
			return
		} else if t.Context().Err() == nil && req.Endpoint == scheduler.EndpointChat {
			b.runChat(ctx, t)
			return
		}
	}
	var (
		wg     sync.WaitGroup
		groups = map[string]*group{}
		order  []*group
	)
	for _, t := range batch {
		if err := t.Context().Err(); err != nil {
			t.Finish(scheduler.Result{}, err)
			continue
		}
		req := t.Request()
		switch {
		case req.Stream:
			wg.Go(func() { b.runStream(ctx, t) })
		case req.Endpoint == scheduler.EndpointChat:
			wg.Go(func() { b.runChat(ctx, t) })
		default:
			p := toWire(req.Params)
			key, err := json.Marshal(p)
			if err != nil {
				t.Finish(scheduler.Result{}, fmt.Errorf("openai %s: encode parameters: %w", b.cfg.Model, err))
				continue
			}
			g := groups[string(key)]
			if g == nil {
				g = &group{params: p}
				groups[string(key)] = g
				order = append(order, g)
			}
			g.tasks = append(g.tasks, t)
		}
	}
	for _, g := range order {
		for chunk := range slicesChunk(g.tasks, b.cfg.MaxPrompts) {
			wg.Go(func() { b.runCompletions(ctx, chunk, g.params) })
		}
	}
	wg.Wait()
}

// slicesChunk yields consecutive pieces of s of at most n elements.
func slicesChunk[T any](s []T, n int) func(yield func([]T) bool) {
	return func(yield func([]T) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k:k]) {
				return
			}
			s = s[k:]
		}
	}
}

// runCompletions sends tasks that share params as one completions call.
// Usage is reported for the whole call; it is split over the tasks in
// proportion to each prompt's and each answer's length in bytes, so the
// shares add up to the upstream's totals exactly.
func (b *Backend) runCompletions(runCtx context.Context, tasks []*scheduler.Task, params wireParams) {
	ctx, stop := upcall.GroupContext(runCtx, tasks)
	defer stop()
	prompts := make([]string, len(tasks))
	for i, t := range tasks {
		prompts[i] = t.Request().Prompt
	}
	body := completionRequest{Model: b.cfg.UpstreamModel, Prompt: prompts, wireParams: params}
	reqID := ""
	if len(prompts) == 1 {
		body.Prompt = prompts[0]
		reqID = tasks[0].Request().ID
	}
	answers, u, err := b.call(ctx, b.completions, body, len(tasks), reqID)
	if err != nil {
		upcall.FinishAll(tasks, nil, err)
		return
	}
	results := make([]scheduler.Result, len(tasks))
	promptW, textW := make([]int, len(tasks)), make([]int, len(tasks))
	for i, a := range answers {
		results[i] = scheduler.Result{Text: a.Text, FinishReason: a.FinishReason}
		promptW[i], textW[i] = len(prompts[i]), len(a.Text)
	}
	if u.known() {
		ps, cs := apportion(u.PromptTokens, promptW), apportion(u.CompletionTokens, textW)
		for i := range results {
			results[i].PromptTokens, results[i].CompletionTokens = ps[i], cs[i]
		}
	} else {
		for i := range results {
			results[i].PromptTokens, results[i].CompletionTokens = countWords(prompts[i]), countWords(results[i].Text)
		}
	}
	upcall.FinishAll(tasks, results, nil)
}

// runChat sends one non-streamed chat request.
func (b *Backend) runChat(runCtx context.Context, t *scheduler.Task) {
	tasks := [1]*scheduler.Task{t}
	ctx, stop := upcall.GroupContext(runCtx, tasks[:])
	defer stop()
	req := t.Request()
	body := chatRequest{Model: b.cfg.UpstreamModel, Messages: req.Messages, wireParams: toWire(req.Params)}
	answers, u, err := b.call(ctx, b.chat, body, 1, req.ID)
	if err != nil {
		upcall.FinishAll(tasks[:], nil, err)
		return
	}
	upcall.FinishAll(tasks[:], []scheduler.Result{b.result(req, answers[0], u)}, nil)
}

// result builds a single task's result, estimating usage the upstream did
// not report.
func (b *Backend) result(req *scheduler.Request, a answer, u *usage) scheduler.Result {
	res := scheduler.Result{Text: a.Text, FinishReason: a.FinishReason}
	if u.known() {
		res.PromptTokens, res.CompletionTokens = u.PromptTokens, u.CompletionTokens
	} else {
		res.PromptTokens, res.CompletionTokens = countWords(req.PromptText()), countWords(a.Text)
	}
	return res
}

// runStream sends one streamed request and emits each event's text as it
// arrives.
func (b *Backend) runStream(runCtx context.Context, t *scheduler.Task) {
	tasks := []*scheduler.Task{t}
	ctx, stop := upcall.GroupContext(runCtx, tasks)
	defer stop()
	req := t.Request()
	opts := &streamOptions{IncludeUsage: true}
	endpoint := b.completions
	var body any = completionRequest{Model: b.cfg.UpstreamModel, Prompt: req.Prompt, wireParams: toWire(req.Params), Stream: true, StreamOptions: opts}
	if req.Endpoint == scheduler.EndpointChat {
		endpoint = b.chat
		body = chatRequest{Model: b.cfg.UpstreamModel, Messages: req.Messages, wireParams: toWire(req.Params), Stream: true, StreamOptions: opts}
	}

	// The timeout is per event, not per call: the idle timer restarts on
	// every byte, and its firing cancels the call with a cause that says so.
	callCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(b.cfg.Timeout, func() {
		cancel(fmt.Errorf("no event within %s", b.cfg.Timeout))
	})
	defer idle.Stop()

	start := time.Now()
	resp, err := b.post(callCtx, endpoint, body, true, req.ID)
	if err != nil {
		upcall.FinishAll(tasks, nil, b.callError(ctx, callCtx, endpoint, 1, start, err))
		return
	}
	defer upcall.CloseBody(resp.Body)
	r := &activityReader{
		r:     newBoundedReader(resp.Body, b.cfg.MaxResponseBytes),
		touch: func() { idle.Reset(b.cfg.Timeout) },
	}

	var res streamResult
	if isJSON(resp.Header.Get("Content-Type")) {
		// A server that ignores "stream" answers in one piece; pass it on
		// as one event rather than failing.
		var raw []byte
		if raw, err = io.ReadAll(r); err == nil {
			var answers []answer
			if answers, res.Usage, err = decodeChoices(raw, 1); err == nil {
				res.Text, res.FinishReason = answers[0].Text, answers[0].FinishReason
				t.Emit(res.Text)
			}
		}
	} else {
		res, err = readStream(r, t.Emit)
	}
	if err != nil {
		upcall.FinishAll(tasks, nil, b.callError(ctx, callCtx, endpoint, 1, start, err))
		return
	}
	// The answer is complete. A compliant server ends the response right
	// after [DONE]; give one that does not a short grace for the deferred
	// drain (which keeps the connection reusable), not a whole timeout,
	// since Run holds a batch slot until it returns.
	idle.Reset(min(b.cfg.Timeout, drainGrace))
	if b.logger.Enabled(ctx, slog.LevelDebug) {
		b.logger.Debug("upstream stream done", "endpoint", endpoint.String(), "elapsed", time.Since(start))
	}
	// Without include_usage support upstream, usage is estimated in words.
	upcall.FinishAll(tasks, []scheduler.Result{b.result(req, answer{Text: res.Text, FinishReason: res.FinishReason}, res.Usage)}, nil)
}

func isJSON(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "application/json")
}

// call makes one non-streamed call answering n prompts, bounded by Timeout.
func (b *Backend) call(ctx context.Context, endpoint *upcall.Endpoint, body any, n int, reqID string) ([]answer, *usage, error) {
	callCtx, cancel := upcall.CallContext(ctx, b.cfg.Timeout, b.noAnswer)
	defer cancel()
	start := time.Now()
	resp, err := b.post(callCtx, endpoint, body, false, reqID)
	if err != nil {
		return nil, nil, b.callError(ctx, callCtx, endpoint, n, start, err)
	}
	defer upcall.CloseBody(resp.Body)
	raw, err := io.ReadAll(newBoundedReader(resp.Body, b.cfg.MaxResponseBytes))
	if err != nil {
		return nil, nil, b.callError(ctx, callCtx, endpoint, n, start, err)
	}
	answers, u, err := decodeChoices(raw, n)
	if err != nil {
		return nil, nil, b.callError(ctx, callCtx, endpoint, n, start, err)
	}
	if b.logger.Enabled(ctx, slog.LevelDebug) {
		// Guarded: the arguments alone cost allocations on every call.
		b.logger.Debug("upstream call done", "endpoint", endpoint.String(), "prompts", n, "elapsed", time.Since(start))
	}
	return answers, u, nil
}

const (
	// maxErrorBody bounds how much of an error answer is read.
	maxErrorBody = 64 << 10
	// drainGrace bounds the wait for a stream's end after [DONE].
	drainGrace = time.Second
)

// post sends one request. A non-2xx answer comes back as *UpstreamError;
// transport errors come back raw, for callError to classify.
func (b *Backend) post(ctx context.Context, endpoint *upcall.Endpoint, body any, stream bool, reqID string) (*http.Response, error) {
	resp, err := b.poster.Post(ctx, endpoint, body, stream, reqID)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		upcall.CloseBody(resp.Body)
		ue := decodeError(resp.StatusCode, raw)
		ue.RetryAfter = upcall.RetryAfter(resp.Header.Get("Retry-After"), time.Now())
		return nil, ue
	}
	return resp, nil
}

// callError turns what ended a call into the error its tasks finish with,
// and logs it. ctx is the tasks' own context: when it has ended the bare
// context error is returned (the client's doing, not the upstream's).
// callCtx is ctx plus this call's timeout; when only it has ended, the
// upstream was too slow.
func (b *Backend) callError(ctx, callCtx context.Context, endpoint *upcall.Endpoint, n int, start time.Time, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	var (
		ue       *UpstreamError
		urlErr   *url.Error
		valueErr *json.UnsupportedValueError
	)
	switch {
	case errors.As(err, &valueErr):
		// A NaN or infinite parameter: the request's fault, not the upstream's.
		return fmt.Errorf("openai %s: %w", b.cfg.Model, err)
	case callCtx.Err() != nil:
		err = fmt.Errorf("upstream %s: %w: %w", endpoint, ErrUnavailable, context.Cause(callCtx))
	case errors.As(err, &ue):
		// The node shows this message to clients: keep the address out.
		err = ue
	case errors.Is(err, ErrBadResponse):
		err = fmt.Errorf("upstream %s: %w", endpoint, err)
	default:
		if errors.As(err, &urlErr) {
			err = urlErr.Err // its text repeats the method and URL
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			// Transport timeouts (dial, response headers) match
			// context.DeadlineExceeded; keeping them out of the chain stops
			// the node from taking them for the client's own deadline.
			err = fmt.Errorf("upstream %s: %w: %v (call timeout %s)", endpoint, ErrUnavailable, err, b.cfg.Timeout)
		} else {
			err = fmt.Errorf("upstream %s: %w: %w", endpoint, ErrUnavailable, err)
		}
	}
	level := slog.LevelDebug
	if IsBackendFailure(err) {
		level = slog.LevelWarn
	}
	b.logger.Log(ctx, level, "upstream call failed", "endpoint", endpoint.String(), "prompts", n, "elapsed", time.Since(start), "err", err)
	return err
}
