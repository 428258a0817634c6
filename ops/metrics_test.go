package ops

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// series reads one sample's value from a scrape.
func series(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape(t, m), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("no sample %s", name)
	return 0
}

func TestObserveRequestRecordsLatencyAndCount(t *testing.T) {
	m := NewMetrics()
	m.ObserveRequest("m1", "chat", 200, 42*time.Millisecond)
	m.ObserveRequest("m1", "chat", 200, 8*time.Millisecond)
	m.ObserveRequest("m1", "chat", 429, time.Millisecond)
	require.Equal(t, 2.0, series(t, m, `inference_requests_total{code="200",endpoint="chat",model="m1"}`))
	require.Equal(t, 1.0, series(t, m, `inference_requests_total{code="429",endpoint="chat",model="m1"}`))
	text := scrape(t, m)
	require.Contains(t, text, `inference_request_duration_ms_sum{code="200",endpoint="chat",model="m1"} 50`)
	require.Contains(t, text, `inference_request_duration_ms_bucket{code="200",endpoint="chat",model="m1",le="50"} 2`)
	require.Contains(t, text, `inference_request_duration_ms_bucket{code="200",endpoint="chat",model="m1",le="5"} 0`)
}

func TestObserveTokensCountsPromptAndCompletion(t *testing.T) {
	m := NewMetrics()
	m.ObserveTokens("m1", 10, 20, time.Second)
	m.ObserveTokens("m1", 5, 0, time.Second)
	require.Equal(t, 15.0, series(t, m, `inference_tokens_total{model="m1",type="prompt"}`))
	require.Equal(t, 20.0, series(t, m, `inference_tokens_total{model="m1",type="completion"}`))
	require.Contains(t, scrape(t, m), `inference_request_tokens_per_second_sum{model="m1"} 20`)
}

func TestSchedulerObserverFeedsGauges(t *testing.T) {
	m := NewMetrics()
	m.QueueDepth("m1", 7)
	m.QueueWait("m1", 3*time.Millisecond)
	m.BatchStarted("m1", 16)
	m.BatchStarted("m1", 4)
	require.Equal(t, 7.0, series(t, m, `inference_queue_depth{model="m1"}`))
	require.Equal(t, 2.0, series(t, m, `inference_active_batches{model="m1"}`))
	m.BatchFinished("m1", 16, time.Millisecond)
	require.Equal(t, 1.0, series(t, m, `inference_active_batches{model="m1"}`))
	text := scrape(t, m)
	require.Contains(t, text, `inference_batch_size_sum{model="m1"} 20`)
	require.Contains(t, text, `inference_batch_size_count{model="m1"} 2`)
	require.Contains(t, text, `inference_queue_wait_ms_sum{model="m1"} 3`)
}

func TestMetricsIncludeGoRuntime(t *testing.T) {
	text := scrape(t, NewMetrics())
	for _, name := range []string{"go_goroutines ", "go_memstats_alloc_bytes ", "process_"} {
		require.Contains(t, text, name)
	}
}

func TestEachMetricsHasItsOwnRegistry(t *testing.T) {
	a, b := NewMetrics(), NewMetrics()
	a.ObserveRequest("m1", "infer", 200, time.Millisecond)
	require.Contains(t, scrape(t, a), `inference_requests_total{code="200",endpoint="infer",model="m1"} 1`)
	require.False(t, strings.Contains(scrape(t, b), `inference_requests_total{`), "b saw a's request")
}

func TestCompletionTokensReadsTheTokenCounter(t *testing.T) {
	m := NewMetrics()
	require.Zero(t, m.CompletionTokens("m"))
	m.ObserveTokens("m", 5, 7, time.Second)
	m.ObserveTokens("m", 1, 3, time.Second)
	m.ObserveTokens("other", 1, 100, time.Second)
	require.Equal(t, int64(10), m.CompletionTokens("m"))
}

// seriesCount is how many samples a scrape has.
func seriesCount(t *testing.T, m *Metrics) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(scrape(t, m), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "go_") && !strings.HasPrefix(line, "process_") {
			n++
		}
	}
	return n
}

// Model names come from clients: names the cluster does not serve share one label value, so
// they cannot add series.
func TestUnservedModelsShareOneLabel(t *testing.T) {
	m := NewMetrics()
	m.SetServedModels(func(model string) bool { return model == "m1" })
	observe := func(model string) {
		m.ObserveRequest(model, "chat", 404, time.Millisecond)
		m.ObserveTokens(model, 1, 1, time.Second)
		m.ObserveCacheLookup(model, time.Millisecond, false)
		m.ObserveCacheLookup(model, time.Millisecond, true)
	}
	observe("m1")
	observe("first-unknown")
	before := seriesCount(t, m)
	for i := range 50 {
		observe("random-" + strconv.Itoa(i))
	}
	require.Equal(t, before, seriesCount(t, m))
	require.Equal(t, 51.0, series(t, m, `inference_requests_total{code="404",endpoint="chat",model="_unknown"}`))
	require.Equal(t, 1.0, series(t, m, `inference_requests_total{code="404",endpoint="chat",model="m1"}`))
	require.Equal(t, 51.0, series(t, m, `inference_cache_misses_total{model="_unknown"}`))
	require.Equal(t, 51.0, series(t, m, `inference_cache_hits_total{model="_unknown"}`))
	require.Equal(t, 1.0, series(t, m, `inference_cache_hits_total{model="m1"}`))
	require.Equal(t, 102.0, series(t, m, `inference_cache_lookup_ms_count{model="_unknown"}`))
	require.NotContains(t, scrape(t, m), "random-")

	// Without a served-models check every name is its own label, as before.
	m.SetServedModels(nil)
	m.ObserveRequest("random-x", "chat", 200, time.Millisecond)
	require.Contains(t, scrape(t, m), `model="random-x"`)
}
