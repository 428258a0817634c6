package tune_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops/tune"
)

func parse(t *testing.T, text string) *tune.Snapshot {
	t.Helper()
	s, err := tune.ParseMetrics(strings.NewReader(text), time.Now())
	require.NoError(t, err)
	return &s
}

const healthyMetrics = `# TYPE inference_queue_depth gauge
inference_queue_depth{model="m"} 3
# TYPE inference_requests_total counter
inference_requests_total{code="200",endpoint="chat",model="m"} 1000
inference_requests_total{code="503",endpoint="chat",model="m"} 5
# TYPE inference_cache_hits_total counter
inference_cache_hits_total{model="m"} 600
# TYPE inference_cache_misses_total counter
inference_cache_misses_total{model="m"} 400
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1e+09
`

func symptoms(advice []tune.Advice) string {
	var s []string
	for _, a := range advice {
		s = append(s, a.Symptom)
		if len(a.Steps) == 0 {
			s = append(s, "NO STEPS")
		}
	}
	return strings.Join(s, "\n")
}

func TestAdviseHealthyNodeHasNoAdvice(t *testing.T) {
	require.Empty(t, tune.Advise(tune.Observed{Metrics: parse(t, healthyMetrics), Health: &tune.Health{Status: "ok"}}))
}

func TestAdviseSymptoms(t *testing.T) {
	tests := []struct {
		name, metrics string
		breakers      []consensus.BreakerState
		want          string
	}{
		{name: "queue depth", metrics: "inference_queue_depth{model=\"big\"} 75\ninference_queue_depth{model=\"small\"} 2\n", want: "queue depth over 50: big 75"},
		{name: "cache hit rate", metrics: "inference_cache_hits_total{model=\"m\"} 10\ninference_cache_misses_total{model=\"m\"} 90\n", want: "cache hit rate 10.0% is under 30%"},
		{name: "error rate", metrics: "inference_requests_total{code=\"200\",model=\"m\"} 90\ninference_requests_total{code=\"500\",model=\"m\"} 6\ninference_requests_total{code=\"503\",model=\"m\"} 4\n", want: "error rate 10.0% (5xx) is over 2%"},
		{name: "breaker from admin", breakers: []consensus.BreakerState{{Node: "n2", Model: "m", State: "open"}, {Node: "n1", Model: "m", State: "closed"}}, want: "circuit breakers not closed: n2/m open"},
		{name: "breaker from metrics", metrics: "inference_breaker_state{model=\"m\",node=\"n3\"} 1\n", want: "n3/m half_open"},
		{name: "memory", metrics: "process_resident_memory_bytes 9e+09\n", want: "over 8 GB (critical)"},
		{name: "rate limited", metrics: "inference_rate_limited_total{policy=\"client\"} 12\n", want: "rate limits: client 12"},
		{name: "latency", metrics: "# TYPE inference_request_duration_ms histogram\n" +
			"inference_request_duration_ms_bucket{le=\"100\"} 10\ninference_request_duration_ms_bucket{le=\"500\"} 20\ninference_request_duration_ms_bucket{le=\"+Inf\"} 100\n" +
			"inference_request_duration_ms_sum 90000\ninference_request_duration_ms_count 100\n", want: "p95 latency about 500ms is over 300ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tune.Observed{Breakers: tt.breakers}
			if tt.metrics != "" {
				o.Metrics = parse(t, tt.metrics)
			}
			got := symptoms(tune.Advise(o))
			require.Contains(t, got, tt.want)
			require.NotContains(t, got, "NO STEPS")
		})
	}
}

func TestAdviseIgnoresIdleRatios(t *testing.T) {
	// Three misses on a fresh node are not a cache problem.
	require.Empty(t, tune.Advise(tune.Observed{Metrics: parse(t, "inference_cache_misses_total{model=\"m\"} 3\n")}))
}

