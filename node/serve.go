package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/router"
	"github.com/shoal-dev/shoal/scheduler"
)

// api serves the inference endpoints on this node.
type api struct {
	n       *Node
	node    string
	cfg     HTTPConfig
	sched   *scheduler.Scheduler
	metrics *ops.Metrics
	logger  *slog.Logger
}

type decoder func([]byte) (*apiRequest, error)

func (a *api) handler(endpoint scheduler.Endpoint, decode decoder) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		a.metrics.InFlight.Inc()
		defer a.metrics.InFlight.Dec()
		model, status := "", 0
		defer func() {
			if model == "" {
				model = "unknown"
			}
			a.metrics.ObserveRequest(model, string(endpoint), status, time.Since(start))
		}()
		fail := func(err error) {
			ae := toAPIError(err)
			status = ae.Status
			if ae.Status >= 500 {
				a.logger.Warn("request failed", "request_id", requestID(r.Context()), "model", model, "status", ae.Status, "err", err)
			}
			writeError(w, r, ae)
		}
		body, aerr := readBody(w, r, a.cfg.MaxBodyBytes)
		if aerr != nil {
			fail(aerr)
			return
		}
		req, err := decode(body)
		if err != nil {
			fail(err)
			return
		}
		model = req.Model
		if hp := r.Header.Get("X-Shoal-Priority"); hp != "" {
			p, err := parsePriority(hp)
			if err != nil {
				fail(err)
				return
			}
			req.Priority = p
		}
		timeout := a.cfg.RequestTimeout
		if ht := r.Header.Get("X-Shoal-Timeout"); ht != "" {
			d, aerr := parseTimeout(ht)
			if aerr != nil {
				fail(aerr)
				return
			}
			timeout = min(timeout, d)
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		forwarded := r.Header.Get(router.HeaderForwarded) != "" && a.n.trustedForward(r)
		if !forwarded {
			r.Header.Del(router.HeaderForwarded)
			// Limits are checked where a request enters the cluster.
			if err := a.admit(ctx, w, r, req); err != nil {
				fail(err)
				return
			}
			// The receiving node looks the answer up, so a hit costs no hop.
			if a.answerFromCache(ctx, w, r, req) {
				status = http.StatusOK
				return
			}
		}
		status = a.dispatch(ctx, w, r, req, body, start)
	}
}

// answerFromCache serves a cached answer when the request allows it and one
// exists, and sets X-Shoal-Cache either way.
func (a *api) answerFromCache(ctx context.Context, w http.ResponseWriter, r *http.Request, req *apiRequest) bool {
	key, ok := a.n.requestCacheKey(req)
	pol := parseCacheControl(r.Header.Get("Cache-Control"))
	if !ok || !pol.lookup {
		setCacheHeader(w, cacheBypass)
		return false
	}
	lctx, cancel := context.WithTimeout(ctx, a.n.cfg.Cache.LookupTimeout)
	defer cancel()
	ans, found := a.n.cacheLookup(lctx, req.Model, key)
	if !found {
		setCacheHeader(w, cacheMiss)
		return false
	}
	setCacheHeader(w, cacheHit)
	w.Header().Set(router.HeaderRoute, "cache")
	a.tokensUsed(ctx, w, r, req, ans.Results, false)
	if req.Stream {
		a.replayStream(w, r, req, ans.Results[0])
		return true
	}
	writeJSON(w, r, http.StatusOK, a.render(requestID(r.Context()), req, ans.Results))
	return true
}

