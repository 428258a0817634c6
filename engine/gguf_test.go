package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/engine/kernels"
	"github.com/shoal-dev/shoal/scheduler"
)

// toHalf rounds a float32 to IEEE half precision (nearest even), written
// here independently of the engine's decoder.
func toHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23&0xff) - 127 + 15
	man := b & 0x7fffff
	switch {
	case exp >= 31:
		return sign | 0x7c00
	case exp <= 0:
		if exp < -10 {
			return sign
		}
		man |= 0x800000
		shift := uint32(14 - exp)
		h := man >> shift
		rem := man & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && h&1 == 1 {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(exp)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
		h++
	}
	return sign | uint16(h)
}

func fromHalf(h uint16) float32 {
	sign := float32(1)
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	man := float64(h & 0x3ff)
	if exp == 0 {
		return sign * float32(man/1024*math.Pow(2, -14))
	}
	return sign * float32((1+man/1024)*math.Pow(2, float64(exp-15)))
}

// encodeTensor writes rows of cols values as ggml type typ and returns
// what the values become after the round trip.
func encodeTensor(buf *bytes.Buffer, v []float32, cols int, typ uint32) []float32 {
	out := make([]float32, len(v))
	switch typ {
	case ggmlF32:
		_ = binary.Write(buf, binary.LittleEndian, v)
		copy(out, v)
	case ggmlF16:
		for i, x := range v {
			h := toHalf(x)
			_ = binary.Write(buf, binary.LittleEndian, h)
			out[i] = fromHalf(h)
		}
	case ggmlQ8_0:
		for g := 0; g < len(v); g += 32 {
			var amax float32
			for _, x := range v[g : g+32] {
				amax = max(amax, float32(math.Abs(float64(x))))
			}
			d := amax / 127
			id := float32(0)
			if d != 0 {
				id = 1 / d
			}
			h := toHalf(d)
			_ = binary.Write(buf, binary.LittleEndian, h)
			for i, x := range v[g : g+32] {
				q := int8(math.Round(float64(x * id)))
				buf.WriteByte(byte(q))
				out[g+i] = fromHalf(h) * float32(q)
			}
		}
	}
	return out
}

type ggufKV struct {
	key string
	val any // uint32, float32, string, []string, []float32
}

