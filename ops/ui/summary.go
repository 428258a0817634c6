package ui

import (
	"math"
	"net/http"
	"sort"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// Gatherer is the part of a Prometheus registry the summary reads.
type Gatherer interface {
	Gather() ([]*dto.MetricFamily, error)
}

// maxModels bounds the summary: a model label can carry a client's model
// name, and the page has no use for thousands of rows.
const maxModels = 256

// Summary is GET /ui/api/metrics: this node's request metrics as counters
// and cumulative latency buckets, so the page can difference two samples
// into rates and recent percentiles.
type Summary struct {
	Node   string                   `json:"node"`
	TimeMs int64                    `json:"time_ms"`
	Total  ModelSummary             `json:"total"`
	Models map[string]*ModelSummary `json:"models"`
}

// ModelSummary is one model's requests entering this node and its local
// queue. Latency buckets are cumulative counts at UpperMs (+Inf last, as
// Count).
type ModelSummary struct {
	Requests      float64   `json:"requests"`
	Errors        float64   `json:"errors"`
	UpperMs       []float64 `json:"bucket_upper_ms"`
	Buckets       []float64 `json:"bucket_counts"`
	Count         float64   `json:"count"`
	P50Ms         float64   `json:"p50_ms"`
	P95Ms         float64   `json:"p95_ms"`
	QueueDepth    float64   `json:"queue_depth"`
	ActiveBatches float64   `json:"active_batches"`
	TokensPerSec  float64   `json:"tokens_per_sec"`
}

func (h *Handler) metrics(w http.ResponseWriter, _ *http.Request) {
	if h.cfg.Metrics == nil {
		writeError(w, http.StatusServiceUnavailable, "no_metrics", "this node has no metrics registry")
		return
	}
	families, err := h.cfg.Metrics.Gather()
	if err != nil && len(families) == 0 {
		h.logger.Warn("gather metrics", "err", err)
		writeError(w, http.StatusInternalServerError, "internal_error", "gather metrics: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, Summarize(h.cfg.Node, time.Now(), families))
}

// Summarize folds the inference_* families into per-model summaries.
func Summarize(node string, now time.Time, families []*dto.MetricFamily) Summary {
	s := Summary{Node: node, TimeMs: now.UnixMilli(), Total: *newModelSummary(), Models: map[string]*ModelSummary{}}
	model := func(m *dto.Metric) *ModelSummary {
		name := label(m, "model")
		if ms, ok := s.Models[name]; ok {
			return ms
		}
		if len(s.Models) >= maxModels {
			return nil
		}
		ms := newModelSummary()
		s.Models[name] = ms
		return ms
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch f.GetName() {
			case "inference_requests_total":
				v := m.GetCounter().GetValue()
				errs := 0.0
				if code, _ := strconv.Atoi(label(m, "code")); code >= 500 {
					errs = v
				}
				s.Total.Requests += v
				s.Total.Errors += errs
				if ms := model(m); ms != nil {
					ms.Requests += v
					ms.Errors += errs
				}
			case "inference_request_duration_ms":
				addHistogram(&s.Total, m.GetHistogram())
				if ms := model(m); ms != nil {
					addHistogram(ms, m.GetHistogram())
				}
			case "inference_queue_depth":
				if ms := model(m); ms != nil {
					ms.QueueDepth = m.GetGauge().GetValue()
					s.Total.QueueDepth += ms.QueueDepth
				}
			case "inference_active_batches":
				if ms := model(m); ms != nil {
					ms.ActiveBatches = m.GetGauge().GetValue()
					s.Total.ActiveBatches += ms.ActiveBatches
				}
			case "inference_tokens_per_second":
				if ms := model(m); ms != nil {
					ms.TokensPerSec = m.GetGauge().GetValue()
					s.Total.TokensPerSec += ms.TokensPerSec
				}
			}
		}
	}
	for _, ms := range s.Models {
		ms.P50Ms = Quantile(0.5, ms.UpperMs, ms.Buckets, ms.Count)
		ms.P95Ms = Quantile(0.95, ms.UpperMs, ms.Buckets, ms.Count)
	}
	s.Total.P50Ms = Quantile(0.5, s.Total.UpperMs, s.Total.Buckets, s.Total.Count)
	s.Total.P95Ms = Quantile(0.95, s.Total.UpperMs, s.Total.Buckets, s.Total.Count)
	return s
}

// newModelSummary has empty rather than null bucket lists, so the page
// reads a model that has a queue but no requests yet like any other.
func newModelSummary() *ModelSummary {
	return &ModelSummary{UpperMs: []float64{}, Buckets: []float64{}}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// addHistogram adds h's cumulative buckets to ms. Every series of one
// family shares its bucket bounds, so adding by position is exact.
func addHistogram(ms *ModelSummary, h *dto.Histogram) {
	bs := h.GetBucket()
	if len(ms.UpperMs) == 0 {
		for _, b := range bs {
			if !math.IsInf(b.GetUpperBound(), 1) {
				ms.UpperMs = append(ms.UpperMs, b.GetUpperBound())
			}
		}
		ms.Buckets = make([]float64, len(ms.UpperMs))
	}
	for i, b := range bs {
		if i < len(ms.Buckets) && b.GetUpperBound() == ms.UpperMs[i] {
			ms.Buckets[i] += float64(b.GetCumulativeCount())
		}
	}
	ms.Count += float64(h.GetSampleCount())
}

// Quantile estimates the q-quantile from cumulative bucket counts the way
// PromQL's histogram_quantile does: linear within the bucket that holds
// it, and the highest finite bound when it falls in +Inf. It returns 0
// without observations. The page runs the same estimate (app.js) on the
// difference of two samples.
func Quantile(q float64, upper, cumulative []float64, count float64) float64 {
	if count <= 0 || len(upper) == 0 || len(upper) != len(cumulative) {
		return 0
	}
	rank := q * count
	i := sort.Search(len(cumulative), func(i int) bool { return cumulative[i] >= rank })
	if i == len(cumulative) {
		return upper[len(upper)-1]
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = upper[i-1], cumulative[i-1]
	}
	in := cumulative[i] - below
	if in <= 0 {
		return upper[i]
	}
	return lo + (upper[i]-lo)*(rank-below)/in
}
