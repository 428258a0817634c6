package engine

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/engine/kernels"
)

// The generator is run.c's random_u32; these values come from the same
// formula evaluated outside Go.
func TestSamplerRandomMatchesRunCXorshift(t *testing.T) {
	var s sampler
	s.reset(1, 0, 42)
	for _, want := range []uint32{1456360119, 3359763283, 3393612768, 4054632243} {
		require.Equal(t, want, s.randomU32())
	}
}

func TestSamplerZeroSeedStillRandom(t *testing.T) {
	var s sampler
	s.reset(1, 0, 0)
	require.NotEqual(t, s.randomU32(), s.randomU32())
}

func TestGreedyPicksFirstMaximum(t *testing.T) {
	k := kernels.Best()
	var s sampler
	s.reset(0, 0.9, 5)
	require.Equal(t, 2, s.sample([]float32{1, 3, 7, 7, -1}, &k))
}

func TestTopPSamplesOnlyFromNucleus(t *testing.T) {
	k := kernels.Best()
	var s sampler
	s.reset(1, 0.7, 9)
	seen := map[int]int{}
	for i := 0; i < 2000; i++ {
		// log-probabilities of 0.5, 0.3, 0.15, 0.05
		seen[s.sample([]float32{-0.693, -1.204, -1.897, -2.996}, &k)]++
	}
	require.Len(t, seen, 2, "cumulative 0.5+0.3 passes 0.7, so only tokens 0 and 1: %v", seen)
	require.InDelta(t, 0.5/0.8, float64(seen[0])/2000, 0.05)
}

func TestMultinomialFollowsProbabilities(t *testing.T) {
	k := kernels.Best()
	var s sampler
	s.reset(1, 1, 11)
	counts := make([]int, 3)
	for i := 0; i < 4000; i++ {
		counts[s.sample([]float32{0, -0.693, -1.386}, &k)]++ // 4:2:1
	}
	require.InDelta(t, 4.0/7, float64(counts[0])/4000, 0.04)
	require.InDelta(t, 1.0/7, float64(counts[2])/4000, 0.03)
}

func TestSamplerSurvivesNaNLogits(t *testing.T) {
	nan := float32(0)
	nan /= nan
	k := kernels.Best()
	for _, temp := range []float64{0, 1} {
		var s sampler
		s.reset(temp, 0.9, 1)
		id := s.sample([]float32{nan, 1, nan}, &k)
		require.True(t, id >= 0 && id < 3)
	}
}