// ggufBytes writes the test tensors as a llama GGUF file with matrices of
// type typ (norms stay F32) and returns the file and the tensors as the
// file holds them.
func ggufBytes(c ModelConfig, tt *testTensors, typ uint32, meta []ggufKV) ([]byte, *testTensors) {
	type tensor struct {
		name string
		dims []uint64
		v    []float32
		typ  uint32
		dst  *[]float32
	}
	back := &testTensors{}
	d, h, kv := c.Dim, c.HiddenDim, c.KVDim()
	var ts []tensor
	add := func(name string, v []float32, cols, rows int, dst *[]float32) {
		ty := typ
		if rows == 1 {
			ty = ggmlF32
		}
		dims := []uint64{uint64(cols), uint64(rows)}
		if rows == 1 {
			dims = dims[:1]
		}
		ts = append(ts, tensor{name, dims, v, ty, dst})
	}
	back.rmsAtt = make([]float32, len(tt.rmsAtt))
	back.rmsFFN = make([]float32, len(tt.rmsFFN))
	back.wq, back.wk, back.wv, back.wo = make([]float32, len(tt.wq)), make([]float32, len(tt.wk)), make([]float32, len(tt.wv)), make([]float32, len(tt.wo))
	back.w1, back.w2, back.w3 = make([]float32, len(tt.w1)), make([]float32, len(tt.w2)), make([]float32, len(tt.w3))
	add("token_embd.weight", tt.emb, d, c.Vocab, &back.emb)
	add("output_norm.weight", tt.rmsFinal, d, 1, &back.rmsFinal)
	if !c.SharedClassifier {
		add("output.weight", tt.cls, d, c.Vocab, &back.cls)
	}
	per := func(dst, src []float32, n, l int) ([]float32, []float32) {
		return dst[l*n : (l+1)*n], src[l*n : (l+1)*n]
	}
	layerDst := map[string][]float32{}
	for l := 0; l < c.Layers; l++ {
		for _, m := range []struct {
			name       string
			dst, src   []float32
			cols, rows int
		}{
			{"attn_norm.weight", back.rmsAtt, tt.rmsAtt, d, 1}, {"ffn_norm.weight", back.rmsFFN, tt.rmsFFN, d, 1},
			{"attn_q.weight", back.wq, tt.wq, d, d}, {"attn_k.weight", back.wk, tt.wk, d, kv}, {"attn_v.weight", back.wv, tt.wv, d, kv},
			{"attn_output.weight", back.wo, tt.wo, d, d}, {"ffn_gate.weight", back.w1, tt.w1, d, h},
			{"ffn_down.weight", back.w2, tt.w2, h, d}, {"ffn_up.weight", back.w3, tt.w3, d, h},
		} {
			dst, src := per(m.dst, m.src, m.cols*m.rows, l)
			name := fmt.Sprintf("blk.%d.%s", l, m.name)
			layerDst[name] = dst
			add(name, src, m.cols, m.rows, nil)
		}
	}
	var hdr, data bytes.Buffer
	str := func(b *bytes.Buffer, s string) {
		_ = binary.Write(b, binary.LittleEndian, uint64(len(s)))
		b.WriteString(s)
	}
	hdr.WriteString("GGUF")
	_ = binary.Write(&hdr, binary.LittleEndian, uint32(3))
	_ = binary.Write(&hdr, binary.LittleEndian, uint64(len(ts)))
	_ = binary.Write(&hdr, binary.LittleEndian, uint64(len(meta)))
	for _, kv := range meta {
		str(&hdr, kv.key)
		switch v := kv.val.(type) {
		case uint32:
			_ = binary.Write(&hdr, binary.LittleEndian, uint32(ggufUint32))
			_ = binary.Write(&hdr, binary.LittleEndian, v)
		case float32:
			_ = binary.Write(&hdr, binary.LittleEndian, uint32(ggufFloat32))
			_ = binary.Write(&hdr, binary.LittleEndian, v)
		case string:
			_ = binary.Write(&hdr, binary.LittleEndian, uint32(ggufString))
			str(&hdr, v)
		case []string:
			_ = binary.Write(&hdr, binary.LittleEndian, uint32(ggufArray))
			_ = binary.Write(&hdr, binary.LittleEndian, uint32(ggufString))
			_ = binary.Write(&hdr, binary.LittleEndian, uint64(len(v)))
			for _, s := range v {
				str(&hdr, s)
			}
		case []float32:
			_ = binary.Write(&hdr, binary.LittleEndian, uint32(ggufArray))
			_ = binary.Write(&hdr, binary.LittleEndian, uint32(ggufFloat32))
			_ = binary.Write(&hdr, binary.LittleEndian, uint64(len(v)))
			_ = binary.Write(&hdr, binary.LittleEndian, v)
		}
	}
	for _, t := range ts {
		for data.Len()%32 != 0 {
			data.WriteByte(0)
		}
		str(&hdr, t.name)
		_ = binary.Write(&hdr, binary.LittleEndian, uint32(len(t.dims)))
		_ = binary.Write(&hdr, binary.LittleEndian, t.dims)
		_ = binary.Write(&hdr, binary.LittleEndian, t.typ)
		_ = binary.Write(&hdr, binary.LittleEndian, uint64(data.Len()))
		got := encodeTensor(&data, t.v, int(t.dims[0]), t.typ)
		if t.dst != nil {
			*t.dst = got
		} else {
			copy(layerDst[t.name], got)
		}
	}
	for hdr.Len()%32 != 0 {
		hdr.WriteByte(0)
	}
	if c.SharedClassifier {
		back.cls = back.emb
	}
	return append(hdr.Bytes(), data.Bytes()...), back
}

func llamaMeta(c ModelConfig) []ggufKV {
	p, s := tinyPieces()
	return llamaMetaVocab(c, p, s)
}

func llamaMetaVocab(c ModelConfig, p []string, s []float32) []ggufKV {
	toks := make([]string, len(p))
	for i, x := range p {
		toks[i] = strings.ReplaceAll(x, " ", "▁")
	}
	return []ggufKV{
		{"general.architecture", "llama"},
		{"llama.embedding_length", uint32(c.Dim)},
		{"llama.feed_forward_length", uint32(c.HiddenDim)},
		{"llama.block_count", uint32(c.Layers)},
		{"llama.attention.head_count", uint32(c.Heads)},
		{"llama.attention.head_count_kv", uint32(c.KVHeads)},
		{"llama.context_length", uint32(c.SeqLen)},
		{"llama.attention.layer_norm_rms_epsilon", float32(1e-5)},
		{"llama.rope.freq_base", float32(10000)},
		{"tokenizer.ggml.model", "llama"},
		{"tokenizer.ggml.tokens", toks},
		{"tokenizer.ggml.scores", s},
		{"tokenizer.ggml.bos_token_id", uint32(1)},
		{"tokenizer.ggml.eos_token_id", uint32(2)},
	}
}

