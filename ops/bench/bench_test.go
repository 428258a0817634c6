package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/ops/bench"
	"github.com/shoal-dev/shoal/ops/bench/benchtest"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

func fastNode(t *testing.T) *benchtest.Node {
	t.Helper()
	return benchtest.Start(t, "bench-node", benchtest.Model{Name: "sim-fast", Sim: benchtest.FastSim(), MaxSize: 32, FlushTimeout: time.Millisecond})
}

func run(t *testing.T, cfg bench.Config) bench.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, cfg)
	require.NoError(t, err)
	return rep
}

func requireOrdered(t *testing.T, p bench.Percentiles) {
	t.Helper()
	require.Positive(t, p.Count)
	require.LessOrEqual(t, p.Min, p.P50)
	require.LessOrEqual(t, p.P50, p.P90)
	require.LessOrEqual(t, p.P90, p.P95)
	require.LessOrEqual(t, p.P95, p.P99)
	require.LessOrEqual(t, p.P99, p.Max)
	require.Positive(t, p.Min)
}

// serverRequests sums inference_requests_total on the node's /metrics.
func serverRequests(t *testing.T, url string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	total := 0.0
	if f, ok := fams["inference_requests_total"]; ok {
		for _, m := range f.GetMetric() {
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

func TestRunClosedLoopCountsAddUp(t *testing.T) {
	n := fastNode(t)
	before := serverRequests(t, n.URL)
	rep := run(t, bench.Config{URL: n.URL, Model: "sim-fast", Requests: 300, Concurrency: 8, MaxTokens: 4})

	require.EqualValues(t, 300, rep.Requests)
	require.Equal(t, rep.Requests, rep.OK+rep.Errors)
	require.EqualValues(t, 300, rep.OK, "errors: %v", rep.ErrorsByStatus)
	require.Empty(t, rep.ErrorsByStatus)
	require.Zero(t, rep.Dropped)
	requireOrdered(t, rep.Latency)
	require.EqualValues(t, 300, rep.Latency.Count)
	require.Positive(t, rep.RequestsPerSec)
	require.Equal(t, map[string]int64{"bench-node": 300}, rep.Nodes)
	require.InDelta(t, 1.0, rep.NodeShares()["bench-node"], 1e-9)
	require.EqualValues(t, 300*4, rep.OutputTokens, "usage.completion_tokens summed")
	require.Len(t, rep.Samples, 300)
	require.Equal(t, "closed", rep.Mode)
	// The server saw exactly the requests the report counts.
	require.InDelta(t, 300, serverRequests(t, n.URL)-before, 0)
}

func TestRunStopsAtDuration(t *testing.T) {
	n := fastNode(t)
	rep := run(t, bench.Config{URL: n.URL, Model: "sim-fast", Duration: 500 * time.Millisecond, Concurrency: 4, MaxTokens: 2})
	require.Positive(t, rep.Requests)
	require.Equal(t, rep.Requests, rep.OK+rep.Errors)
	for _, s := range rep.Samples {
		require.Less(t, s.At, 500*time.Millisecond, "no request starts after the duration")
	}
}

func TestRunOpenLoopKeepsRate(t *testing.T) {
	n := fastNode(t)
	const rate, secs = 200.0, 3
	rep := run(t, bench.Config{URL: n.URL, Model: "sim-fast", Rate: rate, Duration: secs * time.Second, MaxTokens: 2})

	require.Equal(t, "open", rep.Mode)
	require.EqualValues(t, rate*secs, rep.Requests+rep.Dropped, "one send per interval")
	require.Zero(t, rep.Dropped)
	require.Equal(t, rep.Requests, rep.OK+rep.Errors)
	require.InEpsilon(t, rate, rep.SendRate, 0.05, "achieved send rate %.1f/s", rep.SendRate)
	// Sends per whole second of the run, counted from the samples'
	// scheduled times, stay at the rate too.
	perSec := make([]int, secs)
	for _, s := range rep.Samples {
		perSec[int(s.At/time.Second)]++
	}
	for i, c := range perSec {
		require.InEpsilon(t, rate, float64(c), 0.05, "second %d", i)
	}
	requireOrdered(t, rep.Latency)
}

func TestRunOpenLoopDropsOverCap(t *testing.T) {
	// One slot, one request per 100ms batch: capacity 10/s against 100/s
	// offered with at most 2 in flight, so most sends find the cap full.
	n := benchtest.Start(t, "slow-node", benchtest.Model{Name: "slow", Sim: sim.Config{Base: 100 * time.Millisecond, DefaultMaxTokens: 1}, MaxSize: 1, FlushTimeout: time.Millisecond, Slots: 1})
	rep := run(t, bench.Config{URL: n.URL, Model: "slow", Rate: 100, Requests: 50, MaxInFlight: 2, MaxTokens: 1})

	require.EqualValues(t, 50, rep.Requests+rep.Dropped)
	require.Positive(t, rep.Dropped)
	require.Equal(t, rep.Dropped, rep.ErrorsByStatus["dropped"])
	require.InDelta(t, float64(rep.Errors+rep.Dropped)/50, rep.ErrorRate, 1e-9)
	require.Equal(t, bench.StatusFail, rep.SLO[2].Status, "drops count against the error rate")
}

func TestRunStreamsEveryEndpoint(t *testing.T) {
	n := benchtest.Start(t, "stream-node", benchtest.Model{Name: "sim-tok", Sim: sim.Config{Base: time.Millisecond, TokenInterval: 2 * time.Millisecond, DefaultMaxTokens: 8}, MaxSize: 16, FlushTimeout: time.Millisecond})
	for _, ep := range []bench.Endpoint{bench.EndpointChat, bench.EndpointCompletions, bench.EndpointInfer} {
		t.Run(string(ep), func(t *testing.T) {
			rep := run(t, bench.Config{URL: n.URL, Model: "sim-tok", Endpoint: ep, Stream: true, Requests: 40, Concurrency: 4, MaxTokens: 6})
			require.EqualValues(t, 40, rep.OK, "errors: %v", rep.ErrorsByStatus)
			require.NotNil(t, rep.TTFT)
			require.NotNil(t, rep.InterToken)
			requireOrdered(t, *rep.TTFT)
			requireOrdered(t, *rep.InterToken)
			require.LessOrEqual(t, rep.TTFT.P50, rep.Latency.P50, "the first token comes before the last byte")
			require.EqualValues(t, 40*5, rep.InterToken.Count, "six tokens have five gaps")
			require.EqualValues(t, 40*6, rep.OutputTokens)
			require.Positive(t, rep.OutputTokensPerSec)
		})
	}
}

func TestRunNonStreamEveryEndpoint(t *testing.T) {
	n := fastNode(t)
	for _, ep := range []bench.Endpoint{bench.EndpointChat, bench.EndpointCompletions, bench.EndpointInfer} {
		t.Run(string(ep), func(t *testing.T) {
			rep := run(t, bench.Config{URL: n.URL, Model: "sim-fast", Endpoint: ep, Requests: 30, Concurrency: 3, MaxTokens: 3})
			require.EqualValues(t, 30, rep.OK, "errors: %v", rep.ErrorsByStatus)
			require.Nil(t, rep.TTFT)
			require.EqualValues(t, 90, rep.OutputTokens)
		})
	}
}

func TestRunDiscoversModel(t *testing.T) {
	n := fastNode(t)
	rep := run(t, bench.Config{URL: n.URL, Requests: 5, Concurrency: 1})
	require.Equal(t, "sim-fast", rep.Model)
	require.EqualValues(t, 5, rep.OK)
}

func TestRunCountsErrorsByStatus(t *testing.T) {
	n := fastNode(t)
	rep := run(t, bench.Config{URL: n.URL, Model: "no-such-model", Requests: 20, Concurrency: 2})
	require.EqualValues(t, 20, rep.Requests)
	require.Zero(t, rep.OK)
	require.Equal(t, map[string]int64{"404": 20}, rep.ErrorsByStatus)
	require.InDelta(t, 1.0, rep.ErrorRate, 1e-9)
	require.Equal(t, bench.StatusSkip, rep.SLO[0].Status, "no latency without a success")
	require.Equal(t, bench.StatusFail, bench.Worst(rep.SLO))
}

// A run that the server mostly refuses with 429 names the limit and the
// Retry-After, so the operator knows why it failed.
func TestRunNamesTheLimitWhenMostErrorsAre429(t *testing.T) {
	cfg := benchtest.Config(t, "limited", benchtest.Model{Name: "sim-fast", Sim: benchtest.FastSim(), MaxSize: 8, FlushTimeout: time.Millisecond})
	cfg.RateLimit.RPM = 3
	n := benchtest.StartConfig(t, cfg)
	rep := run(t, bench.Config{URL: n.URL, Model: "sim-fast", Requests: 20, Concurrency: 2})
	// Windows align to the wall-clock minute: a run across a minute's end
	// gets a second budget.
	require.True(t, rep.OK == 3 || rep.OK == 6, "ok %d, errors: %v", rep.OK, rep.ErrorsByStatus)
	refused := 20 - rep.OK
	require.Equal(t, map[string]int64{"429": refused}, rep.ErrorsByStatus)
	require.NotNil(t, rep.RateLimited)
	require.Equal(t, "rate_limit_exceeded", rep.RateLimited.Code)
	require.Equal(t, "3", rep.RateLimited.Limit)
	require.NotEmpty(t, rep.RateLimited.RetryAfter)
	cause := rep.Cause()
	require.Contains(t, cause, fmt.Sprintf("%d of %d errors are 429: rate limit exceeded (client: 3 per window)", refused, refused))
	require.Contains(t, cause, "Retry-After "+rep.RateLimited.RetryAfter+"s")
	var out strings.Builder
	require.NoError(t, bench.WriteText(&out, rep))
	require.Contains(t, out.String(), fmt.Sprintf("cause:       %d of %d errors are 429", refused, refused))

	other := bench.Report{Errors: 10, ErrorsByStatus: map[string]int64{"429": 2, "503": 8}, RateLimited: rep.RateLimited}
	require.Empty(t, other.Cause(), "a few 429s among other errors are not the cause")
}

func TestRunCountsTimeouts(t *testing.T) {
	n := benchtest.Start(t, "slow-node", benchtest.Model{Name: "slow", Sim: sim.Config{Base: 2 * time.Second, DefaultMaxTokens: 1}, MaxSize: 8, FlushTimeout: time.Millisecond})
	rep := run(t, bench.Config{URL: n.URL, Model: "slow", Requests: 4, Concurrency: 4, Timeout: 100 * time.Millisecond})
	require.Equal(t, map[string]int64{"timeout": 4}, rep.ErrorsByStatus)
}

func TestRunUsesPromptsFile(t *testing.T) {
	n := fastNode(t)
	prompts, err := bench.ReadPrompts(strings.NewReader(`{"prompt": "hello there"}
{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
`))
	require.NoError(t, err)
	for _, ep := range []bench.Endpoint{bench.EndpointChat, bench.EndpointInfer} {
		rep := run(t, bench.Config{URL: n.URL, Model: "sim-fast", Endpoint: ep, Prompts: prompts, Requests: 10, Concurrency: 2})
		require.EqualValues(t, 10, rep.OK, "%s errors: %v", ep, rep.ErrorsByStatus)
	}
}

func TestRunSendsHeadersAndWarmsUp(t *testing.T) {
	n := fastNode(t)
	before := serverRequests(t, n.URL)
	rep := run(t, bench.Config{URL: n.URL, Model: "sim-fast", Requests: 10, Concurrency: 2, Warmup: 200 * time.Millisecond,
		Headers: http.Header{"X-Shoal-Timeout": {"not-a-duration"}}})
	// The node rejects the malformed header, which proves it was sent.
	require.Equal(t, map[string]int64{"400": 10}, rep.ErrorsByStatus)
	// Warm-up requests reached the server but not the report.
	require.Greater(t, serverRequests(t, n.URL)-before, 10.0)
}

func TestReportJSONAndPlot(t *testing.T) {
	n := fastNode(t)
	rep := run(t, bench.Config{URL: n.URL, Model: "sim-fast", Rate: 100, Requests: 60, MaxTokens: 2})

	var buf bytes.Buffer
	require.NoError(t, bench.WriteJSON(&buf, rep))
	var back bench.Report
	require.NoError(t, json.Unmarshal(buf.Bytes(), &back))
	require.Equal(t, rep.Requests, back.Requests)
	require.Equal(t, rep.Latency, back.Latency)
	require.Len(t, back.SLO, 4)
	var generic map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &generic))
	for _, key := range []string{"requests_per_sec", "latency", "errors_by_status", "cache", "nodes", "slo", "send_rate"} {
		require.Contains(t, generic, key)
	}

	var img bytes.Buffer
	require.NoError(t, bench.WritePlot(&img, rep))
	decoded, err := png.Decode(&img)
	require.NoError(t, err)
	require.Greater(t, decoded.Bounds().Dx(), 500)
	require.Greater(t, decoded.Bounds().Dy(), 400)

	var text bytes.Buffer
	require.NoError(t, bench.WriteText(&text, rep))
	for _, want := range []string{"req/s", "p95", "SLO", "p99 latency", "error rate", "cache hit rate", "bench-node 100.0%", "overall:"} {
		require.Contains(t, text.String(), want)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]bench.Config{
		"no url":       {},
		"bad scheme":   {URL: "ftp://x"},
		"bad endpoint": {URL: "http://127.0.0.1:1", Endpoint: "embeddings"},
		"bad repeat":   {URL: "http://127.0.0.1:1", RepeatRatio: 1.5},
		"negative":     {URL: "http://127.0.0.1:1", Requests: -1},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := bench.Run(context.Background(), cfg)
			require.ErrorIs(t, err, bench.ErrBadConfig)
		})
	}
}

