package openai

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoal-dev/shoal/scheduler"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// httpStatuser is httpapi's UpstreamStatus interface, restated here
// because the node imports this package.
type httpStatuser interface{ HTTPStatus() int }

func TestEqualParamsCompletionsGoAsOneUpstreamRequest(t *testing.T) {
	u := newUpstream(t)
	b := newBackend(t, u, nil)
	p := scheduler.Params{MaxTokens: 8, Temperature: 0}
	prompts := []string{"alpha one", "beta two two", "gamma", "delta four four four", "epsilon"}
	reqs := make([]*scheduler.Request, len(prompts))
	for i, pr := range prompts {
		reqs[i] = completion(pr, p)
	}
	batch := tasks(context.Background(), reqs...)

	b.Run(context.Background(), batch)

	calls := u.recordedCalls()
	require.Len(t, calls, 1, "equal params must share one upstream request")
	require.Equal(t, "/v1/completions", calls[0].Path)
	got, isArray := calls[0].prompts(t)
	require.True(t, isArray)
	require.Equal(t, prompts, got, "prompt array in batch order")
	require.Equal(t, "m", calls[0].Body.Model)
	require.Equal(t, 8, *calls[0].Body.MaxTokens)
	require.NotNil(t, calls[0].Body.Temperature, "temperature 0 must be sent, the upstream default is 1")
	require.Zero(t, *calls[0].Body.Temperature)
	require.Empty(t, calls[0].Header.Get("X-Request-ID"), "a group has no single request id")

	var promptSum, completionSum int
	for i, task := range batch {
		res, err := outcome(t, task)
		require.NoError(t, err)
		require.Equal(t, "re: "+prompts[i], res.Text)
		require.Equal(t, "stop", res.FinishReason)
		promptSum += res.PromptTokens
		completionSum += res.CompletionTokens
	}
	// The upstream counts words; the shares must add up to its totals.
	require.Equal(t, 11, promptSum)
	require.Equal(t, 16, completionSum)
}

func TestOutOfOrderChoicesMapBackByIndex(t *testing.T) {
	u := newUpstream(t)
	u.reverse = true
	b := newBackend(t, u, nil)
	batch := tasks(context.Background(), completion("first", scheduler.Params{}), completion("second", scheduler.Params{}), completion("third", scheduler.Params{}))

	b.Run(context.Background(), batch)

	require.Len(t, u.recordedCalls(), 1)
	for i, want := range []string{"re: first", "re: second", "re: third"} {
		res, err := outcome(t, batch[i])
		require.NoError(t, err)
		require.Equal(t, want, res.Text)
	}
}

func TestDifferentParamsGoAsSeparateRequests(t *testing.T) {
	u := newUpstream(t)
	b := newBackend(t, u, nil)
	seed := int64(7)
	greedy := scheduler.Params{MaxTokens: 4}
	sampled := scheduler.Params{MaxTokens: 4, Temperature: 0.7, TopP: 0.9, Seed: &seed, Stop: []string{"\n"}}
	batch := tasks(context.Background(),
		completion("a", greedy), completion("b", sampled), completion("c", greedy), completion("d", sampled),
		// TopP 1 means "off" just like TopP 0, so this joins the greedy group.
		completion("e", scheduler.Params{MaxTokens: 4, TopP: 1}),
	)

	b.Run(context.Background(), batch)

	calls := u.recordedCalls()
	require.Len(t, calls, 2)
	byFirst := map[string]recorded{}
	for _, c := range calls {
		ps, _ := c.prompts(t)
		byFirst[ps[0]] = c
	}
	g, s := byFirst["a"], byFirst["b"]
	gp, _ := g.prompts(t)
	sp, _ := s.prompts(t)
	require.Equal(t, []string{"a", "c", "e"}, gp)
	require.Equal(t, []string{"b", "d"}, sp)
	require.Nil(t, g.Body.TopP)
	require.Nil(t, g.Body.Seed)
	require.Nil(t, g.Body.Stop)
	require.Equal(t, 0.7, *s.Body.Temperature)
	require.Equal(t, 0.9, *s.Body.TopP)
	require.Equal(t, int64(7), *s.Body.Seed)
	require.Equal(t, []string{"\n"}, s.Body.Stop)
	for i, want := range []string{"re: a", "re: b", "re: c", "re: d", "re: e"} {
		res, err := outcome(t, batch[i])
		require.NoError(t, err)
		require.Equal(t, want, res.Text)
	}
}

