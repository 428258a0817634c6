package tune

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ErrBadMetrics is a /metrics body that is not Prometheus text.
var ErrBadMetrics = errors.New("invalid Prometheus metrics")

// Snapshot is one scrape of a node's /metrics.
type Snapshot struct {
	At       time.Time
	families map[string]*dto.MetricFamily
}

// ParseMetrics reads the Prometheus text exposition format.
func ParseMetrics(r io.Reader, at time.Time) (Snapshot, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Snapshot{}, fmt.Errorf("%w: %v", ErrBadMetrics, err)
	}
	return Snapshot{At: at, families: fams}, nil
}

// Scrape fetches and parses baseURL/metrics.
func Scrape(ctx context.Context, client *http.Client, baseURL string) (Snapshot, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/metrics", nil)
	if err != nil {
		return Snapshot{}, fmt.Errorf("scrape %s: %w", baseURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return Snapshot{}, fmt.Errorf("scrape %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Snapshot{}, fmt.Errorf("scrape %s: %s", baseURL, resp.Status)
	}
	snap, err := ParseMetrics(io.LimitReader(resp.Body, 32<<20), time.Now())
	if err != nil {
		return Snapshot{}, fmt.Errorf("scrape %s: %w", baseURL, err)
	}
	return snap, nil
}

// Labels selects series by exact label values; nil selects all.
type Labels map[string]string

func (l Labels) match(m *dto.Metric) bool {
	for k, want := range l {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == k {
				found = lp.GetValue() == want
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Summary != nil:
		return float64(m.GetSummary().GetSampleCount())
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// Has reports whether the scrape has the metric family.
func (s Snapshot) Has(name string) bool {
	_, ok := s.families[name]
	return ok
}

// Sum adds the values of the matching series (a histogram's observation
// count).
func (s Snapshot) Sum(name string, sel Labels) float64 {
	total := 0.0
	for _, m := range s.families[name].GetMetric() {
		if sel.match(m) {
			total += value(m)
		}
	}
	return total
}

// By sums the matching series grouped by one label's value.
func (s Snapshot) By(name, key string, sel Labels) map[string]float64 {
	out := map[string]float64{}
	for _, m := range s.families[name].GetMetric() {
		if sel.match(m) {
			out[label(m, key)] += value(m)
		}
	}
	return out
}

// Series is one labelled value.
type Series struct {
	Labels map[string]string
	Value  float64
}

// Series lists the matching series with all their labels.
func (s Snapshot) Series(name string, sel Labels) []Series {
	var out []Series
	for _, m := range s.families[name].GetMetric() {
		if !sel.match(m) {
			continue
		}
		ls := map[string]string{}
		for _, lp := range m.GetLabel() {
			ls[lp.GetName()] = lp.GetValue()
		}
		out = append(out, Series{Labels: ls, Value: value(m)})
	}
	return out
}

// Quantile estimates the q quantile (0..1) of the matching histogram series
// together, interpolating linearly inside the bucket as Prometheus's
// histogram_quantile does. ok is false without observations.
func (s Snapshot) Quantile(q float64, name string, sel Labels) (v float64, ok bool) {
	counts := map[float64]float64{}
	total := 0.0
	for _, m := range s.families[name].GetMetric() {
		h := m.GetHistogram()
		if h == nil || !sel.match(m) {
			continue
		}
		total += float64(h.GetSampleCount())
		for _, b := range h.GetBucket() {
			counts[b.GetUpperBound()] += float64(b.GetCumulativeCount())
		}
	}
	if total == 0 || q < 0 || q > 1 || math.IsNaN(q) {
		return 0, false
	}
	bounds := make([]float64, 0, len(counts))
	for b := range counts {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	rank := q * total
	prevBound, prevCount := 0.0, 0.0
	for _, b := range bounds {
		c := counts[b]
		if c >= rank {
			if math.IsInf(b, 1) {
				return prevBound, true
			}
			if c == prevCount {
				return b, true
			}
			return prevBound + (b-prevBound)*(rank-prevCount)/(c-prevCount), true
		}
		prevBound, prevCount = b, c
	}
	// Observations above the last finite bucket without a +Inf bucket.
	return prevBound, true
}
