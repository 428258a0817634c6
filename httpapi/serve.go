package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/respcache"
	"github.com/shoal-dev/shoal/router"
	"github.com/shoal-dev/shoal/scheduler"
)

// API serves the inference endpoints on this node.
type API struct {
	cfg    Config
	logger *slog.Logger
}

// New returns the API over cfg's collaborators; every field of cfg but
// Logger is required.
func New(cfg Config) *API {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &API{cfg: cfg, logger: cfg.Logger}
}

// Registrar is where Register adds the API's routes: an http.ServeMux or
// a Router.
type Registrar interface {
	HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request))
}

// Register adds the inference endpoints to mux.
func (a *API) Register(mux Registrar) {
	mux.HandleFunc("/v1/chat/completions", Methods(a.handler(scheduler.EndpointChat, decodeChat), http.MethodPost))
	mux.HandleFunc("/v1/completions", Methods(a.handler(scheduler.EndpointCompletion, decodeCompletion), http.MethodPost))
	mux.HandleFunc("/v1/infer", Methods(a.handler(scheduler.EndpointInfer, decodeInfer), http.MethodPost))
	mux.HandleFunc("/v1/models", Methods(a.models, http.MethodGet, http.MethodHead))
}

type decoder func([]byte) (*Request, error)

func (a *API) handler(endpoint scheduler.Endpoint, decode decoder) http.HandlerFunc {
	memo := newReqMemo()
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		a.cfg.Metrics.InFlight(1)
		defer a.cfg.Metrics.InFlight(-1)
		model, status := "", 0
		defer func() {
			if model == "" {
				model = "unknown"
			}
			a.cfg.Metrics.ObserveRequest(model, EndpointLabel(r, endpoint), status, time.Since(start))
		}()
		fail := func(err error) {
			ae := toError(err)
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
		req, memoed := memo.get(body)
		// decoded is the request as its body gave it, before the headers,
		// the limiter and the cache key change it: what the memo keeps.
		var decoded Request
		if memoed == nil {
			var err error
			if req, err = decode(body); err != nil {
				fail(err)
				return
			}
			decoded = *req
		}
		model = req.Model
		if hp := HeaderValue(r.Header, "X-Shoal-Priority"); hp != "" {
			p, err := parsePriority(hp)
			if err != nil {
				fail(err)
				return
			}
			req.Priority = p
		}
		timeout := a.cfg.RequestTimeout
		if ht := HeaderValue(r.Header, "X-Shoal-Timeout"); ht != "" {
			d, aerr := parseTimeout(ht)
			if aerr != nil {
				fail(aerr)
				return
			}
			timeout = min(timeout, d)
		}
		deadline := start.Add(timeout)
		forwarded := HeaderValue(r.Header, router.HeaderForwarded) != "" && a.cfg.Cluster.TrustedForward(r, body)
		if !forwarded {
			delete(r.Header, router.HeaderForwarded)
			// Limits are checked where a request enters the cluster. The
			// limiter bounds its own waits (its lease timeout), and the
			// cache lookup gets a deadline of its own, so the request's
			// deadline is set only for what follows: a cache hit never
			// pays for its timer.
			if err := a.cfg.Limiter.Admit(r.Context(), w, r, req); err != nil {
				fail(err)
				return
			}
			// The receiving node looks the answer up, so a hit costs no hop.
			if a.answerFromCache(r.Context(), deadline, w, r, req) {
				status = http.StatusOK
				if memoed == nil {
					// A body answered from the cache is likely asked again.
					memo.put(body, &decoded, req.keyMemo)
				}
				return
			}
		}
		ctx, cancel := context.WithDeadline(r.Context(), deadline)
		defer cancel()
		status = a.dispatch(ctx, w, r, req, body, start)
	}
}