func TestAdviseUnhealthyComponents(t *testing.T) {
	var h tune.Health
	require.NoError(t, json.Unmarshal([]byte(`{"status":"degraded","node":"n1","components":{"cache":{"status":"degraded","detail":"olric down"},"raft":{"status":"ok"}}}`), &h))
	got := symptoms(tune.Advise(tune.Observed{Health: &h}))
	require.Contains(t, got, "node n1 is degraded: cache degraded (olric down)")
	require.NotContains(t, got, "raft")
}

func TestSnapshotQuantileInterpolates(t *testing.T) {
	s := parse(t, `# TYPE h histogram
h_bucket{a="x",le="10"} 50
h_bucket{a="x",le="20"} 100
h_bucket{a="x",le="+Inf"} 100
h_sum{a="x"} 1000
h_count{a="x"} 100
h_bucket{a="y",le="10"} 0
h_bucket{a="y",le="20"} 0
h_bucket{a="y",le="+Inf"} 100
h_sum{a="y"} 1
h_count{a="y"} 100
`)
	v, ok := s.Quantile(0.5, "h", tune.Labels{"a": "x"})
	require.True(t, ok)
	require.InDelta(t, 10, v, 1e-9)
	v, ok = s.Quantile(0.75, "h", tune.Labels{"a": "x"})
	require.True(t, ok)
	require.InDelta(t, 15, v, 1e-9)
	// Everything above the last finite bucket: the bucket's bound, as
	// histogram_quantile answers.
	v, ok = s.Quantile(0.9, "h", tune.Labels{"a": "y"})
	require.True(t, ok)
	require.InDelta(t, 20, v, 1e-9)
	_, ok = s.Quantile(0.5, "h", tune.Labels{"a": "none"})
	require.False(t, ok)
	require.EqualValues(t, 200, s.Sum("h", nil))
	require.Equal(t, map[string]float64{"x": 100, "y": 100}, s.By("h", "a", nil))
}

func TestParseMetricsRejectsGarbage(t *testing.T) {
	_, err := tune.ParseMetrics(strings.NewReader("not metrics at all {"), time.Now())
	require.ErrorIs(t, err, tune.ErrBadMetrics)
}

func FuzzParseMetrics(f *testing.F) {
	f.Add(healthyMetrics)
	f.Add("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 3\n")
	f.Add("x{a=\"\\\"\"} NaN\n")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := tune.ParseMetrics(strings.NewReader(in), time.Now())
		if err != nil {
			require.ErrorIs(t, err, tune.ErrBadMetrics)
			return
		}
		// Whatever parsed must be safe to query and advise on.
		_ = tune.Advise(tune.Observed{Metrics: &s})
		_, _ = s.Quantile(0.99, "inference_request_duration_ms", nil)
	})
}

func TestSettingJSON(t *testing.T) {
	var s tune.Setting
	require.NoError(t, json.Unmarshal([]byte(`{"max_size":32,"flush_timeout":"5ms"}`), &s))
	require.Equal(t, tune.Setting{MaxSize: 32, FlushTimeout: 5 * time.Millisecond}, s)
	require.NoError(t, json.Unmarshal([]byte(`{"max_size":2,"flush_timeout":1000000}`), &s))
	require.Equal(t, tune.Setting{MaxSize: 2, FlushTimeout: time.Millisecond}, s)
	require.Error(t, json.Unmarshal([]byte(`{"max_size":2,"flush_timeout":"soon"}`), &s))
	b, err := json.Marshal(tune.Setting{MaxSize: 8, FlushTimeout: 25 * time.Millisecond})
	require.NoError(t, err)
	require.JSONEq(t, `{"max_size":8,"flush_timeout":"25ms"}`, string(b))
}

func FuzzSettingJSON(f *testing.F) {
	f.Add(`{"max_size":32,"flush_timeout":"5ms"}`)
	f.Add(`{"max_size":1,"flush_timeout":7}`)
	f.Add(`{"flush_timeout":null}`)
	f.Fuzz(func(t *testing.T, in string) {
		var s tune.Setting
		if json.Unmarshal([]byte(in), &s) != nil {
			return
		}
		b, err := json.Marshal(s)
		require.NoError(t, err)
		var back tune.Setting
		require.NoError(t, json.Unmarshal(b, &back))
		require.Equal(t, s, back)
	})
}
