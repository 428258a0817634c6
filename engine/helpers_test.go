package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
)

// tinyPieces is a small vocabulary with run.c's conventions: <unk>, <s>,
// </s>, the byte tokens at 3..258, then pieces whose scores drive merges.
func tinyPieces() ([]string, []float32) {
	pieces := []string{"<unk>", "\n<s>\n", "\n</s>\n"}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, fmt.Sprintf("<0x%02X>", b))
	}
	scores := make([]float32, len(pieces))
	extra := []string{
		" ", "a", "b", "c", "d", "e", "h", "l", "o", "r", "w", "t", "s", "i", "n", ".", ",", "!", "é", "日", "本",
		"he", "ll", "hell", "hello", " h", " he", " hel", " hell", " hello",
		" w", " wo", " wor", " worl", " world", "wo", "or", "orl", "world",
		" t", " th", " the", "th", "the", "in", "ing", " a", " c", " ca", " cat",
		"at", " s", " sa", " sat", ".\n", "日本",
	}
	for i, p := range extra {
		pieces = append(pieces, p)
		scores = append(scores, -float32(i))
	}
	return pieces, scores
}

func tinyTokenizer(t testing.TB) *Tokenizer {
	t.Helper()
	p, s := tinyPieces()
	tok, err := NewTokenizer(p, s)
	require.NoError(t, err)
	return tok
}

// testTensors lists a model's tensors in llama2.c's export order, written
// out here independently of the engine's layout code.
type testTensors struct {
	emb, rmsAtt, wq, wk, wv, wo, rmsFFN, w1, w2, w3, rmsFinal, freqs, cls []float32
}

func (tt *testTensors) all() [][]float32 {
	return [][]float32{tt.emb, tt.rmsAtt, tt.wq, tt.wk, tt.wv, tt.wo, tt.rmsFFN, tt.w1, tt.w2, tt.w3, tt.rmsFinal, tt.freqs, tt.cls}
}

// randomTensors draws weights of shape c with unit-ish activations, and
// fills the legacy RoPE tables with garbage the loader must skip.
func randomTensors(c ModelConfig, seed uint64) *testTensors {
	r := rand.New(rand.NewPCG(seed, 99))
	vec := func(n int, std, mean float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(mean + r.NormFloat64()*std)
		}
		return v
	}
	d, h, L, kv := c.Dim, c.HiddenDim, c.Layers, c.KVDim()
	tt := &testTensors{
		emb:      vec(c.Vocab*d, 1, 0),
		rmsAtt:   vec(L*d, 0.2, 1),
		wq:       vec(L*d*d, 1/math.Sqrt(float64(d)), 0),
		wk:       vec(L*d*kv, 1/math.Sqrt(float64(d)), 0),
		wv:       vec(L*d*kv, 1/math.Sqrt(float64(d)), 0),
		wo:       vec(L*d*d, 1/math.Sqrt(float64(d)), 0),
		rmsFFN:   vec(L*d, 0.2, 1),
		w1:       vec(L*d*h, 1/math.Sqrt(float64(d)), 0),
		w2:       vec(L*h*d, 1/math.Sqrt(float64(h)), 0),
		w3:       vec(L*d*h, 1/math.Sqrt(float64(d)), 0),
		rmsFinal: vec(d, 0.2, 1),
		freqs:    vec(c.SeqLen*c.HeadSize(), 100, 50),
	}
	if c.SharedClassifier {
		tt.cls = tt.emb
	} else {
		tt.cls = vec(c.Vocab*d, 1, 0)
	}
	return tt
}

// checkpointBytes encodes a checkpoint by hand: seven int32, negative vocab
// for an unshared classifier, then the tensors.
func checkpointBytes(c ModelConfig, tt *testTensors) []byte {
	var buf bytes.Buffer
	vocab := int32(c.Vocab)
	if !c.SharedClassifier {
		vocab = -vocab
	}
	for _, v := range []int32{int32(c.Dim), int32(c.HiddenDim), int32(c.Layers), int32(c.Heads), int32(c.KVHeads), vocab, int32(c.SeqLen)} {
		_ = binary.Write(&buf, binary.LittleEndian, v)
	}
	for i, t := range tt.all() {
		if i == 12 && c.SharedClassifier {
			break
		}
		_ = binary.Write(&buf, binary.LittleEndian, t)
	}
	return buf.Bytes()
}