// ggufConfig has rows that are whole Q8_0 blocks (dim and hidden multiples
// of 32) and grouped-query attention.
func ggufConfig(t testing.TB) ModelConfig {
	return ModelConfig{Dim: 64, HiddenDim: 96, Layers: 2, Heads: 4, KVHeads: 2, Vocab: tinyTokenizer(t).VocabSize(), SeqLen: 32}
}

func writeGGUF(t testing.TB, data []byte) string {
	path := filepath.Join(t.TempDir(), "model.gguf")
	require.NoError(t, os.WriteFile(path, data, 0o644))
	return path
}

var ggufTokens = []int{1, 300, 5, 259, 42, 270, 280, 7, 100}

func TestGGUFF32LoadsLikeTheLlama2cCheckpoint(t *testing.T) {
	for _, shared := range []bool{false, true} {
		c := ggufConfig(t)
		c.SharedClassifier = shared
		tt := randomTensors(c, 31)
		data, _ := ggufBytes(c, tt, ggmlF32, llamaMeta(c))
		w, tok, err := loadModel(writeGGUF(t, data), "", false)
		require.NoError(t, err)
		require.Equal(t, c, w.cfg)
		require.NotNil(t, w.release, "F32 weights are used in place")
		ref := weightsFromFloats(c, floatsOf(checkpointBytes(c, tt)[headerSize:]), false)
		k := kernels.Best()
		require.Equal(t, engineLogits(ref, k, 1, ggufTokens, 3), engineLogits(w, k, 1, ggufTokens, 3), "shared=%v", shared)
		require.Equal(t, tinyTokenizer(t).pieces, tok.pieces, "▁ becomes a space")
		require.NoError(t, w.close())
	}
}

func TestGGUFF16AndQ8_0MatchReference(t *testing.T) {
	c := ggufConfig(t)
	tt := randomTensors(c, 32)
	for _, typ := range []uint32{ggmlF16, ggmlQ8_0} {
		data, back := ggufBytes(c, tt, typ, llamaMeta(c))
		back.freqs = tt.freqs
		want := refForward(c, back, ggufTokens)
		w, _, err := loadModel(writeGGUF(t, data), "", false)
		require.NoError(t, err)
		require.Nil(t, w.release, "converted weights do not keep the file mapped")
		got := engineLogits(w, kernels.Best(), 2, ggufTokens, 4)
		for pos := range ggufTokens {
			requireLogitsClose(t, want[pos], got[pos], 1e-4, fmt.Sprintf("type %d pos %d", typ, pos))
		}
	}
}

func TestGGUFQ8_0StaysQuantizedWithInt8(t *testing.T) {
	c := ggufConfig(t)
	tt := randomTensors(c, 33)
	data, back := ggufBytes(c, tt, ggmlQ8_0, llamaMeta(c))
	w, _, err := loadModel(writeGGUF(t, data), "", true)
	require.NoError(t, err)
	// The file's blocks are used as they are: dequantizing them gives the
	// values the file holds.
	got := make([]float32, c.KVDim()*c.Dim)
	kernels.Dequantize(got, w.layers[1].wk.q)
	require.Equal(t, back.wk[c.KVDim()*c.Dim:], got)
	// And the int8 model agrees with the float model of the same file.
	wf, _, err := loadModel(writeGGUF(t, data), "", false)
	require.NoError(t, err)
	q := engineLogits(w, kernels.Best(), 1, ggufTokens, 4)
	f := engineLogits(wf, kernels.Best(), 1, ggufTokens, 4)
	for pos := range ggufTokens {
		requireInt8Close(t, f[pos], q[pos], fmt.Sprintf("pos %d", pos))
	}
}