func TestGroupsAreChunkedAtMaxPrompts(t *testing.T) {
	u := newUpstream(t)
	b := newBackend(t, u, func(c *Config) { c.MaxPrompts = 2 })
	batch := tasks(context.Background(), completion("p0", scheduler.Params{}), completion("p1", scheduler.Params{}),
		completion("p2", scheduler.Params{}), completion("p3", scheduler.Params{}), completion("p4", scheduler.Params{}))

	b.Run(context.Background(), batch)

	var sizes []int
	for _, c := range u.recordedCalls() {
		ps, isArray := c.prompts(t)
		sizes = append(sizes, len(ps))
		if len(ps) == 1 {
			require.False(t, isArray, "a lone prompt goes as a plain string, which every server accepts")
			require.Equal(t, "req-p4", c.Header.Get("X-Request-ID"))
		}
	}
	require.ElementsMatch(t, []int{2, 2, 1}, sizes)
	for i, task := range batch {
		res, err := outcome(t, task)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("re: p%d", i), res.Text)
	}
}

func TestInferTasksGoToCompletions(t *testing.T) {
	u := newUpstream(t)
	b := newBackend(t, u, func(c *Config) { c.UpstreamModel = "llama-3-8b" })
	req := completion("infer me", scheduler.Params{})
	req.Endpoint = scheduler.EndpointInfer
	batch := tasks(context.Background(), req)

	b.Run(context.Background(), batch)

	calls := u.recordedCalls()
	require.Len(t, calls, 1)
	require.Equal(t, "/v1/completions", calls[0].Path)
	require.Equal(t, "llama-3-8b", calls[0].Body.Model, "the upstream's own model name is sent")
	res, err := outcome(t, batch[0])
	require.NoError(t, err)
	require.Equal(t, "re: infer me", res.Text)
}

func TestChatTasksRunConcurrently(t *testing.T) {
	const k = 4
	u := newUpstream(t)
	allIn := make(chan struct{})
	var arrived atomic.Int32
	u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
		if arrived.Add(1) == k {
			close(allIn)
		}
		// Nobody is answered until all k are in flight at once: sequential
		// calls would never get here and the guard below fails the test.
		select {
		case <-allIn:
		case <-time.After(20 * time.Second):
			writeErr(w, http.StatusInternalServerError, "test", "chat requests did not arrive concurrently")
			return
		}
		u.serveModel(w, r, rec)
	}
	b := newBackend(t, u, nil)
	var reqs []*scheduler.Request
	for i := range k {
		reqs = append(reqs, chat(fmt.Sprintf("question %d", i)))
	}
	batch := tasks(context.Background(), reqs...)

	b.Run(context.Background(), batch)

	calls := u.recordedCalls()
	require.Len(t, calls, k, "one upstream request per chat")
	_, _, peak, _ := u.stats()
	require.Equal(t, k, peak)
	for _, c := range calls {
		require.Equal(t, "/v1/chat/completions", c.Path)
		require.Len(t, c.Body.Messages, 2, "messages pass through")
		require.Equal(t, scheduler.Message{Role: "system", Content: "be brief"}, c.Body.Messages[0])
		require.Equal(t, strings.TrimPrefix(c.Header.Get("X-Request-ID"), "chat-"), c.Body.Messages[1].Content)
	}
	for i, task := range batch {
		res, err := outcome(t, task)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("re: question %d", i), res.Text)
		require.Equal(t, 2, res.PromptTokens)
		require.Equal(t, 3, res.CompletionTokens)
	}
}