// dispatch runs the request here or on the peer the router picks. A
// request another node already routed is always served here. A request that
// fails before any byte reached the client (forward error, backend failure,
// open breaker) is retried once on another node while the retry budget
// allows.
func (a *api) dispatch(ctx context.Context, w http.ResponseWriter, r *http.Request, req *apiRequest, body []byte, start time.Time) int {
	if r.Header.Get(router.HeaderForwarded) != "" {
		// Only a verified forward reaches here with the header (handler).
		w.Header().Set(router.HeaderRoute, "forwarded")
		status, err := a.serve(ctx, w, r, req, start)
		if err != nil {
			// Tell the routing node to try elsewhere.
			return a.fail(w, r, &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "backend_unavailable",
				Message: err.Error(), RetryAfter: time.Second})
		}
		return status
	}
	// One snapshot of the candidates serves the first try and the retry:
	// the retry only excludes the node that failed.
	cands := a.n.candidates(req.Model)
	if len(cands) == 0 && !a.n.servedAnywhere(req.Model) {
		return a.fail(w, r, fmt.Errorf("%w: %q (see GET /v1/models)", scheduler.ErrUnknownModel, req.Model))
	}
	a.n.retries.request()
	// The prompt's block hashes, for prefix-aware routing.
	rreq := router.Request{Prefix: promptHashes(req)}
	tried := map[string]bool{}
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 && !a.n.retries.take() {
			a.n.metrics.Retries.WithLabelValues("budget_exhausted").Inc()
			break
		}
		pickStart := time.Now()
		target, reason, err := a.n.router.Route(rreq, cands, tried)
		a.n.metrics.RouteDecisionUs.Observe(float64(time.Since(pickStart)) / float64(time.Microsecond))
		if err != nil {
			if lastErr == nil {
				lastErr = err
			}
			break
		}
		if attempt > 0 {
			reason = router.ReasonRetry
		}
		a.n.metrics.RouteReason.WithLabelValues(reason).Inc()
		tried[target.Node] = true
		if target.Local {
			a.n.metrics.Routed.WithLabelValues(target.Node, "local").Inc()
			w.Header().Set(router.HeaderRoute, routeHeader(true, reason))
			status, err := a.serve(ctx, w, r, req, start)
			if err == nil {
				return status
			}
			a.n.metrics.Retries.WithLabelValues("local_failure").Inc()
			lastErr = err
			continue
		}
		a.n.metrics.Routed.WithLabelValues(target.Node, "forward").Inc()
		reply, err := a.n.fwd.Forward(ctx, w, r, body, target, routeHeader(false, reason))
		if err == nil {
			if reply.Tokens >= 0 {
				a.settleTokens(ctx, req, reply.Tokens)
			}
			return http.StatusOK
		}
		a.n.metrics.ForwardErrors.WithLabelValues(target.Node).Inc()
		if !errors.Is(err, router.ErrRetryable) {
			a.logger.Warn("forward failed", "request_id", requestID(r.Context()), "target", target.Node, "err", err)
			if ctx.Err() != nil {
				return a.fail(w, r, ctx.Err())
			}
			return http.StatusBadGateway
		}
		a.n.metrics.Retries.WithLabelValues("forward_failure").Inc()
		a.logger.Info("forward failed before responding", "request_id", requestID(r.Context()), "target", target.Node, "err", err)
		lastErr = err
	}
	// No node answered: whatever the up-front token charge was, nothing
	// was delivered.
	a.settleTokens(ctx, req, 0)
	if ctx.Err() != nil {
		return a.fail(w, r, ctx.Err())
	}
	a.logger.Warn("no node could serve the request", "request_id", requestID(r.Context()), "model", req.Model, "err", lastErr)
	var us UpstreamStatus
	if errors.As(lastErr, &us) {
		// The upstream's own answer (its status class, message and
		// Retry-After) tells the client more than "no healthy node".
		return a.fail(w, r, lastErr)
	}
	return a.fail(w, r, &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "no_healthy_backend",
		Message: fmt.Sprintf("no healthy node can serve %q now; retry shortly", req.Model), RetryAfter: time.Second})
}

func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) int {
	ae := toAPIError(err)
	writeError(w, r, ae)
	return ae.Status
}

