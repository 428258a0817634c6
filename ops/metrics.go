// Package ops is what a node exposes to its operators' monitoring: the
// Prometheus metrics, the /health report and GPU discovery. The admin API
// server (ops/admin), its contract and client (ops/adminapi) and the client
// tools (ops/bench, ops/tune, ops/top) live in subpackages.
package ops

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// Metrics is one node's Prometheus registry and instruments. Each node owns
// its registry, so tests can run many nodes in one process. The names follow
// the seed performance guide (inference_*).
type Metrics struct {
	Registry *prometheus.Registry

	RequestDuration *prometheus.HistogramVec
	Requests        *prometheus.CounterVec
	QueueDepthGauge *prometheus.GaugeVec
	ActiveBatches   *prometheus.GaugeVec
	BatchSize       *prometheus.HistogramVec
	QueueWaitMs     *prometheus.HistogramVec
	Tokens          *prometheus.CounterVec
	TokensPerSecond *prometheus.HistogramVec
	InFlight        prometheus.Gauge
	CacheHits       *ModelCounterVec
	CacheMisses     *ModelCounterVec
	CacheLookupMs   *ModelHistogramVec
	RateLimited     *prometheus.CounterVec
	BreakerState    *prometheus.GaugeVec
	Routed          *prometheus.CounterVec
	ForwardErrors   *prometheus.CounterVec
	RouteDecisionUs prometheus.Histogram
	RouteReason     *prometheus.CounterVec
	Retries         *prometheus.CounterVec
	TokenRate       *prometheus.GaugeVec

	// served decides which model names may become label values; nil: any.
	served atomic.Pointer[func(model string) bool]
	// requestObs caches ObserveRequest's metrics per requestKey.
	requestObs  sync.Map
	tokenObs    sync.Map // model label → *tokenObs
	cacheObs    sync.Map // model label → *cacheObs
	requestObsN atomic.Int64
}

// UnknownModel is the model label of requests naming a model the cluster does not serve.
// Model names come from clients; each distinct label value is a new series kept forever, so
// only served models get their own.
const UnknownModel = "_unknown"

// latencyBuckets cover 1 ms to 60 s, dense around the seed's 300/500 ms SLOs.
var latencyBuckets = []float64{1, 2.5, 5, 10, 25, 50, 75, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 1500, 2500, 5000, 10000, 30000, 60000}

// NewMetrics registers the node's instruments and the Go runtime collectors.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "inference_request_duration_ms", Help: "End-to-end request latency in milliseconds, as the client saw it from this node.",
			Buckets: latencyBuckets,
		}, []string{"model", "endpoint", "code"}),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inference_requests_total", Help: "Requests answered, by model, endpoint and HTTP status code.",
		}, []string{"model", "endpoint", "code"}),
		QueueDepthGauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inference_queue_depth", Help: "Requests waiting in the model's local queue.",
		}, []string{"model"}),
		ActiveBatches: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inference_active_batches", Help: "Batches running on the model's backend now.",
		}, []string{"model"}),
		BatchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "inference_batch_size", Help: "Requests per batch handed to the backend.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}, []string{"model"}),
		QueueWaitMs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "inference_queue_wait_ms", Help: "Time a request waited in the queue before its batch started, in milliseconds.",
			Buckets: latencyBuckets,
		}, []string{"model"}),
		Tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inference_tokens_total", Help: "Tokens processed, by model and type (prompt or completion).",
		}, []string{"model", "type"}),
		TokensPerSecond: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "inference_request_tokens_per_second", Help: "Completion tokens per second of each request, from its start to its end.",
			Buckets: []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500},
		}, []string{"model"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "inference_requests_in_flight", Help: "Requests being served by this node's HTTP port now.",
		}),
		RateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inference_rate_limited_total", Help: "Requests refused by a rate limit, by the policy that refused them.",
		}, []string{"policy"}),
		BreakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inference_breaker_state", Help: "Circuit breaker state per node and model: 0 closed, 1 half-open, 2 open.",
		}, []string{"node", "model"}),
		Routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inference_routed_total", Help: "Requests this node routed, by target node and route (local or forward).",
		}, []string{"target", "route"}),
		ForwardErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inference_forward_errors_total", Help: "Forwards to a peer that failed, by target node.",
		}, []string{"target"}),
		RouteDecisionUs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "inference_route_decision_us", Help: "Time to pick a target node, in microseconds.",
			Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 1000},
		}),
		RouteReason: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inference_route_reason_total", Help: "Requests this node routed, by why the target was picked (least-expected, prefix, local, retry, or the configured policy).",
		}, []string{"reason"}),
		TokenRate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inference_tokens_per_second", Help: "Completion tokens this node generated per second, over the last second, by model.",
		}, []string{"model"}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inference_retries_total", Help: "Requests retried on another node after a failure before any byte reached the client.",
		}, []string{"reason"}),
	}
	m.CacheHits = &ModelCounterVec{vec: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "inference_cache_hits_total", Help: "Response cache lookups that found an answer.",
	}, []string{"model"}), label: m.ModelLabel}
	m.CacheMisses = &ModelCounterVec{vec: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "inference_cache_misses_total", Help: "Response cache lookups that found nothing (or failed).",
	}, []string{"model"}), label: m.ModelLabel}
	m.CacheLookupMs = &ModelHistogramVec{vec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "inference_cache_lookup_ms", Help: "Response cache lookup time in milliseconds.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100},
	}, []string{"model"}), label: m.ModelLabel}
	reg.MustRegister(m.RequestDuration, m.Requests, m.QueueDepthGauge, m.ActiveBatches, m.BatchSize,
		m.QueueWaitMs, m.Tokens, m.TokensPerSecond, m.InFlight, m.CacheHits, m.CacheMisses, m.CacheLookupMs,
		m.RateLimited, m.BreakerState, m.Routed, m.ForwardErrors, m.RouteDecisionUs, m.RouteReason, m.Retries, m.TokenRate,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry, EnableOpenMetrics: false})
}