// cacheKey is req's response-cache key, computed once per request (the
// lookup and the store both need it) and only when asked for.
func (a *API) cacheKey(r *http.Request, req *Request) (string, bool) {
	if req.keyed {
		return req.keyMemo.key, req.keyMemo.cacheable
	}
	req.keyed = true
	k := &req.keyMemo
	k.scope = a.cfg.Scoper.CacheScope(r, req)
	if req.memo != nil {
		k.stamp = a.cfg.Cache.KeyStamp(req.Model)
		if key, cacheable, ok := req.memo.cachedKey(k.scope, k.stamp); ok {
			k.key, k.cacheable = key, cacheable
			return key, cacheable
		}
	}
	// Only the memo needs the stamp before the key; otherwise Key gives
	// the one it used, read once.
	k.key, k.stamp, k.cacheable = a.cfg.Cache.Key(req.cacheInput(k.scope))
	if req.memo != nil {
		req.memo.key.Store(&memoKey{scope: k.scope, stamp: k.stamp, key: k.key, cacheable: k.cacheable})
	}
	return k.key, k.cacheable
}

// answerFromCache serves a cached answer when the request allows it and one
// exists, and sets X-Shoal-Cache either way. The lookup ends at the
// request's deadline or the cache lookup timeout, whichever comes first.
func (a *API) answerFromCache(ctx context.Context, deadline time.Time, w http.ResponseWriter, r *http.Request, req *Request) bool {
	pol := respcache.ParsePolicy(HeaderValue(r.Header, "Cache-Control"))
	if !pol.Lookup {
		setCacheHeader(w, CacheBypass)
		return false
	}
	key, ok := a.cacheKey(r, req)
	if !ok {
		setCacheHeader(w, CacheBypass)
		return false
	}
	lctx := ctx
	now := time.Now()
	if bound := a.cfg.CacheLookupTimeout; bound > 0 || deadline.Sub(now) < a.cfg.CacheBound {
		// Only then can the lookup outlast what it is allowed; otherwise
		// the Cache's own bound holds, and the context and its timer (a
		// tenth of a hit's own work) are saved.
		if d := now.Add(bound); bound > 0 && d.Before(deadline) {
			deadline = d
		}
		var cancel context.CancelFunc
		lctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	cached, found := a.cfg.Cache.Lookup(lctx, req.Model, key)
	if !found {
		setCacheHeader(w, CacheMiss)
		return false
	}
	setCacheHeader(w, CacheHit)
	w.Header()[router.HeaderRoute] = hdrRouteCache[:1:1]
	a.tokensUsed(ctx, w, r, req, cached, false)
	if req.Stream {
		a.replayStream(w, r, req, cached[0])
		return true
	}
	writeJSON(w, r, http.StatusOK, a.render(requestID(r.Context()), req, cached))
	return true
}

// dispatch runs the request here or on the peer the router picks. A
// request another node already routed is always served here. A request that
// fails before any byte reached the client (forward error, backend failure,
// open breaker) is retried once on another node while the retry budget
// allows.
func (a *API) dispatch(ctx context.Context, w http.ResponseWriter, r *http.Request, req *Request, body []byte, start time.Time) int {
	if HeaderValue(r.Header, router.HeaderForwarded) != "" {
		// Only a verified forward reaches here with the header (handler).
		w.Header()[router.HeaderRoute] = hdrForwarded[:1:1]
		status, err := a.serve(ctx, w, r, req, start)
		if err != nil {
			// Tell the routing node to try elsewhere.
			return a.fail(w, r, &Error{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "backend_unavailable",
				Message: err.Error(), RetryAfter: time.Second})
		}
		return status
	}
	// One snapshot of the candidates serves the first try and the retry:
	// the retry only excludes the node that failed.
	cands := a.cfg.Cluster.Candidates(req.Model)
	if len(cands) == 0 && !a.cfg.Cluster.ServedAnywhere(req.Model) {
		return a.fail(w, r, fmt.Errorf("%w: %q (see GET /v1/models)", scheduler.ErrUnknownModel, req.Model))
	}
	a.cfg.Retries.Request()
	// The prompt's block hashes, for prefix-aware routing.
	rreq := router.Request{Prefix: promptHashes(req)}
	// The nodes tried so far: made only for a retry (a map is two
	// allocations per request), when it holds the first try's target.
	var tried map[string]bool
	firstTarget := ""
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 && !a.cfg.Retries.Take() {
			a.cfg.Metrics.Retry("budget_exhausted")
			break
		}
		if attempt > 0 {
			tried = map[string]bool{firstTarget: true}
		}
		pickStart := time.Now()
		target, reason, err := a.cfg.Picker.Route(rreq, cands, tried)
		a.cfg.Metrics.RouteDecision(time.Since(pickStart))
		if err != nil {
			if lastErr == nil {
				lastErr = err
			}
			break
		}
		if attempt > 0 {
			reason = router.ReasonRetry
		}
		a.cfg.Metrics.RouteReason(reason)
		if attempt == 0 {
			firstTarget = target.Node
		}
		if target.Local {
			a.cfg.Metrics.Routed(target.Node, "local")
			setLocalRoute(w.Header(), reason)
			status, err := a.serve(ctx, w, r, req, start)
			if err == nil {
				return status
			}
			a.cfg.Metrics.Retry("local_failure")
			lastErr = err
			continue
		}
		a.cfg.Metrics.Routed(target.Node, "forward")
		reply, err := a.cfg.Forwarder.Forward(ctx, w, r, body, target, routeHeader(false, reason))
		if err == nil {
			if reply.Tokens >= 0 {
				a.cfg.Limiter.SettleTokens(ctx, req, reply.Tokens)
			}
			return http.StatusOK
		}
		a.cfg.Metrics.ForwardError(target.Node)
		if !errors.Is(err, router.ErrRetryable) {
			a.logger.Warn("forward failed", "request_id", requestID(r.Context()), "target", target.Node, "err", err)
			if ctx.Err() != nil {
				return a.fail(w, r, ctx.Err())
			}
			return http.StatusBadGateway
		}
		a.cfg.Metrics.Retry("forward_failure")
		a.logger.Info("forward failed before responding", "request_id", requestID(r.Context()), "target", target.Node, "err", err)
		lastErr = err
	}
	// No node answered: whatever the up-front token charge was, nothing
	// was delivered.
	a.cfg.Limiter.SettleTokens(ctx, req, 0)
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
	return a.fail(w, r, &Error{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "no_healthy_backend",
		Message: fmt.Sprintf("no healthy node can serve %q now; retry shortly", req.Model), RetryAfter: time.Second})
}