func tokenizerBytes(t testing.TB, tok *Tokenizer) []byte {
	var buf bytes.Buffer
	_, err := tok.WriteTo(&buf)
	require.NoError(t, err)
	return buf.Bytes()
}

// tinyConfig is a small model with grouped-query attention and sizes that
// exercise the kernels' tails (dim 20, head size 10, hidden 36).
func tinyConfig(vocab int) ModelConfig {
	return ModelConfig{Dim: 20, HiddenDim: 36, Layers: 2, Heads: 2, KVHeads: 1, Vocab: vocab, SeqLen: 64}
}

// writeModel writes a checkpoint and the tiny tokenizer into a new
// directory and returns their paths.
func writeModel(t testing.TB, c ModelConfig, tt *testTensors) (ckpt, tokPath string) {
	t.Helper()
	dir := t.TempDir()
	ckpt = filepath.Join(dir, "model.bin")
	tokPath = filepath.Join(dir, "tokenizer.bin")
	require.NoError(t, os.WriteFile(ckpt, checkpointBytes(c, tt), 0o644))
	require.NoError(t, os.WriteFile(tokPath, tokenizerBytes(t, tinyTokenizer(t)), 0o644))
	return ckpt, tokPath
}

// refForward is a direct transcription of llama2.c run.c's forward for one
// sequence, in float32 with sequential sums, returning the logits after
// each token. It shares no code with the engine.
func refForward(c ModelConfig, tt *testTensors, tokens []int) [][]float32 {
	d, hd, kvDim, hs := c.Dim, c.HiddenDim, c.Dim*c.KVHeads/c.Heads, c.Dim/c.Heads
	kvMul := c.Heads / c.KVHeads
	keyCache := make([]float32, c.Layers*c.SeqLen*kvDim)
	valCache := make([]float32, c.Layers*c.SeqLen*kvDim)
	matmul := func(out, x, w []float32, n, dd int) {
		for i := 0; i < dd; i++ {
			var v float32
			for j := 0; j < n; j++ {
				v += w[i*n+j] * x[j]
			}
			out[i] = v
		}
	}
	rms := func(o, x, w []float32) {
		var ss float32
		for _, v := range x {
			ss += v * v
		}
		ss /= float32(len(x))
		ss += 1e-5
		ss = 1 / float32(math.Sqrt(float64(ss)))
		for j := range x {
			o[j] = w[j] * (ss * x[j])
		}
	}
	smax := func(x []float32) {
		m := x[0]
		for _, v := range x {
			m = max(m, v)
		}
		var s float32
		for i := range x {
			x[i] = float32(math.Exp(float64(x[i] - m)))
			s += x[i]
		}
		for i := range x {
			x[i] /= s
		}
	}
	var out [][]float32
	for pos, token := range tokens {
		x := append([]float32(nil), tt.emb[token*d:(token+1)*d]...)
		xb := make([]float32, d)
		xb2 := make([]float32, d)
		q := make([]float32, d)
		hb := make([]float32, hd)
		hb2 := make([]float32, hd)
		for l := 0; l < c.Layers; l++ {
			rms(xb, x, tt.rmsAtt[l*d:])
			loff := l * c.SeqLen * kvDim
			k := keyCache[loff+pos*kvDim : loff+(pos+1)*kvDim]
			v := valCache[loff+pos*kvDim : loff+(pos+1)*kvDim]
			matmul(q, xb, tt.wq[l*d*d:], d, d)
			matmul(k, xb, tt.wk[l*d*kvDim:], d, kvDim)
			matmul(v, xb, tt.wv[l*d*kvDim:], d, kvDim)
			for i := 0; i < d; i += 2 {
				headDim := i % hs
				freq := 1 / float32(math.Pow(10000, float64(float32(headDim)/float32(hs))))
				val := float32(pos) * freq
				fcr, fci := float32(math.Cos(float64(val))), float32(math.Sin(float64(val)))
				rotn := 1
				if i < kvDim {
					rotn = 2
				}
				for vi := 0; vi < rotn; vi++ {
					vec := q
					if vi == 1 {
						vec = k
					}
					v0, v1 := vec[i], vec[i+1]
					vec[i] = v0*fcr - v1*fci
					vec[i+1] = v0*fci + v1*fcr
				}
			}
			for h := 0; h < c.Heads; h++ {
				qh := q[h*hs : (h+1)*hs]
				att := make([]float32, pos+1)
				for t := 0; t <= pos; t++ {
					kt := keyCache[loff+t*kvDim+(h/kvMul)*hs:]
					var score float32
					for i := 0; i < hs; i++ {
						score += qh[i] * kt[i]
					}
					att[t] = score / float32(math.Sqrt(float64(hs)))
				}
				smax(att)
				xbh := xb[h*hs : (h+1)*hs]
				clear(xbh)
				for t := 0; t <= pos; t++ {
					vt := valCache[loff+t*kvDim+(h/kvMul)*hs:]
					for i := 0; i < hs; i++ {
						xbh[i] += att[t] * vt[i]
					}
				}
			}
			matmul(xb2, xb, tt.wo[l*d*d:], d, d)
			for i := range x {
				x[i] += xb2[i]
			}
			rms(xb, x, tt.rmsFFN[l*d:])
			matmul(hb, xb, tt.w1[l*d*hd:], d, hd)
			matmul(hb2, xb, tt.w3[l*d*hd:], d, hd)
			for i := range hb {
				val := hb[i]
				val *= 1 / (1 + float32(math.Exp(float64(-val))))
				hb[i] = val * hb2[i]
			}
			matmul(xb, hb, tt.w2[l*d*hd:], hd, d)
			for i := range x {
				x[i] += xb[i]
			}
		}
		rms(x, x, tt.rmsFinal)
		logits := make([]float32, c.Vocab)
		matmul(logits, x, tt.cls, d, c.Vocab)
		out = append(out, logits)
	}
	return out
}

