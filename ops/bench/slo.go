package bench

import "fmt"

// Status is an SLO verdict.
type Status string

// SLO verdicts: PASS meets the target, WARN misses the target but meets the
// critical threshold, FAIL misses both, SKIP had nothing to measure.
const (
	StatusPass Status = "PASS"
	StatusWarn Status = "WARN"
	StatusFail Status = "FAIL"
	StatusSkip Status = "SKIP"
)

// SLO holds the thresholds of the performance guide's SLO table.
type SLO struct {
	P95TargetMs, P95CriticalMs         float64
	P99TargetMs, P99CriticalMs         float64
	ErrorRateTarget, ErrorRateCritical float64
	CacheHitTarget, CacheHitCritical   float64
}

// DefaultSLO is the seed guide's table: p95 < 300 ms (critical 600 ms),
// p99 < 500 ms (1000 ms), error rate < 0.5% (2%), cache hit rate > 50% (30%).
func DefaultSLO() SLO {
	return SLO{
		P95TargetMs: 300, P95CriticalMs: 600,
		P99TargetMs: 500, P99CriticalMs: 1000,
		ErrorRateTarget: 0.005, ErrorRateCritical: 0.02,
		CacheHitTarget: 0.50, CacheHitCritical: 0.30,
	}
}

// SLOResult is one row of the SLO table.
type SLOResult struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Display  string  `json:"display"`
	Target   string  `json:"target"`
	Critical string  `json:"critical"`
	Status   Status  `json:"status"`
}

// below grades a value that should stay under the thresholds.
func below(v, target, critical float64) Status {
	switch {
	case v < target:
		return StatusPass
	case v < critical:
		return StatusWarn
	}
	return StatusFail
}

// above grades a value that should stay over the thresholds.
func above(v, target, critical float64) Status {
	switch {
	case v > target:
		return StatusPass
	case v > critical:
		return StatusWarn
	}
	return StatusFail
}

// CheckSLO grades a report against s. Latency rows are skipped when no
// request succeeded; the cache row when the server sent no X-Shoal-Cache
// hit or miss, or when every prompt was generated unique (no
// RepeatRatio), since such a run cannot hit the cache by design.
func CheckSLO(r Report, s SLO) []SLOResult {
	ms := func(v float64) string { return fmt.Sprintf("%.0fms", v) }
	pct := func(v float64) string { return fmt.Sprintf("%.1f%%", v*100) }
	rows := []SLOResult{
		{Name: "p95 latency", Value: r.Latency.P95, Display: ms(r.Latency.P95), Target: "<" + ms(s.P95TargetMs), Critical: "<" + ms(s.P95CriticalMs),
			Status: below(r.Latency.P95, s.P95TargetMs, s.P95CriticalMs)},
		{Name: "p99 latency", Value: r.Latency.P99, Display: ms(r.Latency.P99), Target: "<" + ms(s.P99TargetMs), Critical: "<" + ms(s.P99CriticalMs),
			Status: below(r.Latency.P99, s.P99TargetMs, s.P99CriticalMs)},
		{Name: "error rate", Value: r.ErrorRate, Display: pct(r.ErrorRate), Target: "<" + pct(s.ErrorRateTarget), Critical: "<" + pct(s.ErrorRateCritical),
			Status: below(r.ErrorRate, s.ErrorRateTarget, s.ErrorRateCritical)},
		{Name: "cache hit rate", Value: r.Cache.HitRatio, Display: pct(r.Cache.HitRatio), Target: ">" + pct(s.CacheHitTarget), Critical: ">" + pct(s.CacheHitCritical),
			Status: above(r.Cache.HitRatio, s.CacheHitTarget, s.CacheHitCritical)},
	}
	if r.OK == 0 {
		rows[0].Status, rows[1].Status = StatusSkip, StatusSkip
		rows[0].Display, rows[1].Display = "n/a", "n/a"
	}
	if r.Requests+r.Dropped == 0 {
		rows[2].Status, rows[2].Display = StatusSkip, "n/a"
	}
	switch {
	case r.Cache.Hits+r.Cache.Misses == 0:
		rows[3].Status, rows[3].Display = StatusSkip, "n/a (no X-Shoal-Cache hit/miss)"
	case r.Prompts == "generated" && r.RepeatRatio == 0:
		rows[3].Status, rows[3].Display = StatusSkip, "n/a (unique prompts; see --repeat-ratio)"
	}
	return rows
}

// Worst is the most severe verdict of rows (SKIP counts as PASS).
func Worst(rows []SLOResult) Status {
	worst := StatusPass
	for _, r := range rows {
		switch {
		case r.Status == StatusFail:
			return StatusFail
		case r.Status == StatusWarn:
			worst = StatusWarn
		}
	}
	return worst
}
