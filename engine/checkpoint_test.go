package engine

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoadReadsShapesAndTensorsInLlama2cOrder(t *testing.T) {
	for _, shared := range []bool{true, false} {
		c := tinyConfig(tinyTokenizer(t).VocabSize())
		c.SharedClassifier = shared
		tt := randomTensors(c, 1)
		ckpt, _ := writeModel(t, c, tt)
		w, err := loadWeights(ckpt, false)
		require.NoError(t, err)
		require.Equal(t, c, w.cfg)
		require.Len(t, w.layers, c.Layers)
		d, h, kv := c.Dim, c.HiddenDim, c.KVDim()
		require.Equal(t, tt.emb, w.emb.f)
		l := w.layers[1]
		require.Equal(t, tt.rmsAtt[d:2*d], l.rmsAtt)
		require.Equal(t, tt.wk[d*kv:2*d*kv], l.wk.f)
		require.Equal(t, kv, l.wk.rows)
		require.Equal(t, tt.w2[h*d:2*h*d], l.w2.f)
		require.Equal(t, h, l.w2.cols)
		require.Equal(t, tt.rmsFinal, w.rmsFinal)
		require.Equal(t, tt.cls, w.cls.f, "classifier (shared=%v) must skip the legacy RoPE tables", shared)
		require.NoError(t, w.close())
	}
}

func TestInspectReportsShapesAndMemory(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	tt := randomTensors(c, 2)
	ckpt, _ := writeModel(t, c, tt)
	info, err := Inspect(ckpt)
	require.NoError(t, err)
	require.Equal(t, c, info.ModelConfig)
	var params int64
	for i, x := range tt.all() {
		if i != 11 { // the RoPE tables are not parameters
			params += int64(len(x))
		}
	}
	require.Equal(t, params, info.Params)
	require.Equal(t, 4*params, info.FP32Bytes)
	st, err := os.Stat(ckpt)
	require.NoError(t, err)
	require.Equal(t, st.Size(), info.FileBytes)
	require.Equal(t, int64(c.Layers*c.SeqLen*c.KVDim()*2*4), info.KVBytesPerSeq)
	require.Less(t, info.Int8Bytes, info.FP32Bytes/2)
}

func TestInt8WeightsAreAboutAQuarterOfFloat32(t *testing.T) {
	info := infoFor(ModelConfig{Dim: 288, HiddenDim: 768, Layers: 6, Heads: 6, KVHeads: 6, Vocab: 32000, SeqLen: 256, SharedClassifier: true})
	ratio := float64(info.FP32Bytes) / float64(info.Int8Bytes)
	require.InDelta(t, 3.55, ratio, 0.05, "Q8_0 with group 32 stores 36 bytes per 32 weights")
}

func TestLoadRejectsTruncatedFile(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	data := checkpointBytes(c, randomTensors(c, 3))
	path := filepath.Join(t.TempDir(), "m.bin")
	for _, n := range []int{0, 10, headerSize, len(data) - 1} {
		require.NoError(t, os.WriteFile(path, data[:n], 0o644))
		_, err := loadWeights(path, false)
		require.ErrorIs(t, err, ErrTruncated, "length %d", n)
		_, err = Inspect(path)
		require.ErrorIs(t, err, ErrTruncated, "inspect length %d", n)
	}
}

func TestLoadRejectsFileLargerThanHeader(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	data := checkpointBytes(c, randomTensors(c, 4))
	path := filepath.Join(t.TempDir(), "m.bin")
	require.NoError(t, os.WriteFile(path, append(data, 0, 0, 0, 0), 0o644))
	_, err := loadWeights(path, false)
	require.ErrorIs(t, err, ErrSizeMismatch)
	// A header that claims a smaller model than the file holds.
	binary.LittleEndian.PutUint32(data[8:], 1) // n_layers 2 -> 1
	require.NoError(t, os.WriteFile(path, data, 0o644))
	_, err = loadWeights(path, false)
	require.ErrorIs(t, err, ErrSizeMismatch)
}

func TestParseHeaderRejectsImpossibleShapes(t *testing.T) {
	good := tinyConfig(300)
	cases := map[string]func(*ModelConfig){
		"zero dim":            func(c *ModelConfig) { c.Dim = 0 },
		"heads not dividing":  func(c *ModelConfig) { c.Heads = 3 },
		"odd head size":       func(c *ModelConfig) { c.Dim, c.Heads, c.KVHeads = 18, 6, 6 },
		"kv heads not divide": func(c *ModelConfig) { c.Heads, c.KVHeads = 2, 3 },
		"zero seq len":        func(c *ModelConfig) { c.SeqLen = 0 },
		"huge vocab":          func(c *ModelConfig) { c.Vocab = 1 << 30 },
		"negative layers":     func(c *ModelConfig) { c.Layers = -1 },
	}
	for name, mut := range cases {
		c := good
		mut(&c)
		_, err := parseHeader(c.appendHeader(nil))
		require.ErrorIs(t, err, ErrBadHeader, name)
	}
	c, err := parseHeader(good.appendHeader(nil))
	require.NoError(t, err)
	require.Equal(t, good, c)
}

func TestReadTokenizerRejectsVocabMismatch(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	_, tokPath := writeModel(t, c, randomTensors(c, 5))
	_, err := ReadTokenizer(tokPath, c.Vocab+1)
	require.ErrorIs(t, err, ErrVocabMismatch)
	tok, err := ReadTokenizer(tokPath, c.Vocab)
	require.NoError(t, err)
	require.Equal(t, c.Vocab, tok.VocabSize())
}

func TestNewRejectsTokenizerOfAnotherModel(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize() + 7)
	ckpt, tokPath := writeModel(t, c, randomTensors(c, 6))
	_, err := New(t.Context(), Config{Checkpoint: ckpt, Tokenizer: tokPath})
	require.ErrorIs(t, err, ErrVocabMismatch)
}

func FuzzParseCheckpoint(f *testing.F) {
	c := ModelConfig{Dim: 4, HiddenDim: 6, Layers: 1, Heads: 2, KVHeads: 1, Vocab: 5, SeqLen: 3}
	f.Add(checkpointBytes(c, randomTensors(c, 1)))
	c.SharedClassifier = true
	f.Add(checkpointBytes(c, randomTensors(c, 2)))
	f.Add([]byte{})
	f.Add(make([]byte, headerSize))
	f.Add(ModelConfig{Dim: 1 << 16, HiddenDim: 1 << 20, Layers: 4096, Heads: 1, KVHeads: 1, Vocab: 1 << 24, SeqLen: 1 << 24}.appendHeader(nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		w, err := weightsFromBytes(data, len(data)%2 == 0)
		if err != nil {
			return
		}
		// A checkpoint that loads has exactly its header's size and a
		// valid shape, and its weights can run.
		require.Equal(t, w.cfg.FileSize(), int64(len(data)))
		require.NoError(t, w.cfg.Validate())
		if w.cfg.Vocab >= 3 && w.cfg.Dim*w.cfg.HiddenDim < 1<<16 {
			out := make([]float32, w.cfg.Dim)
			w.embedding(out, w.cfg.Vocab-1)
		}
	})
}