func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) int {
	ae := toError(err)
	writeError(w, r, ae)
	return ae.Status
}

// serve runs req on the local scheduler and writes the answer; it returns
// the status it sent. A non-nil error means the backend failed (or its
// breaker is open) before anything was written: the caller may retry the
// request elsewhere.
func (a *API) serve(ctx context.Context, w http.ResponseWriter, r *http.Request, req *Request, start time.Time) (int, error) {
	id := requestID(r.Context())
	done, ok := a.cfg.Breakers.Admit(req.Model)
	if !ok {
		return 0, fmt.Errorf("%s on %s: %w", req.Model, a.cfg.Node, errBreakerOpen)
	}
	// This node now likely holds the prompt's prefix in its KV cache; its
	// load report tells the other routers.
	a.cfg.Prefixes.Record(req.Model, promptHashes(req))
	pol := respcache.ParsePolicy(HeaderValue(r.Header, "Cache-Control"))
	// A request that neither looks up nor stores has no use for its key.
	key, cacheable := "", false
	if pol.Lookup || pol.Store {
		key, cacheable = a.cacheKey(r, req)
	}
	if w.Header().Get("X-Shoal-Cache") == "" {
		if cacheable && pol.Lookup {
			setCacheHeader(w, CacheMiss)
		} else {
			setCacheHeader(w, CacheBypass)
		}
	}
	if req.Stream {
		t, err := a.cfg.Scheduler.Submit(ctx, req.requests(id)[0])
		if err != nil {
			done(err)
			a.tokensUsed(ctx, w, r, req, nil, false)
			return a.fail(w, r, err), nil
		}
		res, status, err := a.stream(ctx, w, r, req, t, start)
		done(err)
		if IsBackendFailure(err) && status == 0 {
			return 0, err
		}
		if status == http.StatusOK && cacheable && pol.Store {
			a.cfg.Cache.Store(req.Model, key, []scheduler.Result{res})
		}
		return status, nil
	}
	var results []scheduler.Result
	var err error
	if cacheable && pol.Lookup {
		// The closure only where it is needed: it escapes, an allocation.
		compute := func(cctx context.Context) ([]scheduler.Result, error) {
			return a.run(cctx, req, id)
		}
		results, err = a.cfg.Cache.Coalesce(ctx, req.Model, key, pol.Store, compute)
	} else {
		results, err = a.run(ctx, req, id)
		if err == nil && cacheable && pol.Store {
			a.cfg.Cache.Store(req.Model, key, results)
		}
	}
	done(err)
	if err != nil {
		if IsBackendFailure(err) {
			return 0, err
		}
		a.tokensUsed(ctx, w, r, req, nil, false)
		return a.fail(w, r, err), nil
	}
	a.tokensUsed(ctx, w, r, req, results, false)
	for _, res := range results {
		a.cfg.Metrics.ObserveTokens(req.Model, res.PromptTokens, res.CompletionTokens, time.Since(start))
	}
	writeJSON(w, r, http.StatusOK, a.render(id, req, results))
	return http.StatusOK, nil
}