// requireLogitsClose compares logits with a relative tolerance; logits
// near zero are compared against the largest logit's scale instead.
func requireLogitsClose(t *testing.T, want, got []float32, rel float64, msg string) {
	t.Helper()
	require.Len(t, got, len(want))
	var scale float64
	for _, v := range want {
		scale = max(scale, math.Abs(float64(v)))
	}
	for i := range want {
		tol := rel * max(math.Abs(float64(want[i])), 0.1*scale)
		if d := math.Abs(float64(want[i] - got[i])); d > tol {
			t.Fatalf("%s: logit %d: want %g got %g (diff %g > %g)", msg, i, want[i], got[i], d, tol)
		}
	}
}

// newTestBackend serves a model written by the test.
func newTestBackend(t testing.TB, c ModelConfig, tt *testTensors, cfg Config) *Backend {
	t.Helper()
	cfg.Checkpoint, cfg.Tokenizer = writeModel(t, c, tt)
	b, err := New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

// newTask is a streamed completion, so its tokens can be read as chunks.
func newTask(ctx context.Context, prompt string, p scheduler.Params) *scheduler.Task {
	return scheduler.NewTask(ctx, &scheduler.Request{ID: prompt, Endpoint: scheduler.EndpointCompletion, Prompt: prompt, Params: p, Stream: true})
}

func seed(v int64) *int64 { return &v }

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// outcome waits for a task to finish and returns its result.
func outcome(t testing.TB, task *scheduler.Task) (scheduler.Result, error) {
	t.Helper()
	select {
	case <-task.Done():
	case <-time.After(60 * time.Second):
		t.Fatalf("task %s did not finish", task.Request().ID)
	}
	return task.Outcome()
}
