package dcache

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports a Cache's state as Prometheus metrics, read at scrape time.
type collector struct {
	c                                                *Cache
	members, expected, degraded, since, queued       *prometheus.Desc
	restarts, dropped, fastFails, timeouts, failures *prometheus.Desc
}

// Collector returns a Prometheus collector of the cache's membership and health, for the
// node's registry: inference_cache_members, inference_cache_expected_members,
// inference_cache_degraded (1 while degraded), inference_cache_degraded_since_seconds (Unix time
// the degradation began; 0 when healthy), inference_cache_member_restarts_total,
// inference_cache_write_queue, inference_cache_writes_dropped_total,
// inference_cache_fast_fails_total, inference_cache_timeouts_total and
// inference_cache_errors_total. It never blocks on the network.
func (c *Cache) Collector() prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("inference_cache_"+name, help, nil, prometheus.Labels{"backend": c.cfg.Backend})
	}
	return &collector{
		c:         c,
		members:   d("members", "Cache members this node's cache member sees (1 for local and off, 0 while none runs)."),
		expected:  d("expected_members", "Cache members shoal's membership lists, this node included (0 when unknown)."),
		degraded:  d("degraded", "1 while the cache is degraded (not running, split, or failing calls), else 0."),
		since:     d("degraded_since_seconds", "Unix time the current degradation began; 0 when healthy."),
		queued:    d("write_queue", "Cache writes queued off the request path."),
		restarts:  d("member_restarts_total", "Cache members replaced by fresh ones after they had started (split, stopped)."),
		dropped:   d("writes_dropped_total", "Cache writes dropped because the write queue was full."),
		fastFails: d("fast_fails_total", "Cache calls refused at once because their key's owner left a call unanswered moments before."),
		timeouts:  d("timeouts_total", "Cache calls that got no answer within their bound."),
		failures:  d("errors_total", "Cache calls that failed, timeouts included."),
	}
}

func (k *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{k.members, k.expected, k.degraded, k.since, k.queued,
		k.restarts, k.dropped, k.fastFails, k.timeouts, k.failures} {
		ch <- d
	}
}

func (k *collector) Collect(ch chan<- prometheus.Metric) {
	h := k.c.Health()
	st := k.c.Stats()
	degraded, since := 0.0, 0.0
	if h.Status == StatusDegraded {
		degraded = 1
		if !h.Since.IsZero() {
			since = float64(h.Since.UnixNano()) / 1e9
		}
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge(k.members, float64(h.Members))
	gauge(k.expected, float64(k.c.st.expected()))
	gauge(k.degraded, degraded)
	gauge(k.since, since)
	gauge(k.queued, float64(st.Queued))
	counter(k.restarts, st.Restarts)
	counter(k.dropped, st.Dropped)
	counter(k.fastFails, st.FastFails)
	counter(k.timeouts, st.Timeouts)
	counter(k.failures, st.Errors)
}