// run submits every prompt of req to the scheduler and waits for all.
func (a *API) run(ctx context.Context, req *Request, id string) ([]scheduler.Result, error) {
	if req.Endpoint == scheduler.EndpointChat {
		return a.runOne(ctx, req.chatRequest(id))
	}
	sreqs := req.requests(id)
	if len(sreqs) == 1 {
		return a.runOne(ctx, sreqs[0])
	}
	submit := a.cfg.Scheduler.Submit
	tasks := make([]*scheduler.Task, 0, len(sreqs))
	for _, sr := range sreqs {
		t, err := submit(ctx, sr)
		if err != nil {
			return nil, err
		}
		tasks = append(tasks, t)
	}
	results := make([]scheduler.Result, len(tasks))
	for i, t := range tasks {
		// A task always ends, with its context at the latest, so the error
		// is the task's own (deadline or cancellation).
		res, err := t.Wait()
		if err != nil {
			return nil, err
		}
		results[i] = res
	}
	return results, nil
}

// runOne runs a single task: with nothing to overlap it with, on this
// goroutine where the scheduler allows (Runner).
func (a *API) runOne(ctx context.Context, sr *scheduler.Request) ([]scheduler.Result, error) {
	submit := a.cfg.Scheduler.Submit
	if r, ok := a.cfg.Scheduler.(Runner); ok {
		submit = r.Run
	}
	t, err := submit(ctx, sr)
	if err != nil {
		return nil, err
	}
	// A task always ends, with its context at the latest, so the error is
	// the task's own (deadline or cancellation).
	res, err := t.Wait()
	if err != nil {
		return nil, err
	}
	return []scheduler.Result{res}, nil
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

// The answers' shapes. Fields are in the order of their JSON names, the
// order encoding/json gives a map's keys, so the bytes are what they were
// when these were maps.
type chatAnswer struct {
	Choices           []chatChoice `json:"choices"`
	Created           int64        `json:"created"`
	ID                string       `json:"id"`
	Model             string       `json:"model"`
	Object            string       `json:"object"`
	SystemFingerprint string       `json:"system_fingerprint"`
	Usage             usage        `json:"usage"`
}

type completionAnswer struct {
	Choices []completionChoice `json:"choices"`
	Created int64              `json:"created"`
	ID      string             `json:"id"`
	Model   string             `json:"model"`
	Object  string             `json:"object"`
	Usage   usage              `json:"usage"`
}

type inferAnswer struct {
	ID      string        `json:"id"`
	Model   string        `json:"model"`
	Node    string        `json:"node"`
	Outputs []inferOutput `json:"outputs"`
	Usage   usage         `json:"usage"`
}

func (a *API) render(id string, req *Request, results []scheduler.Result) any {
	now := time.Now().Unix()
	u := sumUsage(results)
	switch req.Endpoint {
	case scheduler.EndpointChat:
		res := results[0]
		// The answer and its one choice in one allocation.
		ans := &struct {
			chatAnswer
			choice [1]chatChoice
		}{}
		ans.choice[0] = chatChoice{Index: 0, Message: scheduler.Message{Role: "assistant", Content: res.Text}, FinishReason: res.FinishReason}
		ans.chatAnswer = chatAnswer{
			ID: "chatcmpl-" + id, Object: "chat.completion", Created: now, Model: req.Model,
			Choices: ans.choice[:], Usage: u, SystemFingerprint: a.cfg.Node,
		}
		return &ans.chatAnswer
	case scheduler.EndpointCompletion:
		choices := make([]completionChoice, len(results))
		for i, res := range results {
			choices[i] = completionChoice{Index: i, Text: res.Text, FinishReason: res.FinishReason}
		}
		return &completionAnswer{ID: "cmpl-" + id, Object: "text_completion", Created: now, Model: req.Model, Choices: choices, Usage: u}
	default:
		outs := make([]inferOutput, len(results))
		for i, res := range results {
			outs[i] = inferOutput{Index: i, Text: res.Text, FinishReason: res.FinishReason}
		}
		return &inferAnswer{ID: id, Model: req.Model, Node: a.cfg.Node, Outputs: outs, Usage: u}
	}
}

// stream answers with server-sent events. A backend failure before the
// first chunk returns status 0 and writes nothing, so the request can be
// retried elsewhere.
func (a *API) stream(ctx context.Context, w http.ResponseWriter, r *http.Request, req *Request, t *scheduler.Task, start time.Time) (scheduler.Result, int, error) {
	chunks, finished, err := t.Next(ctx)
	if err != nil {
		<-t.Done()
	}
	if err != nil || (finished && len(chunks) == 0) {
		if _, terr := t.Outcome(); terr != nil {
			if IsBackendFailure(terr) {
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
		ae := toError(terr)
		sse.event(ae.body())
		sse.done()
		return res, ae.Status, terr
	}
	a.cfg.Metrics.ObserveTokens(req.Model, res.PromptTokens, res.CompletionTokens, time.Since(start))
	a.tokensUsed(ctx, w, r, req, []scheduler.Result{res}, true)
	sse.finish(res)
	sse.done()
	return res, http.StatusOK, nil
}

func (a *API) beginStream(w http.ResponseWriter, r *http.Request, req *Request) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sse := &sseWriter{w: w, rc: http.NewResponseController(w), id: requestID(r.Context()), req: req, created: time.Now().Unix(), node: a.cfg.Node}
	sse.begin()
	return sse
}

// replayStream sends a cached answer as a stream, a word per event, in the
// same framing as a live one.
func (a *API) replayStream(w http.ResponseWriter, r *http.Request, req *Request, res scheduler.Result) {
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
	req     *Request
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
func (a *API) models(w http.ResponseWriter, r *http.Request) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	names := a.cfg.Cluster.Models()
	sort.Strings(names)
	data := make([]model, 0, len(names))
	for _, n := range names {
		data = append(data, model{ID: n, Object: "model", Created: 0, OwnedBy: "shoal"})
	}
	writeJSON(w, r, http.StatusOK, map[string]any{"object": "list", "data": data})
}

// Values of the X-Shoal-Cache response header, which tells the client
// whether its answer came from the response cache.
const (
	CacheHit    = "hit"
	CacheMiss   = "miss"
	CacheBypass = "bypass"
)

// setCacheHeader records the cache outcome for the client.
func setCacheHeader(w http.ResponseWriter, v string) {
	h := w.Header()
	switch v {
	case CacheHit:
		h["X-Shoal-Cache"] = hdrCacheHit[:1:1]
	case CacheMiss:
		h["X-Shoal-Cache"] = hdrCacheMiss[:1:1]
	case CacheBypass:
		h["X-Shoal-Cache"] = hdrCacheBypass[:1:1]
	default:
		h.Set("X-Shoal-Cache", v)
	}
}

// tokensUsed accounts for the tokens req's answer used (nil results: none).
// A forwarded request reports them to the node that admitted it, in a
// header, or in a trailer once the answer's header is out; any other
// settles here.
func (a *API) tokensUsed(ctx context.Context, w http.ResponseWriter, r *http.Request, req *Request, results []scheduler.Result, headerSent bool) {
	used := sumUsage(results).TotalTokens
	if HeaderValue(r.Header, router.HeaderForwarded) == "" {
		a.cfg.Limiter.SettleTokens(ctx, req, used)
		return
	}
	name := router.HeaderUsage
	if headerSent {
		name = http.TrailerPrefix + name
	}
	w.Header().Set(name, strconv.Itoa(used))
}
