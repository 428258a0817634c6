package engine

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/engine/kernels"
)

func kernelSets(t *testing.T) []kernels.Set {
	sets := []kernels.Set{kernels.Generic()}
	if s, ok := kernels.AVX2(); ok {
		sets = append(sets, s)
	} else {
		t.Log("no AVX2+FMA here: only the Go kernels are tested")
	}
	if s, ok := kernels.AVX512(); ok {
		sets = append(sets, s)
	}
	return sets
}

// newKV gives a sequence cache pages for n positions.
func newKV(c ModelConfig, n int) *kvSeq {
	kv := &kvSeq{}
	for len(kv.pages) < pagesFor(n) {
		kv.pages = append(kv.pages, make([]float32, c.Layers*2*kvPageTokens*c.KVDim()))
	}
	return kv
}

// engineLogits runs tokens through the engine, chunk tokens per forward
// pass, and returns the logits after every token.
func engineLogits(w *weights, k kernels.Set, threads int, tokens []int, chunk int) [][]float32 {
	p := newPool(threads)
	defer p.close()
	r := newRunner(w, k, p, chunk, chunk)
	kv := newKV(w.cfg, len(tokens))
	var out [][]float32
	for start := 0; start < len(tokens); start += chunk {
		var rows []row
		for i := start; i < min(start+chunk, len(tokens)); i++ {
			rows = append(rows, row{kv: kv, pos: i, token: tokens[i], logit: i - start})
		}
		r.forward(rows)
		for i := range rows {
			out = append(out, append([]float32(nil), r.logitsRow(i)...))
		}
	}
	return out
}

// The engine's logits match a direct transcription of run.c within 1e-4
// relative, with a one-layer and a two-layer model, shared and unshared
// classifiers, grouped-query attention, both kernel sets, one token per
// step or a whole prompt in one pass.
func TestForwardMatchesReference(t *testing.T) {
	vocab := tinyTokenizer(t).VocabSize()
	tokens := []int{1, 300, 5, 259, 42, 270, 280, 7, 100, 299, 3, 258, 261, 262, 263, 264, 265, 266, 267, 268}
	for _, layers := range []int{1, 2} {
		for _, shared := range []bool{false, true} {
			c := tinyConfig(vocab)
			c.Layers, c.SharedClassifier = layers, shared
			tt := randomTensors(c, uint64(10+layers))
			want := refForward(c, tt, tokens)
			ckpt, _ := writeModel(t, c, tt)
			w, err := loadWeights(ckpt, false)
			require.NoError(t, err)
			for _, k := range kernelSets(t) {
				for _, chunk := range []int{1, 7, len(tokens)} {
					got := engineLogits(w, k, 2, tokens, chunk)
					for pos := range tokens {
						requireLogitsClose(t, want[pos], got[pos], 1e-4,
							fmt.Sprintf("layers=%d shared=%v kernels=%s chunk=%d pos=%d", layers, shared, k.Name, chunk, pos))
					}
				}
			}
			require.NoError(t, w.close())
		}
	}
}

// The result of a row is bit-identical however the prompt was chunked:
// continuous batching must not change a sequence's output.
func TestForwardIsIndependentOfChunking(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	tt := randomTensors(c, 20)
	w := weightsFromFloats(c, floatsOf(checkpointBytes(c, tt)[headerSize:]), false)
	tokens := []int{1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51}
	for _, k := range kernelSets(t) {
		one := engineLogits(w, k, 1, tokens, 1)
		for _, chunk := range []int{2, 5, len(tokens)} {
			require.Equal(t, one, engineLogits(w, k, 2, tokens, chunk), "%s chunk %d", k.Name, chunk)
		}
	}
}

// int8 weights and activations (Q8_0, groups of 32) keep logits within 4%
// rms and 10% max of the float32 logits' spread (random Gaussian weights,
// a hard case for per-group scales), and the greedy choice mostly the same.
func TestInt8LogitsCloseToFloat32(t *testing.T) {
	c := ModelConfig{Dim: 64, HiddenDim: 96, Layers: 2, Heads: 4, KVHeads: 2, Vocab: tinyTokenizer(t).VocabSize(), SeqLen: 32}
	tt := randomTensors(c, 21)
	data := checkpointBytes(c, tt)
	wf := weightsFromFloats(c, floatsOf(data[headerSize:]), false)
	wq := weightsFromFloats(c, floatsOf(data[headerSize:]), true)
	require.NotNil(t, wq.layers[0].wq.q)
	tokens := []int{1, 300, 280, 270, 260, 290, 295, 5, 6, 7, 8, 9}
	for _, k := range kernelSets(t) {
		f := engineLogits(wf, k, 2, tokens, 4)
		q := engineLogits(wq, k, 2, tokens, 4)
		same := 0
		for pos := range tokens {
			requireInt8Close(t, f[pos], q[pos], fmt.Sprintf("%s pos %d", k.Name, pos))
			if argmax(f[pos]) == argmax(q[pos]) {
				same++
			}
		}
		require.GreaterOrEqual(t, same, len(tokens)*3/4, k.Name)
	}
}

// requireInt8Close bounds int8 logits against float32 ones: error within 4%
// rms and 10% max of the float32 logits' spread.
func requireInt8Close(t *testing.T, f, q []float32, msg string) {
	t.Helper()
	var maxDiff, mean, sq, dsq float64
	for i := range f {
		d := float64(f[i] - q[i])
		maxDiff = max(maxDiff, math.Abs(d))
		dsq += d * d
		mean += float64(f[i])
		sq += float64(f[i]) * float64(f[i])
	}
	n := float64(len(f))
	std := math.Sqrt(sq/n - (mean/n)*(mean/n))
	rms := math.Sqrt(dsq / n)
	require.Less(t, rms, 0.04*std, "%s: int8 logits off by %g rms, spread %g", msg, rms, std)
	require.Less(t, maxDiff, 0.10*std, "%s: int8 logits off by %g, spread %g", msg, maxDiff, std)
}

func TestInt8MatchesAcrossKernels(t *testing.T) {
	sets := kernelSets(t)
	if len(sets) < 2 {
		t.Skip("needs AVX2")
	}
	c := ModelConfig{Dim: 64, HiddenDim: 96, Layers: 1, Heads: 4, KVHeads: 4, Vocab: 300, SeqLen: 16}
	tt := randomTensors(c, 22)
	wq := weightsFromFloats(c, floatsOf(checkpointBytes(c, tt)[headerSize:]), true)
	tokens := []int{1, 200, 100, 50}
	a := engineLogits(wq, sets[0], 1, tokens, 2)
	b := engineLogits(wq, sets[1], 1, tokens, 2)
	for pos := range tokens {
		requireLogitsClose(t, a[pos], b[pos], 1e-3, fmt.Sprintf("pos %d", pos))
	}
}

// The pool runs every item exactly once per phase, phase after phase, with
// workers that may wake late.
func TestPoolRunsEveryItemOncePerPhase(t *testing.T) {
	p := newPool(3)
	defer p.close()
	for phase := 0; phase < 2000; phase++ {
		items := 1 + phase%17
		counts := make([]int32, items)
		p.run(items, func(_, i int) {
			counts[i]++ // one claimant per item, so no race
		})
		for i, c := range counts {
			require.Equal(t, int32(1), c, "phase %d item %d", phase, i)
		}
	}
}
