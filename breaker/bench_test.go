package breaker

import (
	"testing"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/internal/fakeclock"
)

// BenchmarkObserveBusy records successes at 10,000 requests a second, so
// the error-rate window holds RateWindow's worth of them (300,000): the
// cost of one outcome must not grow with the window. worst-us is the
// slowest single outcome, where a window that copies itself shows.
func BenchmarkObserveBusy(b *testing.B) {
	clock := fakeclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	r := &replicated{st: map[string]consensus.BreakerState{}}
	s := New(Config{Node: "n1", FailureThreshold: 3, Timeout: timeout, IsFailure: isFailure, State: r, Proposer: r,
		Go: func(f func()) { f() }, Clock: clock})
	step := 100 * time.Microsecond
	for i := 0; i < int(RateWindow/step); i++ {
		clock.Advance(step)
		s.Observe("m", nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var worst time.Duration
	for i := 0; i < b.N; i++ {
		clock.Advance(step)
		start := time.Now()
		s.Observe("m", nil)
		worst = max(worst, time.Since(start))
	}
	b.ReportMetric(float64(worst)/float64(time.Microsecond), "worst-us")
}
