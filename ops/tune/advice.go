package tune

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/shoal-dev/shoal/consensus"
)

// Thresholds of the performance guide that trigger advice.
const (
	queueDepthWarn  = 50
	cacheHitWarn    = 0.30
	errorRateWarn   = 0.02
	p95WarnMs       = 300
	memoryWarnBytes = 6 << 30
	memoryCritBytes = 8 << 30
	// minSamples keeps ratios of a nearly idle node from raising alarms.
	minSamples = 20
)

// Advice is one symptom found in a node's metrics or health, with the
// guide's troubleshooting steps for it.
type Advice struct {
	Symptom string   `json:"symptom"`
	Steps   []string `json:"steps"`
}

// Health is GET /health.
type Health struct {
	Status     string `json:"status"`
	Node       string `json:"node"`
	Components map[string]struct {
		Status string `json:"status"`
		Detail string `json:"detail"`
	} `json:"components"`
}

// GetHealth fetches baseURL/health; a 503 still carries the report.
func GetHealth(ctx context.Context, client *http.Client, baseURL string) (Health, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/health", nil)
	if err != nil {
		return Health{}, fmt.Errorf("health %s: %w", baseURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return Health{}, fmt.Errorf("health %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	var h Health
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&h); err != nil {
		return Health{}, fmt.Errorf("health %s: %s: %w", baseURL, resp.Status, err)
	}
	return h, nil
}

// Observed is what Advise looks at; any part may be missing.
type Observed struct {
	Metrics  *Snapshot
	Health   *Health
	Breakers []consensus.BreakerState
}

// Advise lists the guide's troubleshooting advice for every symptom the
// observations show: queue depth over 50, cache hit rate under 30%, error
// rate over 2%, open circuit breakers, p95 latency over 300 ms, memory over
// 6 GB, rate-limited requests and unhealthy components.
func Advise(o Observed) []Advice {
	var out []Advice
	if m := o.Metrics; m != nil {
		out = append(out, metricAdvice(*m)...)
	}
	var open []string
	for _, b := range o.Breakers {
		if b.State == "open" || b.State == "half_open" {
			open = append(open, fmt.Sprintf("%s/%s %s", b.Node, b.Model, b.State))
		}
	}
	if o.Metrics != nil && len(o.Breakers) == 0 {
		for _, s := range o.Metrics.Series("inference_breaker_state", nil) {
			if s.Value >= 1 {
				state := "open"
				if s.Value < 2 {
					state = "half_open"
				}
				open = append(open, fmt.Sprintf("%s/%s %s", s.Labels["node"], s.Labels["model"], state))
			}
		}
	}
	if len(open) > 0 {
		sort.Strings(open)
		out = append(out, Advice{
			Symptom: "circuit breakers not closed: " + strings.Join(open, ", "),
			Steps: []string{
				"check the failing backends on /health and in the node logs",
				"verify the model is available on that node (GET /v1/models there)",
				"check resource limits (CPU, memory, GPU) of the node",
				"a breaker recovers by itself after circuit_breaker.timeout; lower CIRCUIT_BREAKER_TIMEOUT_SEC for faster recovery",
			},
		})
	}
	if h := o.Health; h != nil && h.Status != "" && h.Status != "ok" {
		var bad []string
		for name, c := range h.Components {
			if c.Status != "ok" {
				d := name + " " + c.Status
				if c.Detail != "" {
					d += " (" + c.Detail + ")"
				}
				bad = append(bad, d)
			}
		}
		sort.Strings(bad)
		out = append(out, Advice{
			Symptom: fmt.Sprintf("node %s is %s: %s", h.Node, h.Status, strings.Join(bad, ", ")),
			Steps:   []string{"inspect GET /health for the failing components", "review the node's error logs"},
		})
	}
	return out
}

func metricAdvice(m Snapshot) []Advice {
	var out []Advice
	var deep []string
	depths := m.By("inference_queue_depth", "model", nil)
	for _, model := range sortedKeys(depths) {
		if d := depths[model]; d > queueDepthWarn {
			deep = append(deep, fmt.Sprintf("%s %.0f", model, d))
		}
	}
	if len(deep) > 0 {
		out = append(out, Advice{
			Symptom: fmt.Sprintf("queue depth over %d: %s", queueDepthWarn, strings.Join(deep, ", ")),
			Steps: []string{
				"check batch utilisation (inference_active_batches, inference_batch_size): increase max batch size if batches run full",
				"scale horizontally: add nodes (the Kubernetes HPA scales at 70% CPU / 80% memory)",
				"check for bottlenecks (CPU, GPU, network) and review model performance",
			},
		})
	}
	hits, misses := m.Sum("inference_cache_hits_total", nil), m.Sum("inference_cache_misses_total", nil)
	if n := hits + misses; n >= minSamples && hits/n < cacheHitWarn {
		out = append(out, Advice{
			Symptom: fmt.Sprintf("cache hit rate %.1f%% is under %.0f%%", 100*hits/n, 100*cacheHitWarn),
			Steps: []string{
				"increase the cache TTL (CACHE_DEFAULT_TTL, cache.default_ttl)",
				"normalize prompts for better matching (cache.lowercase when case does not matter)",
				"send temperature 0 for answers that should be cached; check that clients do not add unique text to prompts",
			},
		})
	}
	total := m.Sum("inference_requests_total", nil)
	var failed float64
	for code, v := range m.By("inference_requests_total", "code", nil) {
		if strings.HasPrefix(code, "5") {
			failed += v
		}
	}
	if total >= minSamples && failed/total > errorRateWarn {
		out = append(out, Advice{
			Symptom: fmt.Sprintf("error rate %.1f%% (5xx) is over %.0f%%", 100*failed/total, 100*errorRateWarn),
			Steps: []string{
				"check circuit breakers: GET /health and GET /admin/v1/breakers",
				"review error logs",
				"check resource limits",
				"verify model availability (GET /v1/models on every node)",
			},
		})
	}
	if p95, ok := m.Quantile(0.95, "inference_request_duration_ms", nil); ok && m.Sum("inference_request_duration_ms", nil) >= minSamples && p95 > p95WarnMs {
		out = append(out, Advice{
			Symptom: fmt.Sprintf("p95 latency about %.0fms is over %dms", p95, p95WarnMs),
			Steps: []string{
				"check queue depth (inference_queue_depth) and batch utilisation (inference_active_batches)",
				"check the cache hit rate",
				"lower the batch flush timeout for lower latency, or run shoal tune to search batching settings",
				"review model performance and network latency",
			},
		})
	}
	if limited := m.By("inference_rate_limited_total", "policy", nil); len(limited) > 0 {
		var parts []string
		for _, p := range sortedKeys(limited) {
			if limited[p] > 0 {
				parts = append(parts, fmt.Sprintf("%s %.0f", p, limited[p]))
			}
		}
		if len(parts) > 0 {
			out = append(out, Advice{
				Symptom: "requests refused by rate limits: " + strings.Join(parts, ", "),
				Steps: []string{
					"raise the per-client limit (RATE_LIMIT_RPM, rate_limit.rpm) or per-key limits (PUT /admin/v1/limits) if the load is legitimate",
				},
			})
		}
	}
	if rss := m.Sum("process_resident_memory_bytes", nil); rss > memoryWarnBytes {
		level := "over 6 GB (target)"
		if rss > memoryCritBytes {
			level = "over 8 GB (critical)"
		}
		out = append(out, Advice{
			Symptom: fmt.Sprintf("resident memory %.1f GB is %s", rss/(1<<30), level),
			Steps: []string{
				"reduce the batch size", "enable model quantization (engine.quantize = \"int8\")",
				"use memory-efficient batching (lower max_concurrent_batches)", "scale vertically",
			},
		})
	}
	return out
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
