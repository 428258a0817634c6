package bench

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Percentiles are latency quantiles in milliseconds.
type Percentiles struct {
	Count int64   `json:"count"`
	Min   float64 `json:"min_ms"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

// CacheStats counts the X-Shoal-Cache headers seen.
type CacheStats struct {
	Hits   int64 `json:"hits"`
	Misses int64 `json:"misses"`
	Bypass int64 `json:"bypass"`
	// HitRatio is hits / (hits + misses); bypassed requests are not
	// candidates for the cache and do not count.
	HitRatio float64 `json:"hit_ratio"`
	// Seen is false when the server sent no X-Shoal-Cache header at all.
	Seen bool `json:"seen"`
}

// Sample is one request, for plots.
type Sample struct {
	// At is the scheduled send time since the phase start.
	At time.Duration
	// Latency is from the scheduled send to the last byte.
	Latency time.Duration
	OK      bool
}

// Report is a finished benchmark.
type Report struct {
	URL         string    `json:"url"`
	Model       string    `json:"model"`
	Endpoint    Endpoint  `json:"endpoint"`
	Stream      bool      `json:"stream"`
	Mode        string    `json:"mode"`
	Concurrency int       `json:"concurrency,omitempty"`
	Rate        float64   `json:"rate,omitempty"`
	Started     time.Time `json:"started"`
	// Elapsed runs from the first scheduled send to the last response.
	Elapsed float64 `json:"elapsed_s"`

	// Requests = OK + Errors: every request sent. Dropped open-loop sends
	// are counted apart (they were never sent) but do count against the
	// error rate.
	Requests       int64            `json:"requests"`
	OK             int64            `json:"ok"`
	Errors         int64            `json:"errors"`
	Dropped        int64            `json:"dropped"`
	ErrorsByStatus map[string]int64 `json:"errors_by_status"`
	ErrorRate      float64          `json:"error_rate"`
	// RateLimited is the last 429's explanation, nil without any.
	RateLimited *Refusal `json:"rate_limited,omitempty"`

	// RequestsPerSec is successful responses per second of Elapsed.
	RequestsPerSec float64 `json:"requests_per_sec"`
	// SendRate is the achieved send rate, from the first to the last
	// actual send (open loop: compare with Rate).
	SendRate float64 `json:"send_rate"`
	// MaxSendLagMs is the worst delay between a scheduled and an actual
	// send; a large value means the client could not keep up.
	MaxSendLagMs float64 `json:"max_send_lag_ms"`

	// Latency covers successful requests, from scheduled send to last byte.
	Latency Percentiles `json:"latency"`
	// TTFT and InterToken are set for streamed runs.
	TTFT               *Percentiles `json:"ttft,omitempty"`
	InterToken         *Percentiles `json:"inter_token,omitempty"`
	OutputTokens       int64        `json:"output_tokens"`
	OutputTokensPerSec float64      `json:"output_tokens_per_sec"`

	// Prompts is "generated" (unique per request unless repeated) or
	// "file"; RepeatRatio is the configured share of repeats.
	Prompts     string  `json:"prompts"`
	RepeatRatio float64 `json:"repeat_ratio"`

	Cache CacheStats       `json:"cache"`
	Nodes map[string]int64 `json:"nodes"`
	SLO   []SLOResult      `json:"slo"`

	// Samples holds every request of the measured phase, for plots; it is
	// left out of JSON.
	Samples []Sample `json:"-"`
}

// aggregate collects results concurrently.
type aggregate struct {
	start time.Time

	mu                     sync.Mutex
	lat, ttft, itl         *hdrhistogram.Histogram
	ok, errs, dropped      int64
	byStatus               map[string]int64
	firstSent, lastSent    time.Time
	sentCount              int64
	lastEnd                time.Time
	maxLag                 time.Duration
	outTokens              int64
	cacheHit, cacheMiss    int64
	cacheBypass, cacheSeen int64
	nodes                  map[string]int64
	refusal                *Refusal
	samples                []Sample
	streamed               bool
}

// newHist records microseconds up to twice the request timeout (at least a
// minute); longer values are clamped to the top.
func newHist(timeout time.Duration) *hdrhistogram.Histogram {
	maxUS := max(int64(timeout/time.Microsecond)*2, int64(time.Minute/time.Microsecond))
	return hdrhistogram.New(1, maxUS, 3)
}

func newAggregate(timeout time.Duration) *aggregate {
	return &aggregate{
		lat: newHist(timeout), ttft: newHist(timeout), itl: newHist(timeout),
		byStatus: map[string]int64{}, nodes: map[string]int64{},
	}
}

func record(h *hdrhistogram.Histogram, d time.Duration) {
	v := int64(d / time.Microsecond)
	v = min(max(v, 1), h.HighestTrackableValue())
	_ = h.RecordValue(v)
}

func (a *aggregate) add(r *result) {
	a.mu.Lock()
	defer a.mu.Unlock()
	lat := r.end.Sub(r.scheduled)
	a.samples = append(a.samples, Sample{At: r.scheduled.Sub(a.start), Latency: lat, OK: r.ok()})
	if !r.sent.IsZero() {
		a.sentCount++
		if a.firstSent.IsZero() || r.sent.Before(a.firstSent) {
			a.firstSent = r.sent
		}
		if r.sent.After(a.lastSent) {
			a.lastSent = r.sent
		}
		a.maxLag = max(a.maxLag, r.sent.Sub(r.scheduled))
	}
	if r.end.After(a.lastEnd) {
		a.lastEnd = r.end
	}
	if r.node != "" {
		a.nodes[r.node]++
	}
	switch r.cache {
	case "":
	case "hit":
		a.cacheHit++
		a.cacheSeen++
	case "miss":
		a.cacheMiss++
		a.cacheSeen++
	default:
		a.cacheBypass++
		a.cacheSeen++
	}
	if !r.ok() {
		a.errs++
		a.byStatus[r.errKind]++
		if r.refusal != nil {
			a.refusal = r.refusal
		}
		return
	}
	a.ok++
	record(a.lat, lat)
	a.outTokens += int64(r.outTokens)
	if r.ttft > 0 {
		a.streamed = true
		record(a.ttft, r.ttft)
	}
	for _, d := range r.itl {
		record(a.itl, d)
	}
}

func (a *aggregate) drop(at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dropped++
	a.byStatus[errDropped]++
	a.samples = append(a.samples, Sample{At: at.Sub(a.start), OK: false})
}

// counts is (finished + dropped, errors + dropped).
func (a *aggregate) counts() (int64, int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ok + a.errs + a.dropped, a.errs + a.dropped
}

func percentiles(h *hdrhistogram.Histogram) Percentiles {
	ms := func(v int64) float64 { return float64(v) / 1000 }
	if h.TotalCount() == 0 {
		return Percentiles{}
	}
	return Percentiles{
		Count: h.TotalCount(),
		Min:   ms(h.Min()),
		Mean:  h.Mean() / 1000,
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P95:   ms(h.ValueAtQuantile(95)),
		P99:   ms(h.ValueAtQuantile(99)),
		Max:   ms(h.Max()),
	}
}

func (a *aggregate) report(cfg Config) Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := Report{
		URL: cfg.URL, Model: cfg.Model, Endpoint: cfg.Endpoint, Stream: cfg.Stream, Mode: cfg.Mode(),
		Started:  a.start,
		Requests: a.ok + a.errs, OK: a.ok, Errors: a.errs, Dropped: a.dropped,
		ErrorsByStatus: a.byStatus, Nodes: a.nodes, RateLimited: a.refusal,
		Latency:      percentiles(a.lat),
		OutputTokens: a.outTokens,
		MaxSendLagMs: float64(a.maxLag) / float64(time.Millisecond),
		Samples:      a.samples,
	}
	r.Prompts, r.RepeatRatio = "generated", cfg.RepeatRatio
	if len(cfg.Prompts) > 0 {
		r.Prompts = "file"
	}
	if cfg.Rate > 0 {
		r.Rate = cfg.Rate
	} else {
		r.Concurrency = cfg.Concurrency
	}
	if !a.lastEnd.IsZero() {
		r.Elapsed = a.lastEnd.Sub(a.start).Seconds()
	}
	if r.Elapsed > 0 {
		r.RequestsPerSec = float64(a.ok) / r.Elapsed
		r.OutputTokensPerSec = float64(a.outTokens) / r.Elapsed
	}
	if span := a.lastSent.Sub(a.firstSent).Seconds(); a.sentCount > 1 && span > 0 {
		r.SendRate = float64(a.sentCount-1) / span
	}
	if total := r.Requests + r.Dropped; total > 0 {
		r.ErrorRate = float64(r.Errors+r.Dropped) / float64(total)
	}
	if cfg.Stream && a.streamed {
		t, i := percentiles(a.ttft), percentiles(a.itl)
		r.TTFT, r.InterToken = &t, &i
	}
	r.Cache = CacheStats{Hits: a.cacheHit, Misses: a.cacheMiss, Bypass: a.cacheBypass, Seen: a.cacheSeen > 0}
	if n := a.cacheHit + a.cacheMiss; n > 0 {
		r.Cache.HitRatio = float64(a.cacheHit) / float64(n)
	}
	sort.Slice(r.Samples, func(i, j int) bool { return r.Samples[i].At < r.Samples[j].At })
	r.SLO = CheckSLO(r, DefaultSLO())
	return r
}

// Cause explains the run's errors when most of them are 429, naming the
// limit the server reported and when to retry; "" otherwise.
func (r Report) Cause() string {
	n := r.ErrorsByStatus["429"]
	if r.RateLimited == nil || n == 0 || 2*n < r.Errors {
		return ""
	}
	what := r.RateLimited.Message
	if what == "" {
		what = "no explanation in the body"
	}
	var extra []string
	if r.RateLimited.Code != "" {
		extra = append(extra, "code "+r.RateLimited.Code)
	}
	if r.RateLimited.Limit != "" {
		extra = append(extra, "X-RateLimit-Limit "+r.RateLimited.Limit)
	}
	if r.RateLimited.RetryAfter != "" {
		extra = append(extra, "Retry-After "+r.RateLimited.RetryAfter+"s")
	}
	msg := fmt.Sprintf("%d of %d errors are 429: %s", n, r.Errors, what)
	if len(extra) > 0 {
		msg += " (" + strings.Join(extra, ", ") + ")"
	}
	if r.RateLimited.Code == "rate_limit_exceeded" {
		msg += "; the client limit counts per API key, else per IP: raise it with `shoal admin limits set` (default_rpm) or bench with --api-key of a key that has its own rpm"
	}
	return msg
}

// NodeShares is each node's share of the responses that named a node
// (X-Shoal-Node), by name.
func (r Report) NodeShares() map[string]float64 {
	var total int64
	for _, n := range r.Nodes {
		total += n
	}
	out := make(map[string]float64, len(r.Nodes))
	for name, n := range r.Nodes {
		out[name] = float64(n) / math.Max(1, float64(total))
	}
	return out
}
