package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/shoal-dev/shoal/engine/kernels"
)

// GenOptions shape a synthetic model made by GenerateModel.
type GenOptions struct {
	Dim       int
	HiddenDim int
	Layers    int
	Heads     int
	// KVHeads 0 means Heads (no grouped-query attention).
	KVHeads int
	// Vocab is the vocabulary size; at least minGenVocab.
	Vocab  int
	SeqLen int
	// Seed makes the weights; the same options give the same files.
	Seed int64
}

// minGenVocab holds the special and byte tokens, single characters and a
// few hundred words.
const minGenVocab = 512

// defaultGenSeed is the seed of the built-in model.
const defaultGenSeed = 0x5140a1

// DefaultGenOptions are the built-in model's options: the shapes of
// llama2.c's stories15M (dim 288, hidden 768, 6 layers, 6 heads, context
// 256) with a 4096-piece word vocabulary.
func DefaultGenOptions() GenOptions {
	return GenOptions{Dim: 288, HiddenDim: 768, Layers: 6, Heads: 6, KVHeads: 6, Vocab: 4096, SeqLen: 256, Seed: defaultGenSeed}
}

func (o GenOptions) modelConfig() (ModelConfig, error) {
	kv := o.KVHeads
	if kv == 0 {
		kv = o.Heads
	}
	c := ModelConfig{Dim: o.Dim, HiddenDim: o.HiddenDim, Layers: o.Layers, Heads: o.Heads, KVHeads: kv, Vocab: o.Vocab, SeqLen: o.SeqLen}
	if o.Vocab < minGenVocab {
		return c, fmt.Errorf("%w: vocab %d below %d", ErrInvalidConfig, o.Vocab, minGenVocab)
	}
	if o.Dim < 2 {
		return c, fmt.Errorf("%w: dim %d below 2", ErrInvalidConfig, o.Dim)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return c, nil
}

// GenerateModel writes dir/model.bin and dir/tokenizer.bin: a llama2.c
// checkpoint with random weights and a vocabulary of English words, pieces
// of them, single characters and the 256 byte tokens. The weights are
// random, so the text means nothing, but the output layer is shaped so that
// generation picks whole words, favouring common ones, with punctuation
// between them. Files are written atomically.
func GenerateModel(dir string, opts GenOptions) error {
	c, err := opts.modelConfig()
	if err != nil {
		return err
	}
	pieces, scores, kinds := buildVocab(c.Vocab)
	tok, err := NewTokenizer(pieces, scores)
	if err != nil {
		return fmt.Errorf("generate model: %w", err)
	}
	floats := genWeights(c, kinds, opts.Seed)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("generate model: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, defaultCheckpointName), func(f *os.File) error {
		return writeCheckpoint(f, c, floats)
	}); err != nil {
		return fmt.Errorf("generate model: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, defaultTokenizerName), func(f *os.File) error {
		_, err := tok.WriteTo(f)
		return err
	}); err != nil {
		return fmt.Errorf("generate model: %w", err)
	}
	return nil
}

