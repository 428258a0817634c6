// Package ops holds what operators touch: Prometheus metrics, the health
// report, the admin API, and the bench and tune tools.
package ops

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
}

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
	}
	reg.MustRegister(m.RequestDuration, m.Requests, m.QueueDepthGauge, m.ActiveBatches, m.BatchSize,
		m.QueueWaitMs, m.Tokens, m.TokensPerSecond, m.InFlight,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry, EnableOpenMetrics: false})
}

// ObserveRequest records one answered request.
func (m *Metrics) ObserveRequest(model, endpoint string, code int, took time.Duration) {
	c := strconv.Itoa(code)
	m.RequestDuration.WithLabelValues(model, endpoint, c).Observe(float64(took) / float64(time.Millisecond))
	m.Requests.WithLabelValues(model, endpoint, c).Inc()
}

// ObserveTokens records a finished generation.
func (m *Metrics) ObserveTokens(model string, prompt, completion int, took time.Duration) {
	m.Tokens.WithLabelValues(model, "prompt").Add(float64(prompt))
	m.Tokens.WithLabelValues(model, "completion").Add(float64(completion))
	if completion > 0 && took > 0 {
		m.TokensPerSecond.WithLabelValues(model).Observe(float64(completion) / took.Seconds())
	}
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