func TestRunReportsUnreachableServer(t *testing.T) {
	// Port 1 on loopback refuses connections.
	_, err := bench.Run(context.Background(), bench.Config{URL: "http://127.0.0.1:1", Requests: 1})
	require.ErrorContains(t, err, "list models")
	rep := run(t, bench.Config{URL: "http://127.0.0.1:1", Model: "m", Requests: 3, Concurrency: 1})
	require.Equal(t, map[string]int64{"connection": 3}, rep.ErrorsByStatus)
}

func TestRunStopsOnCancel(t *testing.T) {
	n := fastNode(t)
	ctx, cancel := context.WithCancel(context.Background())
	cfg := bench.Config{URL: n.URL, Model: "sim-fast", Duration: time.Hour, Concurrency: 2, Progress: func(p bench.Progress) {
		if p.Done > 20 {
			cancel()
		}
	}}
	rep, err := bench.Run(ctx, cfg)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, rep.Requests, rep.OK+rep.Errors)
	require.Zero(t, rep.Errors, "requests cut by the cancel are not server errors")
}

func TestWriteJSONToFailingWriter(t *testing.T) {
	require.Error(t, bench.WriteText(failWriter{}, bench.Report{}))
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestRunCountsCacheHits(t *testing.T) {
	n := fastNode(t)
	// One worker, so every repeat refers to an answer already stored.
	rep := run(t, bench.Config{URL: n.URL, Model: "sim-fast", Requests: 200, Concurrency: 1, RepeatRatio: 0.5, MaxTokens: 2, Seed: 7})
	require.EqualValues(t, 200, rep.OK, "errors: %v", rep.ErrorsByStatus)
	require.True(t, rep.Cache.Seen)
	require.EqualValues(t, 200, rep.Cache.Hits+rep.Cache.Misses+rep.Cache.Bypass)
	require.InDelta(t, 0.5, rep.Cache.HitRatio, 0.1, "hits %d misses %d", rep.Cache.Hits, rep.Cache.Misses)
	require.Equal(t, rep.Cache.HitRatio, rep.SLO[3].Value)
	require.NotEqual(t, bench.StatusSkip, rep.SLO[3].Status)
}

// Every answer is read to its end, so the client reuses its connections:
// a connection per request would measure TCP set-up (and, in an open loop
// at thousands of requests a second, exhaust the client's CPU and ports)
// instead of the server. The fixed answers end in a newline after the
// JSON value, as shoal's and most servers' encoders write them.
func TestRunReusesConnections(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"id": "x", "object": "chat.completion",
			"choices": []map[string]any{{"index": 0, "message": map[string]string{"role": "assistant", "content": "ok"}, "finish_reason": "stop"}},
			"usage":   map[string]int{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)

	rep := run(t, bench.Config{URL: srv.URL, Model: "m", Requests: 200, Concurrency: 4, MaxTokens: 4})
	require.EqualValues(t, 200, rep.OK, "errors: %v", rep.ErrorsByStatus)
	// net/http may dial one more when a request starts just before an
	// answered connection is back in the pool; one per request is 200.
	require.LessOrEqual(t, conns.Load(), int64(20), "closed loop of 4: connections are reused, not one per request")

	conns.Store(0)
	rep = run(t, bench.Config{URL: srv.URL, Model: "m", Rate: 400, Requests: 200, MaxTokens: 4})
	require.EqualValues(t, 200, rep.OK, "errors: %v", rep.ErrorsByStatus)
	require.Less(t, conns.Load(), int64(50), "open loop: connections are reused, not one per request")
}