func TestStreamPassesEventsThroughAsTheyArrive(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *scheduler.Request
		path string
	}{
		{"completions", completion("ignored", scheduler.Params{}), "/v1/completions"},
		{"chat", chat("ignored"), "/v1/chat/completions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t)
			release := make(chan struct{})
			chatReq := tc.path == "/v1/chat/completions"
			u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
				s := newSSE(w)
				s.event(chunkJSON(chatReq, "first", ""))
				// The rest waits until the test has seen "first" arrive.
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				s.event(chunkJSON(chatReq, " second", ""))
				s.event(chunkJSON(chatReq, "", "length"))
				s.event(`{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}`)
				s.done()
			}
			b := newBackend(t, u, nil)
			batch := tasks(context.Background(), stream(tc.req))
			done := runAsync(b, batch)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			chunks, finished, err := batch[0].Next(ctx)
			require.NoError(t, err, "the first event must reach the task before the upstream sends the rest")
			require.False(t, finished)
			require.Equal(t, []string{"first"}, chunks)
			close(release)
			wait(t, done, "Run")

			rest, finished, err := batch[0].Next(ctx)
			require.NoError(t, err)
			require.True(t, finished)
			require.Equal(t, []string{" second"}, rest)
			res, err := batch[0].Outcome()
			require.NoError(t, err)
			require.Equal(t, scheduler.Result{Text: "first second", FinishReason: "length", PromptTokens: 3, CompletionTokens: 2}, res)

			calls := u.recordedCalls()
			require.Len(t, calls, 1)
			require.Equal(t, tc.path, calls[0].Path)
			require.True(t, calls[0].Body.Stream)
			require.NotNil(t, calls[0].Body.StreamOptions)
			require.True(t, calls[0].Body.StreamOptions.IncludeUsage)
			require.Equal(t, "text/event-stream", calls[0].Header.Get("Accept"))
		})
	}
}

func TestStreamWithoutUpstreamUsageEstimatesWords(t *testing.T) {
	u := newUpstream(t)
	u.noUsage = true
	b := newBackend(t, u, nil)
	batch := tasks(context.Background(), stream(completion("one two three", scheduler.Params{})))

	b.Run(context.Background(), batch)

	res, err := outcome(t, batch[0])
	require.NoError(t, err)
	require.Equal(t, scheduler.Result{Text: "re: one two three", FinishReason: "stop", PromptTokens: 3, CompletionTokens: 4}, res)
}

func TestGroupWithoutUpstreamUsageEstimatesWordsPerTask(t *testing.T) {
	u := newUpstream(t)
	u.noUsage = true
	b := newBackend(t, u, nil)
	batch := tasks(context.Background(), completion("one", scheduler.Params{}), completion("one two three", scheduler.Params{}))

	b.Run(context.Background(), batch)

	r0, err := outcome(t, batch[0])
	require.NoError(t, err)
	r1, err := outcome(t, batch[1])
	require.NoError(t, err)
	require.Equal(t, [2]int{1, 2}, [2]int{r0.PromptTokens, r0.CompletionTokens})
	require.Equal(t, [2]int{3, 4}, [2]int{r1.PromptTokens, r1.CompletionTokens})
}

func TestStreamFromServerThatIgnoresStreamFlag(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
		rec.Body.Stream = false // answer in one JSON piece
		u.serveModel(w, r, rec)
	}
	b := newBackend(t, u, nil)
	batch := tasks(context.Background(), stream(chat("hi there")))

	b.Run(context.Background(), batch)

	chunks, finished, err := batch[0].Next(context.Background())
	require.NoError(t, err)
	require.True(t, finished)
	require.Equal(t, []string{"re: hi there"}, chunks)
	res, err := batch[0].Outcome()
	require.NoError(t, err)
	require.Equal(t, "re: hi there", res.Text)
}