// serve runs req on the local scheduler and writes the answer; it returns
// the status it sent. A non-nil error means the backend failed (or its
// breaker is open) before anything was written: the caller may retry the
// request elsewhere.
func (a *api) serve(ctx context.Context, w http.ResponseWriter, r *http.Request, req *apiRequest, start time.Time) (int, error) {
	id := requestID(r.Context())
	done, ok := a.n.breakers.admit(req.Model)
	if !ok {
		return 0, fmt.Errorf("%s on %s: %w", req.Model, a.node, errBreakerOpen)
	}
	// This node now likely holds the prompt's prefix in its KV cache; its
	// load report tells the other routers.
	a.n.prefixes.Record(req.Model, promptHashes(req))
	key, cacheable := a.n.requestCacheKey(req)
	pol := parseCacheControl(r.Header.Get("Cache-Control"))
	if w.Header().Get("X-Shoal-Cache") == "" {
		if cacheable && pol.lookup {
			setCacheHeader(w, cacheMiss)
		} else {
			setCacheHeader(w, cacheBypass)
		}
	}
	if req.Stream {
		t, err := a.sched.Submit(ctx, req.requests(id)[0])
		if err != nil {
			done(err)
			a.tokensUsed(ctx, w, r, req, nil, false)
			return a.fail(w, r, err), nil
		}
		res, status, err := a.stream(ctx, w, r, req, t, start)
		done(err)
		if isBackendFailure(err) && status == 0 {
			return 0, err
		}
		if status == http.StatusOK && cacheable && pol.store {
			a.n.cacheStore(req.Model, key, []scheduler.Result{res})
		}
		return status, nil
	}
	compute := func(cctx context.Context) ([]scheduler.Result, error) {
		return a.run(cctx, req, id)
	}
	var results []scheduler.Result
	var err error
	if cacheable && pol.lookup {
		results, err = a.n.coalesce(ctx, req.Model, key, pol.store, compute)
	} else {
		results, err = compute(ctx)
		if err == nil && cacheable && pol.store {
			a.n.cacheStore(req.Model, key, results)
		}
	}
	done(err)
	if err != nil {
		if isBackendFailure(err) {
			return 0, err
		}
		a.tokensUsed(ctx, w, r, req, nil, false)
		return a.fail(w, r, err), nil
	}
	a.tokensUsed(ctx, w, r, req, results, false)
	for _, res := range results {
		a.metrics.ObserveTokens(req.Model, res.PromptTokens, res.CompletionTokens, time.Since(start))
	}
	writeJSON(w, r, http.StatusOK, a.render(id, req, results))
	return http.StatusOK, nil
}