func TestNewServesGGUFWithItsOwnTokenizer(t *testing.T) {
	c := ggufConfig(t)
	data, _ := ggufBytes(c, endlessTensors(c, 34), ggmlQ8_0, llamaMeta(c))
	b, err := New(context.Background(), Config{Checkpoint: writeGGUF(t, data), Quantize: "int8"})
	require.NoError(t, err)
	defer func() { require.NoError(t, b.Close()) }()
	task := newTask(context.Background(), "hello world", scheduler.Params{MaxTokens: 10, Temperature: 1, Seed: seed(1)})
	require.True(t, b.Admit(task))
	res, err := outcome(t, task)
	require.NoError(t, err)
	require.Equal(t, 10, res.CompletionTokens)
	require.Equal(t, 3, res.PromptTokens, "<s> hello world")
}

func TestInspectGGUF(t *testing.T) {
	c := ggufConfig(t)
	data, _ := ggufBytes(c, randomTensors(c, 35), ggmlF16, llamaMeta(c))
	info, err := Inspect(writeGGUF(t, data))
	require.NoError(t, err)
	require.Equal(t, c, info.ModelConfig)
	require.Equal(t, int64(len(data)), info.FileBytes)
	require.Equal(t, c.Params(), info.Params)
}

func TestGGUFRejectsBadFiles(t *testing.T) {
	c := ggufConfig(t)
	tt := randomTensors(c, 36)
	meta := func(key string, val any) []ggufKV {
		m := llamaMeta(c)
		for i := range m {
			if m[i].key == key {
				m[i].val = val
			}
		}
		return m
	}
	good, _ := ggufBytes(c, tt, ggmlF32, llamaMeta(c))
	badVersion := append([]byte(nil), good...)
	binary.LittleEndian.PutUint32(badVersion[4:], 1)
	gpt2, _ := ggufBytes(c, tt, ggmlF32, meta("general.architecture", "gpt2"))
	wrongDim, _ := ggufBytes(c, tt, ggmlF32, meta("llama.embedding_length", uint32(32)))
	bpe, _ := ggufBytes(c, tt, ggmlF32, meta("tokenizer.ggml.model", "gpt2"))
	q4 := bytes.Replace(good, []byte("blk.0.attn_q.weight\x02\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
		[]byte("blk.0.attn_q.weight\x02\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00"), 1)
	require.NotEqual(t, good, q4, "the test must find the tensor's type field")
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"truncated data", good[:len(good)-5], ErrTruncated},
		{"truncated header", good[:100], ErrTruncated},
		{"version 1", badVersion, ErrUnsupported},
		{"gpt2 architecture", gpt2, ErrUnsupported},
		{"shape mismatch", wrongDim, ErrBadGGUF},
		{"bpe tokenizer", bpe, ErrUnsupported},
		{"Q4_0 tensor", q4, ErrUnsupported},
	}
	for _, tc := range cases {
		_, _, err := loadModel(writeGGUF(t, tc.data), "", false)
		require.ErrorIs(t, err, tc.want, tc.name)
	}
}

func TestHalfConversion(t *testing.T) {
	for _, f := range []float32{0, 1, -2.5, 65504, 6.1035156e-05, 5.9604645e-08, 3.0517578e-05, -0.333251953125} {
		require.Equal(t, fromHalf(toHalf(f)), f16to32(toHalf(f)), "%g", f)
	}
	require.True(t, math.IsInf(float64(f16to32(0x7c00)), 1))
	require.True(t, math.IsNaN(float64(f16to32(0x7e00))))
}

func FuzzParseGGUF(f *testing.F) {
	// Small seeds: Go's fuzzer minimizes every new input for up to
	// -fuzzminimizetime (60s by default), which is slow for large inputs;
	// run with e.g. -fuzzminimizetime=2s.
	pieces := []string{"<unk>", "<s>", "</s>", " ", "a", "b", " a", "ab"}
	scores := []float32{0, 0, 0, -1, -2, -3, -4, -5}
	c := ModelConfig{Dim: 32, HiddenDim: 32, Layers: 1, Heads: 2, KVHeads: 1, Vocab: len(pieces), SeqLen: 4}
	for _, typ := range []uint32{ggmlF16, ggmlQ8_0} {
		data, _ := ggufBytes(c, randomTensors(c, 1), typ, llamaMetaVocab(c, pieces, scores))
		f.Add(data)
	}
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := parseGGUF(data)
		if err != nil {
			return
		}
		w, _, err := weightsFromGGUF(g, len(data)%2 == 0)
		if err == nil {
			require.NoError(t, w.cfg.Validate())
		}
		if tok, err := g.tokenizer(); err == nil {
			tok.Encode("hello \xff world", true, false)
		}
	})
}