func TestUpstreamRetryAfterIsKept(t *testing.T) {
	for _, status := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			u := newUpstream(t)
			u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
				w.Header().Set("Retry-After", "7")
				writeErr(w, status, "overloaded", "busy")
			}
			b := newBackend(t, u, nil)
			batch := tasks(context.Background(), completion("x", scheduler.Params{}))
			b.Run(context.Background(), batch)
			_, err := outcome(t, batch[0])
			var ue *UpstreamError
			require.ErrorAs(t, err, &ue)
			require.Equal(t, 7*time.Second, ue.RetryAfterHint())
		})
	}
}

func TestUpstreamErrorStatusesMapToUpstreamError(t *testing.T) {
	shapes := map[string]func() *scheduler.Request{
		"grouped":   func() *scheduler.Request { return completion("x", scheduler.Params{}) },
		"chat":      func() *scheduler.Request { return chat("x") },
		"stream":    func() *scheduler.Request { return stream(completion("x", scheduler.Params{})) },
		"chat-strm": func() *scheduler.Request { return stream(chat("x")) },
	}
	for _, tc := range []struct {
		status  int
		failure bool
	}{
		{http.StatusBadRequest, false},
		{http.StatusUnauthorized, false},
		{http.StatusNotFound, false},
		{http.StatusTooManyRequests, false},
		{http.StatusInternalServerError, true},
		{http.StatusServiceUnavailable, true},
	} {
		for shape, mk := range shapes {
			t.Run(fmt.Sprintf("%d/%s", tc.status, shape), func(t *testing.T) {
				u := newUpstream(t)
				u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
					writeErr(w, tc.status, "some_error", "upstream says no")
				}
				b := newBackend(t, u, nil)
				batch := tasks(context.Background(), mk(), mk())

				b.Run(context.Background(), batch)

				for _, task := range batch {
					_, err := outcome(t, task)
					var ue *UpstreamError
					require.ErrorAs(t, err, &ue)
					require.Equal(t, &UpstreamError{Status: tc.status, Message: "upstream says no", Type: "some_error"}, ue)
					var hs httpStatuser
					require.ErrorAs(t, err, &hs)
					require.Equal(t, tc.status, hs.HTTPStatus())
					require.Equal(t, tc.failure, IsBackendFailure(err))
					require.NotContains(t, err.Error(), u.srv.URL, "the client sees this message; no upstream address in it")
				}
			})
		}
	}
}

func TestStreamErrorEventIsUpstreamError(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
		s := newSSE(w)
		s.event(chunkJSON(false, "partial", ""))
		s.event(`{"error":{"object":"error","message":"prompt too long","type":"BadRequestError","code":400}}`)
	}
	b := newBackend(t, u, nil)
	batch := tasks(context.Background(), stream(completion("x", scheduler.Params{})))

	b.Run(context.Background(), batch)

	_, err := outcome(t, batch[0])
	var ue *UpstreamError
	require.ErrorAs(t, err, &ue)
	require.Equal(t, &UpstreamError{Status: 400, Message: "prompt too long", Type: "BadRequestError"}, ue)
	require.False(t, IsBackendFailure(err))
}

func TestConnectionRefusedIsBackendFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	b, err := New(Config{Model: "m", URL: "http://" + addr + "/v1"})
	require.NoError(t, err)
	defer b.Close()
	batch := tasks(context.Background(), completion("a", scheduler.Params{}), chat("b"), stream(chat("c")))

	b.Run(context.Background(), batch)

	for _, task := range batch {
		_, err := outcome(t, task)
		require.Error(t, err)
		require.True(t, IsBackendFailure(err))
		require.ErrorIs(t, err, ErrUnavailable)
		require.ErrorIs(t, err, syscall.ECONNREFUSED, "the cause stays in the chain")
		var hs httpStatuser
		require.False(t, errors.As(err, &hs), "no upstream status to report")
		require.Contains(t, err.Error(), "upstream http://"+addr+"/v1/")
	}
}