// run submits every prompt of req to the scheduler and waits for all.
func (a *api) run(ctx context.Context, req *apiRequest, id string) ([]scheduler.Result, error) {
	sreqs := req.requests(id)
	tasks := make([]*scheduler.Task, 0, len(sreqs))
	for _, sr := range sreqs {
		t, err := a.sched.Submit(ctx, sr)
		if err != nil {
			return nil, err
		}
		tasks = append(tasks, t)
	}
	results := make([]scheduler.Result, len(tasks))
	for i, t := range tasks {
		// A task always ends, with its context at the latest, so the error
		// is the task's own (deadline or cancellation).
		<-t.Done()
		res, err := t.Outcome()
		if err != nil {
			return nil, err
		}
		results[i] = res
	}
	return results, nil
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func sumUsage(results []scheduler.Result) usage {
	var u usage
	for _, r := range results {
		u.PromptTokens += r.PromptTokens
		u.CompletionTokens += r.CompletionTokens
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
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

func (a *api) render(id string, req *apiRequest, results []scheduler.Result) any {
	now := time.Now().Unix()
	u := sumUsage(results)
	switch req.Endpoint {
	case scheduler.EndpointChat:
		res := results[0]
		return map[string]any{
			"id": "chatcmpl-" + id, "object": "chat.completion", "created": now, "model": req.Model,
			"choices": []chatChoice{{Index: 0, Message: scheduler.Message{Role: "assistant", Content: res.Text}, FinishReason: res.FinishReason}},
			"usage":   u, "system_fingerprint": a.node,
		}
	case scheduler.EndpointCompletion:
		choices := make([]completionChoice, len(results))
		for i, res := range results {
			choices[i] = completionChoice{Index: i, Text: res.Text, FinishReason: res.FinishReason}
		}
		return map[string]any{"id": "cmpl-" + id, "object": "text_completion", "created": now, "model": req.Model, "choices": choices, "usage": u}
	default:
		outs := make([]inferOutput, len(results))
		for i, res := range results {
			outs[i] = inferOutput{Index: i, Text: res.Text, FinishReason: res.FinishReason}
		}
		return map[string]any{"id": id, "model": req.Model, "node": a.node, "outputs": outs, "usage": u}
	}
}

// stream answers with server-sent events. A backend failure before the
// first chunk returns status 0 and writes nothing, so the request can be
// retried elsewhere.
func (a *api) stream(ctx context.Context, w http.ResponseWriter, r *http.Request, req *apiRequest, t *scheduler.Task, start time.Time) (scheduler.Result, int, error) {
	chunks, finished, err := t.Next(ctx)
	if err != nil {
		<-t.Done()
	}
	if err != nil || (finished && len(chunks) == 0) {
		if _, terr := t.Outcome(); terr != nil {
			if isBackendFailure(terr) {
				return scheduler.Result{}, 0, terr
			}
			a.tokensUsed(ctx, w, r, req, nil, false)
			return scheduler.Result{}, a.fail(w, r, terr), terr
		}
	}
	sse := a.beginStream(w, r, req)
	for {
		for _, c := range chunks {
			sse.delta(c)
		}
		_ = sse.rc.Flush()
		if finished {
			break
		}
		chunks, finished, err = t.Next(ctx)
		if err != nil {
			<-t.Done()
			chunks, finished = nil, true
		}
	}
	res, terr := t.Outcome()
	if terr != nil {
		ae := toAPIError(terr)
		sse.event(ae.body())
		sse.done()
		return res, ae.Status, terr
	}
	a.metrics.ObserveTokens(req.Model, res.PromptTokens, res.CompletionTokens, time.Since(start))
	a.tokensUsed(ctx, w, r, req, []scheduler.Result{res}, true)
	sse.finish(res)
	sse.done()
	return res, http.StatusOK, nil
}

func (a *api) beginStream(w http.ResponseWriter, r *http.Request, req *apiRequest) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sse := &sseWriter{w: w, rc: http.NewResponseController(w), id: requestID(r.Context()), req: req, created: time.Now().Unix(), node: a.node}
	sse.begin()
	return sse
}

// replayStream sends a cached answer as a stream, a word per event, in the
// same framing as a live one.
func (a *api) replayStream(w http.ResponseWriter, r *http.Request, req *apiRequest, res scheduler.Result) {
	sse := a.beginStream(w, r, req)
	text := res.Text
	for text != "" {
		i := strings.IndexByte(text[1:], ' ')
		if i < 0 {
			sse.delta(text)
			break
		}
		sse.delta(text[:i+1])
		text = text[i+1:]
	}
	sse.finish(res)
	sse.done()
}

// sseWriter frames a stream in the shape of the request's endpoint.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	id      string
	node    string
	req     *apiRequest
	created int64
}

func (s *sseWriter) event(v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(s.w, "data: %s\n\n", b)
}

func (s *sseWriter) chunk(delta map[string]any, text *string, finish *string) map[string]any {
	switch s.req.Endpoint {
	case scheduler.EndpointChat:
		return map[string]any{"id": "chatcmpl-" + s.id, "object": "chat.completion.chunk", "created": s.created, "model": s.req.Model,
			"choices": []map[string]any{{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": nil}}}
	case scheduler.EndpointCompletion:
		t := ""
		if text != nil {
			t = *text
		}
		return map[string]any{"id": "cmpl-" + s.id, "object": "text_completion", "created": s.created, "model": s.req.Model,
			"choices": []map[string]any{{"index": 0, "text": t, "finish_reason": finish, "logprobs": nil}}}
	default:
		t := ""
		if text != nil {
			t = *text
		}
		return map[string]any{"id": s.id, "model": s.req.Model, "node": s.node, "index": 0, "text": t, "finish_reason": finish}
	}
}

func (s *sseWriter) begin() {
	if s.req.Endpoint == scheduler.EndpointChat {
		s.event(s.chunk(map[string]any{"role": "assistant", "content": ""}, nil, nil))
	}
}

func (s *sseWriter) delta(text string) {
	s.event(s.chunk(map[string]any{"content": text}, &text, nil))
}

func (s *sseWriter) finish(res scheduler.Result) {
	reason := res.FinishReason
	empty := ""
	s.event(s.chunk(map[string]any{}, &empty, &reason))
	u := sumUsage([]scheduler.Result{res})
	switch {
	case s.req.Endpoint == scheduler.EndpointInfer:
		s.event(map[string]any{"id": s.id, "model": s.req.Model, "node": s.node, "usage": u})
	case s.req.IncludeUsage:
		obj := "chat.completion.chunk"
		prefix := "chatcmpl-"
		if s.req.Endpoint == scheduler.EndpointCompletion {
			obj, prefix = "text_completion", "cmpl-"
		}
		s.event(map[string]any{"id": prefix + s.id, "object": obj, "created": s.created, "model": s.req.Model, "choices": []any{}, "usage": u})
	}
}

func (s *sseWriter) done() {
	fmt.Fprint(s.w, "data: [DONE]\n\n")
	_ = s.rc.Flush()
}

// models answers GET /v1/models in OpenAI's list shape.
func (a *api) models(w http.ResponseWriter, r *http.Request) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	names := a.n.clusterModels()
	sort.Strings(names)
	data := make([]model, 0, len(names))
	for _, n := range names {
		data = append(data, model{ID: n, Object: "model", Created: 0, OwnedBy: "shoal"})
	}
	writeJSON(w, r, http.StatusOK, map[string]any{"object": "list", "data": data})
}
