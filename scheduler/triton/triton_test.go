package triton

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoal-dev/shoal/scheduler"
	"github.com/shoal-dev/shoal/scheduler/internal/upcall"
	"github.com/shoal-dev/shoal/scheduler/triton/tritontest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newBackend(t *testing.T, url string, mutate func(*Config)) *Backend {
	t.Helper()
	cfg := Config{Model: "m", URL: url, Timeout: 5 * time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	b, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func tasks(ctx context.Context, stream bool, prompts ...string) []*scheduler.Task {
	out := make([]*scheduler.Task, len(prompts))
	for i, p := range prompts {
		out[i] = scheduler.NewTask(ctx, &scheduler.Request{ID: "r" + strconv.Itoa(i), Model: "m", Endpoint: scheduler.EndpointInfer,
			Prompt: p, Params: scheduler.Params{MaxTokens: 16}, Stream: stream})
	}
	return out
}

func outcome(t *testing.T, task *scheduler.Task) (scheduler.Result, error) {
	t.Helper()
	select {
	case <-task.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("task did not finish")
	}
	return task.Outcome()
}

func TestBatchGoesUpstreamAsOneInferCallWhenTheModelBatches(t *testing.T) {
	f := tritontest.New("m", 8)
	defer f.Close()
	b := newBackend(t, f.URL, nil)
	prompts := []string{"alpha", "beta two", "gamma", "delta", "epsilon"}
	batch := tasks(context.Background(), false, prompts...)
	b.Run(context.Background(), batch)

	calls := f.Calls("/infer")
	require.Len(t, calls, 1, "one infer call for the whole batch")
	require.Equal(t, "/v2/models/m/infer", calls[0].Path)
	body, err := calls[0].InferBody()
	require.NoError(t, err)
	require.Equal(t, []int{5, 1}, body.Inputs[0].Shape)
	require.Equal(t, "BYTES", body.Inputs[0].Datatype)
	require.Equal(t, prompts, body.Inputs[0].Data)
	require.EqualValues(t, 16, body.Parameters["max_tokens"])
	require.Contains(t, body.Parameters, "temperature")
	for i, task := range batch {
		res, err := outcome(t, task)
		require.NoError(t, err)
		require.Equal(t, "re: "+prompts[i], res.Text)
		require.Positive(t, res.CompletionTokens)
	}
	require.Len(t, f.Calls("/config"), 1, "max_batch_size is read once")
}

func TestBatchIsSplitAtTheUpstreamMaxBatchSize(t *testing.T) {
	f := tritontest.New("m", 2)
	defer f.Close()
	b := newBackend(t, f.URL, nil)
	batch := tasks(context.Background(), false, "a", "b", "c", "d", "e")
	b.Run(context.Background(), batch)
	require.Len(t, f.Calls("/infer"), 3)
	for _, task := range batch {
		_, err := outcome(t, task)
		require.NoError(t, err)
	}
}

func TestModelWithoutBatchingGetsOneCallPerRequest(t *testing.T) {
	f := tritontest.New("m", 0)
	defer f.Close()
	b := newBackend(t, f.URL, func(c *Config) { c.UpstreamModel, c.Model, c.Version = "m", "ours", "3" })
	batch := tasks(context.Background(), false, "a", "b", "c")
	b.Run(context.Background(), batch)
	calls := f.Calls("/infer")
	require.Len(t, calls, 3)
	for _, c := range calls {
		require.Equal(t, "/v2/models/m/versions/3/infer", c.Path)
		body, err := c.InferBody()
		require.NoError(t, err)
		require.Equal(t, []int{1, 1}, body.Inputs[0].Shape)
	}
	for _, task := range batch {
		_, err := outcome(t, task)
		require.NoError(t, err)
	}
}

func TestStreamGoesToGenerateStreamAndEmitsEachEvent(t *testing.T) {
	f := tritontest.New("m", 8)
	defer f.Close()
	b := newBackend(t, f.URL, nil)
	batch := tasks(context.Background(), true, "one two three")
	b.Run(context.Background(), batch)
	res, err := outcome(t, batch[0])
	require.NoError(t, err)
	require.Equal(t, "re: one two three", res.Text)
	chunks, finished, err := batch[0].Next(context.Background())
	require.NoError(t, err)
	require.True(t, finished)
	require.Equal(t, []string{"re: ", "one ", "two ", "three"}, chunks)
	calls := f.Calls("/generate_stream")
	require.Len(t, calls, 1)
	require.Contains(t, string(calls[0].Body), `"stream":true`)
	require.Contains(t, string(calls[0].Body), `"text_input":"one two three"`)
}

func TestUpstreamErrorsMapLikeTheOpenAIBackend(t *testing.T) {
	cases := []struct {
		name    string
		status  int
		retry   string
		failure bool
		wait    time.Duration
	}{
		{"ClientErrorPassesThrough", http.StatusBadRequest, "", false, 0},
		{"RateLimitKeepsRetryAfter", http.StatusTooManyRequests, "7", false, 7 * time.Second},
		{"ServerErrorCountsAgainstTheBreaker", http.StatusInternalServerError, "", true, 0},
		{"UnavailableKeepsRetryAfter", http.StatusServiceUnavailable, "3", true, 3 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tritontest.New("m", 4)
			defer f.Close()
			f.Fail(tc.status, "upstream says no", tc.retry)
			b := newBackend(t, f.URL, nil)
			for _, stream := range []bool{false, true} {
				batch := tasks(context.Background(), stream, "x")
				b.Run(context.Background(), batch)
				_, err := outcome(t, batch[0])
				var ue *UpstreamError
				require.True(t, errors.As(err, &ue), "err %v", err)
				require.Equal(t, tc.status, ue.HTTPStatus())
				require.Contains(t, ue.Error(), "upstream says no")
				require.NotContains(t, ue.Error(), f.URL, "the upstream address stays out of client messages")
				require.Equal(t, tc.wait, ue.RetryAfterHint())
				require.Equal(t, tc.failure, IsBackendFailure(err))
			}
		})
	}
}

func TestConnectionRefusedIsABackendFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	b := newBackend(t, "http://"+addr, nil)
	batch := tasks(context.Background(), false, "x")
	b.Run(context.Background(), batch)
	_, err = outcome(t, batch[0])
	require.ErrorIs(t, err, ErrUnavailable)
	require.True(t, IsBackendFailure(err))
	require.False(t, strings.Contains(err.Error(), "context deadline"), err.Error())
	require.ErrorIs(t, b.Probe(context.Background()), ErrNotReady)
}

func TestCancelledTaskEndsWithItsContextError(t *testing.T) {
	f := tritontest.New("m", 4)
	defer f.Close()
	b := newBackend(t, f.URL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	batch := tasks(ctx, false, "x")
	b.Run(context.Background(), batch)
	_, err := outcome(t, batch[0])
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, f.Calls("/infer"))
}

func TestProbeFollowsUpstreamReadiness(t *testing.T) {
	f := tritontest.New("m", 4)
	defer f.Close()
	b := newBackend(t, f.URL, nil)
	require.NoError(t, b.Probe(context.Background()))
	f.SetReady(false)
	err := b.Probe(context.Background())
	require.ErrorIs(t, err, ErrNotReady)
	require.True(t, IsBackendFailure(err))
	f.SetReady(true)
	require.NoError(t, b.Probe(context.Background()))
	require.Len(t, f.Calls("/v2/health/ready"), 3)
}

func TestBadAnswersAreBackendFailures(t *testing.T) {
	for name, raw := range map[string]string{
		"NotJSON":      `nope`,
		"NoTextOutput": `{"outputs":[{"name":"logits","data":[1]}]}`,
		"WrongCount":   `{"outputs":[{"name":"text_output","data":["a","b"]}]}`,
		"NotStrings":   `{"outputs":[{"name":"text_output","data":[1]}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := decodeOutputs([]byte(raw), 1)
			require.ErrorIs(t, err, ErrBadResponse)
		})
	}
	out, err := decodeOutputs([]byte(`{"outputs":[{"name":"text_output","data":[["a"],["b"]]}]}`), 2)
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, out)
}

func TestConfigValidateNamesTheKey(t *testing.T) {
	for want, cfg := range map[string]Config{
		"url must be set":           {Model: "m"},
		"url must be an http(s)":    {Model: "m", URL: "ftp://x"},
		"version must not contain":  {Model: "m", URL: "http://x", Version: "1/2"},
		"max_conns must not be neg": {Model: "m", URL: "http://x", MaxConns: -1},
	} {
		_, err := New(cfg)
		require.ErrorContains(t, err, want)
	}
}

func FuzzDecodeOutputs(f *testing.F) {
	f.Add([]byte(`{"outputs":[{"name":"text_output","datatype":"BYTES","shape":[2,1],"data":[["a"],["b"]]}]}`), 2)
	f.Add([]byte(`{"outputs":[{"name":"text_output","data":["a"]},{"name":"text_output","data":[]}]}`), 1)
	f.Fuzz(func(t *testing.T, raw []byte, n int) {
		if n < 0 || n > 1024 {
			return
		}
		out, err := decodeOutputs(raw, n)
		if err != nil {
			if !errors.Is(err, ErrBadResponse) {
				t.Fatalf("error %v does not wrap ErrBadResponse", err)
			}
			return
		}
		if len(out) != n {
			t.Fatalf("%d outputs for %d prompts", len(out), n)
		}
	})
}

func FuzzDecodeError(f *testing.F) {
	f.Add(429, []byte(`{"error":"slow down"}`), "7")
	f.Add(0, []byte(`{"error":{"message":"x"}}`), "Wed, 21 Oct 2015 07:28:00 GMT")
	f.Add(500, []byte("\xff\xfe<html>"), "99999999999999999999")
	f.Fuzz(func(t *testing.T, status int, body []byte, retry string) {
		e := decodeError(status, body, retry)
		if e.Message == "" || len(e.Message) > 1024 || !utf8.ValidString(e.Message) {
			t.Fatalf("message %q", e.Message)
		}
		if e.RetryAfter < 0 || e.RetryAfter > upcall.MaxRetryAfter {
			t.Fatalf("retry after %s", e.RetryAfter)
		}
	})
}