func TestSlowUpstreamTimesOutAsBackendFailure(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
		<-r.Context().Done() // never answers
	}
	b := newBackend(t, u, func(c *Config) { c.Timeout = 200 * time.Millisecond })
	batch := tasks(context.Background(), completion("a", scheduler.Params{}), chat("b"))

	b.Run(context.Background(), batch)

	for _, task := range batch {
		_, err := outcome(t, task)
		require.ErrorIs(t, err, ErrUnavailable)
		require.True(t, IsBackendFailure(err))
		require.NotErrorIs(t, err, context.DeadlineExceeded, "the node would take it for the client's own deadline")
		require.Contains(t, err.Error(), "200ms")
	}
}

func TestSilentStreamTimesOutBetweenEvents(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
		s := newSSE(w)
		s.event(chunkJSON(false, "hello", ""))
		<-r.Context().Done() // then goes silent
	}
	b := newBackend(t, u, func(c *Config) { c.Timeout = 200 * time.Millisecond })
	batch := tasks(context.Background(), stream(completion("a", scheduler.Params{})))

	b.Run(context.Background(), batch)

	_, err := outcome(t, batch[0])
	require.ErrorIs(t, err, ErrUnavailable)
	require.True(t, IsBackendFailure(err))
	require.Contains(t, err.Error(), "no event within 200ms")
}

func TestStreamThatStaysOpenAfterDoneReleasesTheBatch(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
		s := newSSE(w)
		s.event(chunkJSON(false, "all", "stop"))
		s.done()
		<-r.Context().Done() // non-compliant: keeps the response open
	}
	// Without the drain grace Run would hold the batch slot for the whole
	// 60s timeout, past wait's guard.
	b := newBackend(t, u, func(c *Config) { c.Timeout = 60 * time.Second })
	batch := tasks(context.Background(), stream(completion("a", scheduler.Params{})))

	wait(t, runAsync(b, batch), "Run to return")

	res, err := outcome(t, batch[0])
	require.NoError(t, err)
	require.Equal(t, "all", res.Text)
}

// blockingUpstream answers nothing: each request signals started, then
// waits for the client to abort, which closes aborted.
func blockingUpstream(t *testing.T, streamFirst bool) (u *upstream, started <-chan struct{}, aborted <-chan struct{}) {
	u = newUpstream(t)
	st, ab := make(chan struct{}, 16), make(chan struct{})
	u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
		if streamFirst {
			newSSE(w).event(chunkJSON(false, "tok", ""))
		}
		st <- struct{}{}
		select {
		case <-r.Context().Done():
			close(ab)
		case <-time.After(30 * time.Second):
		}
	}
	return u, st, ab
}

func TestCancelledTaskAbortsItsUpstreamRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *scheduler.Request
	}{
		{"completion", completion("a", scheduler.Params{})},
		{"chat", chat("a")},
		{"stream", stream(completion("a", scheduler.Params{}))},
	} {
		for _, under := range []string{"background", "task"} {
			t.Run(tc.name+"/run-under-"+under, func(t *testing.T) {
				u, started, aborted := blockingUpstream(t, tc.req.Stream)
				b := newBackend(t, u, nil)
				ctx, cancel := context.WithCancel(context.Background())
				batch := tasks(ctx, tc.req)
				// The scheduler runs a batch of one under its task's own
				// context: the call then has no watcher of its own.
				runCtx := context.Background()
				if under == "task" {
					runCtx = ctx
				}
				done := runAsyncUnder(runCtx, b, batch)

				wait(t, started, "the upstream request")
				cancel()
				wait(t, aborted, "the upstream to see the request aborted")
				_, err := outcome(t, batch[0])
				require.ErrorIs(t, err, context.Canceled)
				require.False(t, IsBackendFailure(err), "the client's cancellation is not the upstream's failure")
				wait(t, done, "Run")
			})
		}
	}
}