// SetServedModels makes served decide which model names become label values; others are
// recorded as UnknownModel. Until it is called (or with nil) every name is used as it is. It
// is a setter rather than a NewMetrics field because the node knows what the cluster serves
// only once membership runs, after its metrics exist. served is called on every observation
// that carries a model label, concurrently: it must be cheap and must not block.
func (m *Metrics) SetServedModels(served func(model string) bool) {
	if served == nil {
		m.served.Store(nil)
		return
	}
	m.served.Store(&served)
}

// ModelLabel is the model label value for a request naming model: model itself when the
// cluster serves it (or no served-models check is set), else UnknownModel.
func (m *Metrics) ModelLabel(model string) string {
	if f := m.served.Load(); f != nil && !(*f)(model) {
		return UnknownModel
	}
	return model
}

// ModelCounterVec is a counter vector whose "model" label (its first) takes only the names
// Metrics.ModelLabel lets through, so client-chosen model names cannot add series.
type ModelCounterVec struct {
	vec   *prometheus.CounterVec
	label func(string) string
}

// WithLabelValues returns the counter of the label values, the model first.
func (v *ModelCounterVec) WithLabelValues(model string, rest ...string) prometheus.Counter {
	if len(rest) == 0 {
		return v.vec.WithLabelValues(v.label(model))
	}
	return v.vec.WithLabelValues(append([]string{v.label(model)}, rest...)...)
}

// Describe implements prometheus.Collector.
func (v *ModelCounterVec) Describe(ch chan<- *prometheus.Desc) { v.vec.Describe(ch) }

// Collect implements prometheus.Collector.
func (v *ModelCounterVec) Collect(ch chan<- prometheus.Metric) { v.vec.Collect(ch) }

// ModelHistogramVec is ModelCounterVec for histograms.
type ModelHistogramVec struct {
	vec   *prometheus.HistogramVec
	label func(string) string
}

// WithLabelValues returns the histogram of the label values, the model first.
func (v *ModelHistogramVec) WithLabelValues(model string, rest ...string) prometheus.Observer {
	if len(rest) == 0 {
		return v.vec.WithLabelValues(v.label(model))
	}
	return v.vec.WithLabelValues(append([]string{v.label(model)}, rest...)...)
}

// Describe implements prometheus.Collector.
func (v *ModelHistogramVec) Describe(ch chan<- *prometheus.Desc) { v.vec.Describe(ch) }

// Collect implements prometheus.Collector.
func (v *ModelHistogramVec) Collect(ch chan<- prometheus.Metric) { v.vec.Collect(ch) }

// requestKey names one label set of the request metrics.
type requestKey struct {
	model, endpoint string
	code            int
}

// requestObs are the request metrics of one label set, looked up once.
type requestObs struct {
	duration prometheus.Observer
	count    prometheus.Counter
}

// maxRequestObs bounds the cached label sets. Models are bounded by
// ModelLabel and endpoints and status codes are few; past the bound the
// metrics are still recorded, only without the cache.
const maxRequestObs = 4096

// cachedObs returns the metrics of label set k from cache, building them
// once. Hashing the labels on every request is a cost every request pays;
// past maxRequestObs cached sets the metrics are still recorded, only
// built each time.
func cachedObs[K comparable, V any](m *Metrics, cache *sync.Map, k K, build func() V) V {
	if v, ok := cache.Load(k); ok {
		return v.(V)
	}
	o := build()
	if m.requestObsN.Load() < maxRequestObs {
		if _, loaded := cache.LoadOrStore(k, o); !loaded {
			m.requestObsN.Add(1)
		}
	}
	return o
}

