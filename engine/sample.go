package engine

import (
	"sort"

	"github.com/shoal-dev/shoal/engine/kernels"
)

// zeroSeedState replaces a zero seed: xorshift never leaves state 0.
const zeroSeedState = 0x9E3779B97F4A7C15

// sampler picks the next token from logits like run.c's Sampler: argmax at
// temperature 0, otherwise softmax(logits/temperature) and a multinomial
// draw, restricted to the top-p nucleus when 0 < topP < 1. It draws from
// run.c's xorshift generator, so a seed gives run.c's choices.
type sampler struct {
	temperature float32
	topP        float32
	rng         uint64
	cand        []probIndex
}

type probIndex struct {
	prob  float32
	index int
}

func (s *sampler) reset(temperature, topP float64, seed uint64) {
	s.temperature = float32(max(temperature, 0))
	s.topP = float32(topP)
	s.rng = seed
	if s.rng == 0 {
		s.rng = zeroSeedState
	}
}

func (s *sampler) randomU32() uint32 {
	s.rng ^= s.rng >> 12
	s.rng ^= s.rng << 25
	s.rng ^= s.rng >> 27
	return uint32((s.rng * 0x2545F4914F6CDD1D) >> 32)
}

// randomF32 is a float in [0,1).
func (s *sampler) randomF32() float32 { return float32(s.randomU32()>>8) / 16777216.0 }

// sample picks a token; it overwrites logits.
func (s *sampler) sample(logits []float32, k *kernels.Set) int {
	if s.temperature == 0 {
		return argmax(logits)
	}
	for i := range logits {
		logits[i] /= s.temperature
	}
	softmax(logits, k)
	coin := s.randomF32()
	if s.topP <= 0 || s.topP >= 1 {
		return sampleMult(logits, coin)
	}
	return s.sampleTopP(logits, coin)
}

// argmax returns the first index of the largest value.
func argmax(v []float32) int {
	best, bi := v[0], 0
	for i, x := range v[1:] {
		if x > best {
			best, bi = x, i+1
		}
	}
	return bi
}

// softmax normalises x in place as run.c does, with the kernels' exp.
func softmax(x []float32, k *kernels.Set) {
	m := x[0]
	for _, v := range x[1:] {
		if v > m {
			m = v
		}
	}
	sum := k.ExpSum(x, x, m)
	for i := range x {
		x[i] /= sum
	}
}

func sampleMult(p []float32, coin float32) int {
	var cdf float32
	for i, v := range p {
		cdf += v
		if coin < cdf {
			return i
		}
	}
	return len(p) - 1
}

// sampleTopP samples from the smallest set of tokens whose probabilities
// exceed topP, skipping tokens below (1-topP)/(n-1) first, as run.c does.
// Ties sort by index so the choice is deterministic.
func (s *sampler) sampleTopP(p []float32, coin float32) int {
	n := len(p)
	cutoff := (1 - s.topP) / float32(max(n-1, 1))
	s.cand = s.cand[:0]
	for i, v := range p {
		if v >= cutoff {
			s.cand = append(s.cand, probIndex{v, i})
		}
	}
	if len(s.cand) == 0 {
		return argmax(p)
	}
	sort.Slice(s.cand, func(a, b int) bool {
		if s.cand[a].prob != s.cand[b].prob {
			return s.cand[a].prob > s.cand[b].prob
		}
		return s.cand[a].index < s.cand[b].index
	})
	var cum float32
	last := len(s.cand) - 1
	for i, c := range s.cand {
		cum += c.prob
		if cum > s.topP {
			last = i
			break
		}
	}
	r := coin * cum
	var cdf float32
	for _, c := range s.cand[:last+1] {
		cdf += c.prob
		if r < cdf {
			return c.index
		}
	}
	return s.cand[last].index
}