// The call's own timeout and the request's deadline, whichever comes
// first, end a call to an upstream that never answers; only the call's is
// the upstream's failure. The call timeout is left out when the request's
// deadline comes first, which must not change either outcome.
func TestCallEndsAtTheCallTimeoutOrTheRequestDeadline(t *testing.T) {
	for _, tc := range []struct {
		name              string
		call, deadline    time.Duration
		wantBackendFailed bool
	}{
		{"call timeout first", 200 * time.Millisecond, time.Minute, true},
		{"request deadline first", time.Minute, 200 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t)
			u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
				<-r.Context().Done() // never answers
			}
			b := newBackend(t, u, func(c *Config) { c.Timeout = tc.call })
			ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
			defer cancel()
			batch := tasks(ctx, chat("a"))
			wait(t, runAsyncUnder(ctx, b, batch), "Run")

			_, err := outcome(t, batch[0])
			require.Equal(t, tc.wantBackendFailed, IsBackendFailure(err), "err %v", err)
			if tc.wantBackendFailed {
				require.ErrorIs(t, err, ErrUnavailable)
				// The call's context and the transport's header timeout
				// are both the call timeout; under load either may fire
				// first, and each error names it.
				require.Regexp(t, `no answer within 200ms|timeout awaiting response headers \(call timeout 200ms\)`, err.Error())
			} else {
				require.ErrorIs(t, err, context.DeadlineExceeded)
			}
		})
	}
}

func TestGroupedCallIsAbortedOnlyWhenAllItsTasksAreCancelled(t *testing.T) {
	u, started, aborted := blockingUpstream(t, false)
	b := newBackend(t, u, nil)
	ctxA, cancelA := context.WithCancel(context.Background())
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	a := scheduler.NewTask(ctxA, completion("a", scheduler.Params{}))
	bt := scheduler.NewTask(ctxB, completion("b", scheduler.Params{}))
	done := runAsync(b, []*scheduler.Task{a, bt})

	wait(t, started, "the grouped upstream request")
	cancelA()
	_, err := outcome(t, a)
	require.ErrorIs(t, err, context.Canceled, "a cancelled task finishes at once")
	select {
	case <-aborted:
		t.Fatal("the call was aborted while task b still waits on it")
	case <-bt.Done():
		t.Fatal("task b finished while its call is running")
	default:
	}
	cancelB()
	wait(t, aborted, "the upstream to see the grouped request aborted")
	_, err = outcome(t, bt)
	require.ErrorIs(t, err, context.Canceled)
	wait(t, done, "Run")
	require.Len(t, u.recordedCalls(), 1)
}

func TestRunContextEndAbortsUpstreamRequests(t *testing.T) {
	u, started, aborted := blockingUpstream(t, false)
	b := newBackend(t, u, nil)
	batch := tasks(context.Background(), chat("a"))
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run(runCtx, batch)
	}()

	wait(t, started, "the upstream request")
	cancel()
	wait(t, aborted, "the upstream to see the request aborted")
	wait(t, done, "Run")
	_, err := outcome(t, batch[0])
	require.ErrorIs(t, err, context.Canceled)
}

func TestAlreadyCancelledTasksAreNeverSent(t *testing.T) {
	u := newUpstream(t)
	b := newBackend(t, u, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	batch := tasks(ctx, completion("a", scheduler.Params{}), chat("b"), stream(chat("c")))

	b.Run(context.Background(), batch)

	for _, task := range batch {
		_, err := outcome(t, task)
		require.ErrorIs(t, err, context.Canceled)
	}
	require.Empty(t, u.recordedCalls())
}

func TestMalformedAnswersGiveBadResponse(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		want string
	}{
		{"truncated JSON", `{"choices":[{"index":0,"text":"a"`, "decode JSON"},
		{"not JSON", `<html>oops</html>`, "decode JSON"},
		{"missing choice", `{"choices":[{"index":0,"text":"a"}]}`, "no choice for prompt 1 of 2"},
		{"duplicate choice", `{"choices":[{"index":0,"text":"a"},{"index":0,"text":"b"}]}`, "two choices with index 0"},
		{"index out of range", `{"choices":[{"index":0,"text":"a"},{"index":5,"text":"b"}]}`, "choice index 5 outside 0..1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t)
			u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(tc.body))
			}
			b := newBackend(t, u, nil)
			batch := tasks(context.Background(), completion("a", scheduler.Params{}), completion("b", scheduler.Params{}))

			b.Run(context.Background(), batch)

			for _, task := range batch {
				_, err := outcome(t, task)
				require.ErrorIs(t, err, ErrBadResponse)
				require.True(t, IsBackendFailure(err))
				require.Contains(t, err.Error(), tc.want)
			}
		})
	}
}