// ObserveRequest records one answered request.
func (m *Metrics) ObserveRequest(model, endpoint string, code int, took time.Duration) {
	k := requestKey{m.ModelLabel(model), endpoint, code}
	o := cachedObs(m, &m.requestObs, k, func() *requestObs {
		c := strconv.Itoa(code)
		return &requestObs{duration: m.RequestDuration.WithLabelValues(k.model, endpoint, c), count: m.Requests.WithLabelValues(k.model, endpoint, c)}
	})
	o.duration.Observe(float64(took) / float64(time.Millisecond))
	o.count.Inc()
}

// ObserveTokens records a finished generation.
func (m *Metrics) ObserveTokens(model string, prompt, completion int, took time.Duration) {
	model = m.ModelLabel(model)
	o := cachedObs(m, &m.tokenObs, model, func() *tokenObs {
		return &tokenObs{prompt: m.Tokens.WithLabelValues(model, "prompt"), completion: m.Tokens.WithLabelValues(model, "completion"),
			rate: m.TokensPerSecond.WithLabelValues(model)}
	})
	o.prompt.Add(float64(prompt))
	o.completion.Add(float64(completion))
	if completion > 0 && took > 0 {
		o.rate.Observe(float64(completion) / took.Seconds())
	}
}

// tokenObs are ObserveTokens' metrics of one model, looked up once.
type tokenObs struct {
	prompt, completion prometheus.Counter
	rate               prometheus.Observer
}

// ObserveCacheLookup records one response-cache lookup.
func (m *Metrics) ObserveCacheLookup(model string, took time.Duration, hit bool) {
	model = m.ModelLabel(model)
	o := cachedObs(m, &m.cacheObs, model, func() *cacheObs {
		return &cacheObs{took: m.CacheLookupMs.vec.WithLabelValues(model), hits: m.CacheHits.vec.WithLabelValues(model),
			misses: m.CacheMisses.vec.WithLabelValues(model)}
	})
	o.took.Observe(float64(took) / float64(time.Millisecond))
	if hit {
		o.hits.Inc()
	} else {
		o.misses.Inc()
	}
}

// cacheObs are ObserveCacheLookup's metrics of one model, looked up once.
type cacheObs struct {
	took         prometheus.Observer
	hits, misses prometheus.Counter
}

// CompletionTokens is the number of tokens generated for model so far, as
// inference_tokens_total counts them.
func (m *Metrics) CompletionTokens(model string) int64 {
	var out dto.Metric
	if m.Tokens.WithLabelValues(model, "completion").Write(&out) != nil {
		return 0
	}
	return int64(out.GetCounter().GetValue())
}

// QueueDepth implements scheduler.Observer.
func (m *Metrics) QueueDepth(model string, depth int) {
	m.QueueDepthGauge.WithLabelValues(model).Set(float64(depth))
}

// QueueWait implements scheduler.Observer.
func (m *Metrics) QueueWait(model string, wait time.Duration) {
	m.QueueWaitMs.WithLabelValues(model).Observe(float64(wait) / float64(time.Millisecond))
}

// BatchStarted implements scheduler.Observer.
func (m *Metrics) BatchStarted(model string, size int) {
	m.ActiveBatches.WithLabelValues(model).Inc()
	m.BatchSize.WithLabelValues(model).Observe(float64(size))
}

// BatchFinished implements scheduler.Observer.
func (m *Metrics) BatchFinished(model string, _ int, _ time.Duration) {
	m.ActiveBatches.WithLabelValues(model).Dec()
}

// WatchPrefixCache exports a model's prompt-prefix KV cache counters, read
// from stats at scrape time: prompt tokens looked up, tokens found cached,
// and their ratio since start.
func (m *Metrics) WatchPrefixCache(model string, stats func() (lookupTokens, hitTokens uint64)) {
	labels := prometheus.Labels{"model": model}
	m.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "inference_prefix_cache_lookup_tokens_total", Help: "Prompt tokens looked up in the prefix KV cache.", ConstLabels: labels,
		}, func() float64 { l, _ := stats(); return float64(l) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "inference_prefix_cache_hit_tokens_total", Help: "Prompt tokens whose KV came from the prefix cache, skipping their prefill.", ConstLabels: labels,
		}, func() float64 { _, h := stats(); return float64(h) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "inference_prefix_cache_hit_ratio", Help: "Share of looked-up prompt tokens found in the prefix KV cache since start.", ConstLabels: labels,
		}, func() float64 {
			l, h := stats()
			if l == 0 {
				return 0
			}
			return float64(h) / float64(l)
		}),
	)
}