func writeAtomic(path string, write func(*os.File) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ensureDefaultModel returns the built-in model's paths under dir,
// generating the files when either is missing.
func ensureDefaultModel(ctx context.Context, dir string, log *slog.Logger) (ckpt, tok string, err error) {
	ckpt = filepath.Join(dir, defaultCheckpointName)
	tok = filepath.Join(dir, defaultTokenizerName)
	_, e1 := os.Stat(ckpt)
	_, e2 := os.Stat(tok)
	if e1 == nil && e2 == nil {
		return ckpt, tok, nil
	}
	for _, e := range []error{e1, e2} {
		if e != nil && !errors.Is(e, fs.ErrNotExist) {
			return "", "", fmt.Errorf("default model: %w", e)
		}
	}
	if err := ctx.Err(); err != nil {
		return "", "", fmt.Errorf("default model: %w", err)
	}
	log.Info("generating the built-in synthetic model", "dir", dir)
	if err := GenerateModel(dir, DefaultGenOptions()); err != nil {
		return "", "", fmt.Errorf("default model in %s: %w", dir, err)
	}
	return ckpt, tok, nil
}

// tokenKind classifies vocabulary pieces for shaping the output layer.
type tokenKind uint8

const (
	kindSpecial tokenKind = iota // <unk>, <s>, </s>
	kindByte                     // <0x00>..<0xFF>
	kindChar                     // one letter, digit or space
	kindPunct                    // . , ! ? and newline
	kindPrefix                   // part of a word, only there for merges
	kindWord                     // " word": a word after a space
	kindBare                     // "word" without its space
	kindCap                      // " Word": capitalised
	kindPhrase                   // " word word": two words
)

// buildVocab makes the built-in vocabulary of exactly size pieces (size >=
// minGenVocab). Merge scores fall with each added piece, and every word's
// prefixes come before it, so run.c's merging assembles whole words.
func buildVocab(size int) (pieces []string, scores []float32, kinds []tokenKind) {
	seen := map[string]bool{}
	add := func(p string, k tokenKind, score float32) {
		if seen[p] || len(pieces) >= size {
			return
		}
		seen[p] = true
		pieces = append(pieces, p)
		scores = append(scores, score)
		kinds = append(kinds, k)
	}
	add("<unk>", kindSpecial, 0)
	add("\n<s>\n", kindSpecial, 0)
	add("\n</s>\n", kindSpecial, 0)
	for b := 0; b < 256; b++ {
		add(fmt.Sprintf("<0x%02X>", b), kindByte, 0)
	}
	add(" ", kindChar, 0)
	for _, p := range strings.Split(".,!?\n", "") {
		add(p, kindPunct, 0)
	}
	chars := "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'\"-:;()"
	for _, r := range chars {
		add(string(r), kindChar, 0)
	}
	words := dedupe(strings.Fields(defaultWords))
	caps := map[string]bool{}
	for _, w := range strings.Fields(defaultCapitalised) {
		caps[w] = true
	}
	wordKind := map[string]tokenKind{}
	for _, w := range words {
		wordKind[" "+w] = kindWord
		if _, ok := wordKind[w]; !ok {
			wordKind[w] = kindBare
		}
		if caps[w] {
			W := strings.ToUpper(w[:1]) + w[1:]
			wordKind[" "+W] = kindCap
			if _, ok := wordKind[W]; !ok {
				wordKind[W] = kindBare
			}
		}
	}
	addWithPrefixes := func(p string) {
		for n := 2; n <= len(p); n++ {
			k, ok := wordKind[p[:n]]
			if !ok {
				k = kindPrefix
			}
			add(p[:n], k, -float32(len(pieces)))
		}
	}
	for _, w := range words {
		addWithPrefixes(" " + w)
		addWithPrefixes(w)
		if caps[w] {
			W := strings.ToUpper(w[:1]) + w[1:]
			addWithPrefixes(" " + W)
			addWithPrefixes(W)
		}
	}
	// Pad with two-word phrases of common words; " a"+" b" merge directly.
	top := words[:min(len(words), 64)]
	for i := 0; len(pieces) < size && i < len(top)*len(top); i++ {
		add(" "+top[i/len(top)]+" "+top[i%len(top)], kindPhrase, -float32(len(pieces)))
	}
	for n := 0; len(pieces) < size; n++ {
		add(fmt.Sprintf("<extra_%d>", n), kindSpecial, 0)
	}
	return pieces, scores, kinds
}

func dedupe(words []string) []string {
	seen := map[string]bool{}
	out := words[:0]
	for _, w := range words {
		if !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	return out
}

// tokenBiases is each token's preferred logit, before context: words by a
// Zipf law on their rank, punctuation at fixed shares of the text, and
// pieces, bytes and special tokens far below so they are (almost) never
// generated.
func tokenBiases(kinds []tokenKind, pieces []string) []float32 {
	bias := make([]float32, len(kinds))
	rank := 0
	var z float64
	for i, k := range kinds {
		switch k {
		case kindWord:
			bias[i] = float32(-0.9 * math.Log(float64(rank+2)))
			rank++
			z += math.Exp(float64(bias[i]))
		case kindCap:
			bias[i] = float32(-0.9*math.Log(float64(rank+2)) - 3)
		case kindPhrase:
			bias[i] = float32(-0.9*math.Log(float64(rank+2)) - 2)
		case kindBare:
			bias[i] = -9
		case kindChar, kindPrefix:
			bias[i] = -14
		default:
			bias[i] = -30
		}
	}
	share := map[string]float64{".": 0.07, ",": 0.04, "!": 0.006, "?": 0.005, "\n": 0.004}
	for i, k := range kinds {
		if k == kindPunct {
			bias[i] = float32(math.Log(share[pieces[i]] * z))
		}
	}
	return bias
}

// genWeights draws the model's weights. The embedding's first dimension is
// a large constant that the attention and FFN norms ignore (their weight
// there is 0) and no layer writes to (those output rows are 0), so after
// the final norm it is a steady signal; the classifier's first column turns
// it into each token's bias from tokenBiases. The other dimensions are
// random and give the context-dependent part of the logits, scaled to a
// fixed spread measured by running the model on a few tokens.
func genWeights(c ModelConfig, kinds []tokenKind, seed int64) []float32 {
	c.SharedClassifier = false
	lo := c.layout()
	fl := make([]float32, lo.total)
	rng := rand.New(rand.NewPCG(uint64(seed), 0x9E3779B97F4A7C15))
	dim, hid, kvd, voc := c.Dim, c.HiddenDim, c.KVDim(), c.Vocab
	normal := func(dst []float32, std float64) {
		for i := range dst {
			dst[i] = float32(rng.NormFloat64() * std)
		}
	}
	constant := 2 * math.Sqrt(float64(dim))
	emb := fl[lo.emb : lo.emb+int64(voc*dim)]
	normal(emb, 1)
	for t := 0; t < voc; t++ {
		emb[t*dim] = float32(constant)
	}
	mat := func(off int64, l, rows, cols int, gain float64, zeroRow0 bool) {
		m := fl[off+int64(l*rows*cols) : off+int64((l+1)*rows*cols)]
		normal(m, gain/math.Sqrt(float64(cols)))
		if zeroRow0 {
			clear(m[:cols])
		}
	}
	for l := 0; l < c.Layers; l++ {
		for _, off := range []int64{lo.rmsAtt, lo.rmsFFN} {
			v := fl[off+int64(l*dim) : off+int64((l+1)*dim)]
			for i := range v {
				v[i] = 1
			}
			v[0] = 0
		}
		mat(lo.wq, l, dim, dim, 3, false)
		mat(lo.wk, l, kvd, dim, 3, false)
		mat(lo.wv, l, kvd, dim, 2, false)
		mat(lo.wo, l, dim, dim, 1, true)
		mat(lo.w1, l, hid, dim, 2, false)
		mat(lo.w3, l, hid, dim, 2, false)
		mat(lo.w2, l, dim, hid, 1.5, true)
	}
	final := fl[lo.rmsFinal : lo.rmsFinal+int64(dim)]
	for i := range final {
		final[i] = 1
	}
	// The RoPE tables old exports carry, which loaders skip, stay zero.
	cls := fl[lo.cls : lo.cls+int64(voc*dim)]
	normal(cls, 1)
	for t := 0; t < voc; t++ {
		cls[t*dim] = 0
	}
	steady, spread := calibrate(c, fl)
	pieces, _, _ := buildVocab(voc)
	bias := tokenBiases(kinds, pieces)
	// Context moves logits by about 2, against bias gaps of about 1 between
	// common words and 10+ to non-words.
	scale := float32(2 / spread)
	for t := 0; t < voc; t++ {
		row := cls[t*dim : (t+1)*dim]
		for i := 1; i < dim; i++ {
			row[i] *= scale
		}
		row[0] = bias[t] / float32(steady)
	}
	return fl
}

// calibrate runs the model on a few tokens and returns the mean of the
// final norm's first dimension and the spread (standard deviation) of the
// logits it gives, both rounded to three significant digits so that
// floating-point differences between machines do not change the weights.
func calibrate(c ModelConfig, fl []float32) (steady, spread float64) {
	const n = 16
	w := weightsFromFloats(c, fl, false)
	p := newPool(1)
	defer p.close()
	r := newRunner(w, kernels.Generic(), p, n, n)
	kv := &kvSeq{}
	for len(kv.pages) < pagesFor(n) {
		kv.pages = append(kv.pages, make([]float32, c.Layers*2*kvPageTokens*c.KVDim()))
	}
	rows := make([]row, n)
	for i := range rows {
		rows[i] = row{kv: kv, pos: i, token: byteTokenBase + 256 + i*37%(c.Vocab-byteTokenBase-256), logit: i}
	}
	r.forward(rows)
	var sum, sq float64
	for i := 0; i < n; i++ {
		steady += float64(r.xl[i*c.Dim])
		for _, v := range r.logitsRow(i) {
			sum += float64(v)
			sq += float64(v) * float64(v)
		}
	}
	steady /= n
	cnt := float64(n * c.Vocab)
	spread = math.Sqrt(max(sq/cnt-(sum/cnt)*(sum/cnt), 1e-12))
	return round3(steady), round3(spread)
}

func round3(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(math.Abs(v)))-2)
	return math.Round(v/e) * e
}