func TestTruncatedStreamGivesBadResponse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(w http.ResponseWriter)
		want  string
	}{
		{"ends before DONE", func(w http.ResponseWriter) {
			newSSE(w).event(chunkJSON(false, "partial", ""))
		}, "stream ended before [DONE]"},
		{"cut mid-event", func(w http.ResponseWriter) {
			s := newSSE(w)
			s.event(chunkJSON(false, "partial", ""))
			_, _ = w.Write([]byte(`data: {"choices":[{"ind`))
		}, "decode event"},
		{"connection dropped", func(w http.ResponseWriter) {
			s := newSSE(w)
			s.event(chunkJSON(false, "partial", ""))
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = conn.Close() // mid chunked body: the client sees an unexpected EOF
			}
		}, "stream cut off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t)
			u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) { tc.write(w) }
			b := newBackend(t, u, nil)
			batch := tasks(context.Background(), stream(completion("a", scheduler.Params{})))

			b.Run(context.Background(), batch)

			_, err := outcome(t, batch[0])
			require.ErrorIs(t, err, ErrBadResponse)
			require.True(t, IsBackendFailure(err))
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestOversizedAnswerIsRejected(t *testing.T) {
	u := newUpstream(t)
	big := strings.Repeat("x", 4096)
	u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
		if rec.Body.Stream {
			s := newSSE(w)
			for range 10 {
				s.event(chunkJSON(false, big, ""))
			}
			s.done()
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"choices":[{"index":0,"text":%q}]}`, big+big)
	}
	b := newBackend(t, u, func(c *Config) { c.MaxResponseBytes = 4096 })
	batch := tasks(context.Background(), completion("a", scheduler.Params{}), stream(completion("b", scheduler.Params{})))

	b.Run(context.Background(), batch)

	for _, task := range batch {
		_, err := outcome(t, task)
		require.ErrorIs(t, err, ErrBadResponse)
		require.Contains(t, err.Error(), "body larger than 4096 bytes")
	}
}

func TestAuthorizationHeader(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want string
	}{
		{"sk-secret", "Bearer sk-secret"},
		{"", ""},
	} {
		t.Run(fmt.Sprintf("key=%q", tc.key), func(t *testing.T) {
			u := newUpstream(t)
			b := newBackend(t, u, func(c *Config) { c.APIKey = tc.key })
			batch := tasks(context.Background(), completion("a", scheduler.Params{}), chat("b"), stream(chat("c")))

			b.Run(context.Background(), batch)

			calls := u.recordedCalls()
			require.Len(t, calls, 3)
			for _, c := range calls {
				require.Equal(t, tc.want, c.Header.Get("Authorization"), c.Path)
			}
		})
	}
}

func TestConnectionsArePooledAndBounded(t *testing.T) {
	const maxConns, n = 2, 6
	u := newUpstream(t)
	gate := make(chan struct{})
	u.handler = func(w http.ResponseWriter, r *http.Request, rec recorded) {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
		u.serveModel(w, r, rec)
	}
	b := newBackend(t, u, func(c *Config) { c.MaxConns = maxConns })

	// The trace sees each call ask for a connection and get one.
	var asked, got atomic.Int32
	trace := &httptrace.ClientTrace{
		GetConn: func(string) { asked.Add(1) },
		GotConn: func(httptrace.GotConnInfo) { got.Add(1) },
	}
	ctx := httptrace.WithClientTrace(context.Background(), trace)
	var reqs []*scheduler.Request
	for i := range n {
		reqs = append(reqs, chat(fmt.Sprint(i)))
	}
	done := runAsync(b, tasks(ctx, reqs...))

	require.Eventually(t, func() bool {
		_, inflight, _, _ := u.stats()
		return asked.Load() == n && inflight == maxConns
	}, 30*time.Second, 5*time.Millisecond)
	require.Equal(t, int32(maxConns), got.Load(), "the other calls wait for a pooled connection")
	close(gate)
	wait(t, done, "Run")

	calls, _, peak, newConns := u.stats()
	require.Equal(t, n, calls)
	require.Equal(t, maxConns, peak)
	require.Equal(t, maxConns, newConns, "connections are reused, never more than max_conns")
}

func TestCloseClosesIdleConnections(t *testing.T) {
	u := newUpstream(t)
	b, err := New(Config{Model: "m", URL: u.url()})
	require.NoError(t, err)
	b.Run(context.Background(), tasks(context.Background(), chat("a")))

	idle := func() (n int) {
		u.mu.Lock()
		defer u.mu.Unlock()
		for _, st := range u.conns {
			if st == http.StateIdle {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return idle() == 1 }, 30*time.Second, 5*time.Millisecond)
	require.NoError(t, b.Close())
	require.Eventually(t, func() bool { return idle() == 0 }, 30*time.Second, 5*time.Millisecond)
}

func TestRunIsSafeFromManyGoroutines(t *testing.T) {
	u := newUpstream(t)
	b := newBackend(t, u, nil)
	var wg sync.WaitGroup
	var all []*scheduler.Task
	var mu sync.Mutex
	for g := range 8 {
		batch := tasks(context.Background(),
			completion(fmt.Sprintf("g%d a", g), scheduler.Params{}), completion(fmt.Sprintf("g%d b", g), scheduler.Params{}),
			chat(fmt.Sprintf("g%d c", g)), stream(completion(fmt.Sprintf("g%d d", g), scheduler.Params{})))
		mu.Lock()
		all = append(all, batch...)
		mu.Unlock()
		wg.Go(func() { b.Run(context.Background(), batch) })
	}
	wg.Wait()
	for _, task := range all {
		res, err := outcome(t, task)
		require.NoError(t, err)
		want := task.Request().Prompt
		if task.Request().Endpoint == scheduler.EndpointChat {
			want = task.Request().Messages[1].Content
		}
		require.Equal(t, "re: "+want, res.Text)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	ok := Config{Model: "m", URL: "http://127.0.0.1:8000/v1"}
	require.NoError(t, ok.Validate())
	for _, tc := range []struct {
		name  string
		tweak func(*Config)
		want  string
	}{
		{"no model", func(c *Config) { c.Model = "" }, "model must be set"},
		{"no url", func(c *Config) { c.URL = "" }, "url must be set"},
		{"bad scheme", func(c *Config) { c.URL = "ftp://x/v1" }, "url must be an http(s) URL"},
		{"no host", func(c *Config) { c.URL = "http:///v1" }, "url must be an http(s) URL"},
		{"unparsable", func(c *Config) { c.URL = "http://a b/%zz" }, "url"},
		{"query", func(c *Config) { c.URL = "http://x/v1?a=b" }, "url must be a base URL"},
		{"timeout", func(c *Config) { c.Timeout = -time.Second }, "timeout must not be negative"},
		{"max_conns", func(c *Config) { c.MaxConns = -1 }, "max_conns must not be negative"},
		{"max_prompts", func(c *Config) { c.MaxPrompts = -1 }, "max_prompts must not be negative"},
		{"max_response_bytes", func(c *Config) { c.MaxResponseBytes = -1 }, "max_response_bytes must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.tweak(&cfg)
			require.ErrorContains(t, cfg.Validate(), tc.want)
			_, err := New(cfg)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestUpstreamModelOnlyIsValid(t *testing.T) {
	cfg := Config{UpstreamModel: "llama", URL: "https://api.example.com/v1/"}
	b, err := New(cfg)
	require.NoError(t, err)
	require.Equal(t, "https://api.example.com/v1/completions", b.completions.String(), "a trailing slash on the base is dropped")
	require.NoError(t, b.Close())
}
