package sim

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func draws(t *testing.T, cfg Config, n int) []time.Duration {
	t.Helper()
	b, err := New(cfg)
	require.NoError(t, err)
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = b.runCost(1)
	}
	return out
}

// TestJitter checks the lognormal factor: mean 1 (so base stays the mean
// cost), the spread its sigma gives, and one repeatable stream per seed.
func TestJitter(t *testing.T) {
	cfg := Config{Model: "m", Base: 100 * time.Millisecond, Jitter: 0.6, Seed: 3}
	d := draws(t, cfg, 20_000)
	var sum float64
	for _, v := range d {
		sum += float64(v)
	}
	mean := sum / float64(len(d))
	require.InDelta(t, 1, mean/float64(100*time.Millisecond), 0.03, "jitter must keep the mean cost")
	s := slices.Clone(d)
	slices.Sort(s)
	ratio := float64(s[len(s)*99/100]) / float64(s[len(s)/2])
	require.InDelta(t, math.Exp(2.326*0.6), ratio, 0.4, "p99/p50 of a lognormal with sigma 0.6")

	require.Equal(t, d[:100], draws(t, cfg, 100), "the same seed draws the same costs")
	other := cfg
	other.Seed = 4
	require.NotEqual(t, d[:100], draws(t, other, 100), "another seed draws others")
	byName := cfg
	byName.Seed = 0
	require.Equal(t, draws(t, byName, 100), draws(t, byName, 100), "seed 0 derives a fixed seed from the model")

	exact := cfg
	exact.Jitter = 0
	for _, v := range draws(t, exact, 10) {
		require.Equal(t, 100*time.Millisecond, v)
	}
}

func TestJitterValidate(t *testing.T) {
	for _, j := range []float64{-0.1, 2.5, math.NaN(), math.Inf(1)} {
		_, err := New(Config{Model: "m", Jitter: j})
		require.ErrorContains(t, err, "jitter", "jitter %g", j)
	}
	_, err := New(Config{Model: "m", Jitter: 2})
	require.NoError(t, err)
}
