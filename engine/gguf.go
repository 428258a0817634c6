package engine

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/shoal-dev/shoal/engine/kernels"
)

// GGUF is llama.cpp's model format: a header, typed metadata key/values,
// tensor descriptions, then aligned tensor data. The engine reads version
// 2 and 3 files of the llama architecture with a sentencepiece ("llama")
// tokenizer and F32, F16 or Q8_0 tensors.

const ggufMagic = "GGUF"

// GGUF metadata value types.
const (
	ggufUint8 = iota
	ggufInt8
	ggufUint16
	ggufInt16
	ggufUint32
	ggufInt32
	ggufFloat32
	ggufBool
	ggufString
	ggufArray
	ggufUint64
	ggufInt64
	ggufFloat64
)

// ggml tensor types the engine reads.
const (
	ggmlF32  = 0
	ggmlF16  = 1
	ggmlQ8_0 = 8
	// q8Block is a Q8_0 block on disk: a float16 scale and 32 int8.
	q8Block = 2 + kernels.GroupSize
)

// Limits that keep a corrupt file from making the parser allocate wildly.
const (
	ggufMaxDims    = 4
	ggufMaxDepth   = 3
	ggufMaxTensors = 1 << 16
)

// ggufTensor is one tensor's description and its bytes in the file.
type ggufTensor struct {
	typ  uint32
	dims []uint64
	data []byte // nil for types whose size the engine does not know
}

// ggufFile is a parsed GGUF header.
type ggufFile struct {
	version uint32
	meta    map[string]any // uint64, int64, float64, bool, string, []string, []float64
	tensors map[string]*ggufTensor
}

func isGGUF(b []byte) bool { return len(b) >= 4 && string(b[:4]) == ggufMagic }

type ggufReader struct {
	b   []byte
	off int
}

func (r *ggufReader) take(n uint64) ([]byte, error) {
	if n > uint64(len(r.b)-r.off) {
		return nil, fmt.Errorf("%w: need %d bytes at offset %d, file has %d", ErrTruncated, n, r.off, len(r.b))
	}
	s := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return s, nil
}

func (r *ggufReader) u32() (uint32, error) {
	b, err := r.take(4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (r *ggufReader) u64() (uint64, error) {
	b, err := r.take(8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (r *ggufReader) str() (string, error) {
	n, err := r.u64()
	if err != nil {
		return "", err
	}
	b, err := r.take(n)
	return string(b), err
}

// value reads one metadata value of type typ. Arrays of arrays are parsed
// (to find where they end) and dropped.
func (r *ggufReader) value(typ uint32, depth int) (any, error) {
	scalar := map[uint32]uint64{ggufUint8: 1, ggufInt8: 1, ggufBool: 1, ggufUint16: 2, ggufInt16: 2,
		ggufUint32: 4, ggufInt32: 4, ggufFloat32: 4, ggufUint64: 8, ggufInt64: 8, ggufFloat64: 8}
	if size, ok := scalar[typ]; ok {
		b, err := r.take(size)
		if err != nil {
			return nil, err
		}
		return decodeScalar(typ, b), nil
	}
	switch typ {
	case ggufString:
		return r.str()
	case ggufArray:
		if depth >= ggufMaxDepth {
			return nil, fmt.Errorf("%w: arrays nested deeper than %d", ErrBadGGUF, ggufMaxDepth)
		}
		et, err := r.u32()
		if err != nil {
			return nil, err
		}
		n, err := r.u64()
		if err != nil {
			return nil, err
		}
		// Every element takes at least one byte (a string at least eight),
		// so a count beyond the bytes left is corrupt.
		if n > uint64(len(r.b)-r.off) {
			return nil, fmt.Errorf("%w: array of %d elements with %d bytes left", ErrTruncated, n, len(r.b)-r.off)
		}
		switch {
		case et == ggufString:
			out := make([]string, 0, min(n, 1<<16))
			for i := uint64(0); i < n; i++ {
				s, err := r.str()
				if err != nil {
					return nil, err
				}
				out = append(out, s)
			}
			return out, nil
		case scalar[et] > 0:
			out := make([]float64, 0, min(n, 1<<16))
			for i := uint64(0); i < n; i++ {
				b, err := r.take(scalar[et])
				if err != nil {
					return nil, err
				}
				out = append(out, toFloat(decodeScalar(et, b)))
			}
			return out, nil
		case et == ggufArray:
			for i := uint64(0); i < n; i++ {
				if _, err := r.value(et, depth+1); err != nil {
					return nil, err
				}
			}
			return nil, nil
		}
		return nil, fmt.Errorf("%w: array of unknown type %d", ErrBadGGUF, et)
	}
	return nil, fmt.Errorf("%w: unknown metadata type %d", ErrBadGGUF, typ)
}

func decodeScalar(typ uint32, b []byte) any {
	switch typ {
	case ggufUint8:
		return uint64(b[0])
	case ggufInt8:
		return int64(int8(b[0]))
	case ggufBool:
		return b[0] != 0
	case ggufUint16:
		return uint64(binary.LittleEndian.Uint16(b))
	case ggufInt16:
		return int64(int16(binary.LittleEndian.Uint16(b)))
	case ggufUint32:
		return uint64(binary.LittleEndian.Uint32(b))
	case ggufInt32:
		return int64(int32(binary.LittleEndian.Uint32(b)))
	case ggufFloat32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b)))
	case ggufUint64:
		return binary.LittleEndian.Uint64(b)
	case ggufInt64:
		return int64(binary.LittleEndian.Uint64(b))
	}
	return math.Float64frombits(binary.LittleEndian.Uint64(b))
}

func toFloat(v any) float64 {
	switch x := v.(type) {
	case uint64:
		return float64(x)
	case int64:
		return float64(x)
	case float64:
		return x
	case bool:
		if x {
			return 1
		}
	}
	return 0
}

// parseGGUF reads a GGUF file's header and locates its tensors' bytes.
func parseGGUF(b []byte) (*ggufFile, error) {
	if !isGGUF(b) {
		return nil, fmt.Errorf("%w: no GGUF magic", ErrBadGGUF)
	}
	r := &ggufReader{b: b, off: 4}
	version, err := r.u32()
	if err != nil {
		return nil, err
	}
	if version != 2 && version != 3 {
		return nil, fmt.Errorf("%w: GGUF version %d (want 2 or 3)", ErrUnsupported, version)
	}
	nt, err := r.u64()
	if err != nil {
		return nil, err
	}
	nkv, err := r.u64()
	if err != nil {
		return nil, err
	}
	if nt > ggufMaxTensors || nkv > uint64(len(b)) {
		return nil, fmt.Errorf("%w: %d tensors, %d metadata entries", ErrBadGGUF, nt, nkv)
	}
	f := &ggufFile{version: version, meta: map[string]any{}, tensors: map[string]*ggufTensor{}}
	for i := uint64(0); i < nkv; i++ {
		key, err := r.str()
		if err != nil {
			return nil, err
		}
		typ, err := r.u32()
		if err != nil {
			return nil, err
		}
		v, err := r.value(typ, 0)
		if err != nil {
			return nil, fmt.Errorf("metadata %q: %w", key, err)
		}
		f.meta[key] = v
	}
	type info struct {
		name string
		t    *ggufTensor
		off  uint64
	}
	infos := make([]info, 0, nt)
	for i := uint64(0); i < nt; i++ {
		name, err := r.str()
		if err != nil {
			return nil, err
		}
		nd, err := r.u32()
		if err != nil {
			return nil, err
		}
		if nd == 0 || nd > ggufMaxDims {
			return nil, fmt.Errorf("%w: tensor %q has %d dimensions", ErrBadGGUF, name, nd)
		}
		t := &ggufTensor{dims: make([]uint64, nd)}
		for d := range t.dims {
			if t.dims[d], err = r.u64(); err != nil {
				return nil, err
			}
			if t.dims[d] == 0 || t.dims[d] > uint64(len(b)) {
				return nil, fmt.Errorf("%w: tensor %q dimension %d is %d", ErrBadGGUF, name, d, t.dims[d])
			}
		}
		if t.typ, err = r.u32(); err != nil {
			return nil, err
		}
		off, err := r.u64()
		if err != nil {
			return nil, err
		}
		if _, dup := f.tensors[name]; dup {
			return nil, fmt.Errorf("%w: tensor %q listed twice", ErrBadGGUF, name)
		}
		f.tensors[name] = t
		infos = append(infos, info{name, t, off})
	}
	align := uint64(32)
	if v, ok := f.meta["general.alignment"].(uint64); ok {
		if v == 0 || v&(v-1) != 0 || v > 1<<16 {
			return nil, fmt.Errorf("%w: alignment %d", ErrBadGGUF, v)
		}
		align = v
	}
	start := (uint64(r.off) + align - 1) &^ (align - 1)
	for _, in := range infos {
		size, known := tensorBytes(in.t)
		if !known {
			continue
		}
		if size < 0 {
			return nil, fmt.Errorf("%w: tensor %q: rows of %d are not whole Q8_0 blocks", ErrBadGGUF, in.name, in.t.dims[0])
		}
		if in.off%align != 0 {
			return nil, fmt.Errorf("%w: tensor %q at unaligned offset %d", ErrBadGGUF, in.name, in.off)
		}
		if in.off > uint64(len(b)) || start+in.off > uint64(len(b)) || uint64(size) > uint64(len(b))-start-in.off {
			return nil, fmt.Errorf("%w: tensor %q (%d bytes at %d) beyond the end of the file (%d bytes)", ErrTruncated, in.name, size, start+in.off, len(b))
		}
		in.t.data = b[start+in.off : start+in.off+uint64(size)]
	}
	return f, nil
}

// tensorBytes is the size of t's data, false for types the engine does not
// read, and -1 for a Q8_0 tensor whose rows are not whole blocks.
func tensorBytes(t *ggufTensor) (int64, bool) {
	n := uint64(1)
	for _, d := range t.dims {
		if n > math.MaxInt64/8/d {
			return 0, false
		}
		n *= d
	}
	switch t.typ {
	case ggmlF32:
		return int64(n * 4), true
	case ggmlF16:
		return int64(n * 2), true
	case ggmlQ8_0:
		if t.dims[0]%kernels.GroupSize != 0 {
			return -1, true
		}
		return int64(n / kernels.GroupSize * q8Block), true
	}
	return 0, false
}

func (f *ggufFile) int(key string) (int, bool) {
	switch v := f.meta[key].(type) {
	case uint64:
		if v <= math.MaxInt32 {
			return int(v), true
		}
	case int64:
		if v >= 0 && v <= math.MaxInt32 {
			return int(v), true
		}
	}
	return 0, false
}

func (f *ggufFile) float(key string, def float64) float64 {
	switch v := f.meta[key].(type) {
	case float64, uint64, int64:
		return toFloat(v)
	}
	return def
}

// ggufParams are the llama hyperparameters besides the shapes.
type ggufParams struct {
	ropeTheta float64
	normEps   float32
}

// config reads the llama shapes and hyperparameters.
func (f *ggufFile) config() (ModelConfig, ggufParams, error) {
	var c ModelConfig
	var p ggufParams
	if arch, _ := f.meta["general.architecture"].(string); arch != "llama" {
		return c, p, fmt.Errorf("%w: architecture %q (want llama)", ErrUnsupported, arch)
	}
	for _, k := range []struct {
		key string
		dst *int
	}{
		{"llama.embedding_length", &c.Dim},
		{"llama.feed_forward_length", &c.HiddenDim},
		{"llama.block_count", &c.Layers},
		{"llama.attention.head_count", &c.Heads},
		{"llama.context_length", &c.SeqLen},
	} {
		v, ok := f.int(k.key)
		if !ok {
			return c, p, fmt.Errorf("%w: metadata %s missing or not an integer", ErrBadGGUF, k.key)
		}
		*k.dst = v
	}
	c.KVHeads = c.Heads
	if v, ok := f.int("llama.attention.head_count_kv"); ok {
		c.KVHeads = v
	}
	emb, ok := f.tensors["token_embd.weight"]
	if !ok || len(emb.dims) != 2 {
		return c, p, fmt.Errorf("%w: no 2-D token_embd.weight", ErrBadGGUF)
	}
	c.Vocab = int(min(emb.dims[1], math.MaxInt32))
	_, hasOut := f.tensors["output.weight"]
	c.SharedClassifier = !hasOut
	c.SeqLen = min(c.SeqLen, maxSeqLen)
	if err := c.Validate(); err != nil {
		return c, p, err
	}
	if v, ok := f.int("llama.rope.dimension_count"); ok && v != c.HeadSize() {
		return c, p, fmt.Errorf("%w: RoPE over %d of %d head dimensions", ErrUnsupported, v, c.HeadSize())
	}
	p.ropeTheta = f.float("llama.rope.freq_base", llamaRopeTheta)
	p.normEps = float32(f.float("llama.attention.layer_norm_rms_epsilon", llamaNormEps))
	if !(p.ropeTheta > 1) || !(p.normEps > 0) {
		return c, p, fmt.Errorf("%w: rope base %g, norm epsilon %g", ErrBadGGUF, p.ropeTheta, p.normEps)
	}
	return c, p, nil
}

// f16to32 converts an IEEE half-precision value.
func f16to32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // inf, NaN
		return math.Float32frombits(sign | 0xff<<23 | man<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
	case man == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal half: normalise.
	e := uint32(113)
	for man&0x400 == 0 {
		man <<= 1
		e--
	}
	return math.Float32frombits(sign | e<<23 | (man&0x3ff)<<13)
}

// weightsFromGGUF builds a model from a parsed GGUF file. F32 matrices of
// an unquantized model alias the file; aliased reports whether any do.
func weightsFromGGUF(f *ggufFile, quantize bool) (w *weights, aliased bool, err error) {
	c, p, err := f.config()
	if err != nil {
		return nil, false, err
	}
	get := func(name string, dims ...int) (*ggufTensor, error) {
		t, ok := f.tensors[name]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %s missing", ErrBadGGUF, name)
		}
		if len(t.dims) != len(dims) {
			return nil, fmt.Errorf("%w: tensor %s has shape %v, want %v", ErrBadGGUF, name, t.dims, dims)
		}
		for i, d := range dims {
			if t.dims[i] != uint64(d) {
				return nil, fmt.Errorf("%w: tensor %s has shape %v, want %v", ErrBadGGUF, name, t.dims, dims)
			}
		}
		if t.data == nil {
			return nil, fmt.Errorf("%w: tensor %s has ggml type %d (want F32, F16 or Q8_0)", ErrUnsupported, name, t.typ)
		}
		return t, nil
	}
	floats := func(t *ggufTensor) []float32 {
		switch t.typ {
		case ggmlF32:
			return floatsOf(t.data)
		case ggmlF16:
			out := make([]float32, len(t.data)/2)
			for i := range out {
				out[i] = f16to32(binary.LittleEndian.Uint16(t.data[2*i:]))
			}
			return out
		}
		out := make([]float32, len(t.data)/q8Block*kernels.GroupSize)
		for g := 0; g < len(t.data)/q8Block; g++ {
			blk := t.data[g*q8Block : (g+1)*q8Block]
			d := f16to32(binary.LittleEndian.Uint16(blk))
			for i, q := range blk[2:] {
				out[g*kernels.GroupSize+i] = d * float32(int8(q))
			}
		}
		return out
	}
	vec := func(name string, n int) ([]float32, error) {
		t, err := get(name, n)
		if err != nil {
			return nil, err
		}
		return append([]float32(nil), floats(t)...), nil
	}
	mat := func(name string, rows, cols int) (matrix, error) {
		m := matrix{rows: rows, cols: cols}
		t, err := get(name, cols, rows)
		if err != nil {
			return m, err
		}
		switch {
		case quantize && t.typ == ggmlQ8_0:
			m.q = make([]kernels.Block, len(t.data)/q8Block)
			for g := range m.q {
				blk := t.data[g*q8Block : (g+1)*q8Block]
				m.q[g].D = f16to32(binary.LittleEndian.Uint16(blk))
				for i, q := range blk[2:] {
					// -128 would break the AVX2 kernel's sign trick.
					m.q[g].Q[i] = max(int8(q), -127)
				}
			}
		case quantize:
			fl := floats(t)
			g := kernels.Groups(cols)
			m.q = make([]kernels.Block, rows*g)
			for r := 0; r < rows; r++ {
				kernels.Quantize(m.q[r*g:(r+1)*g], fl[r*cols:(r+1)*cols])
			}
		default:
			m.f = floats(t)
			aliased = aliased || t.typ == ggmlF32 && len(m.f) > 0 && &m.f[0] == (*float32)(unsafePointer(t.data))
		}
		return m, nil
	}
	dim, hid, kv := c.Dim, c.HiddenDim, c.KVDim()
	w = &weights{cfg: c, quant: quantize, normEps: p.normEps, layers: make([]layerWeights, c.Layers)}
	if w.emb, err = mat("token_embd.weight", c.Vocab, dim); err != nil {
		return nil, false, err
	}
	for i := range w.layers {
		l := &w.layers[i]
		pre := fmt.Sprintf("blk.%d.", i)
		for _, v := range []struct {
			dst  *[]float32
			name string
		}{{&l.rmsAtt, "attn_norm.weight"}, {&l.rmsFFN, "ffn_norm.weight"}} {
			if *v.dst, err = vec(pre+v.name, dim); err != nil {
				return nil, false, err
			}
		}
		for _, m := range []struct {
			dst        *matrix
			name       string
			rows, cols int
		}{
			{&l.wq, "attn_q.weight", dim, dim}, {&l.wk, "attn_k.weight", kv, dim}, {&l.wv, "attn_v.weight", kv, dim},
			{&l.wo, "attn_output.weight", dim, dim}, {&l.w1, "ffn_gate.weight", hid, dim},
			{&l.w2, "ffn_down.weight", dim, hid}, {&l.w3, "ffn_up.weight", hid, dim},
		} {
			if *m.dst, err = mat(pre+m.name, m.rows, m.cols); err != nil {
				return nil, false, err
			}
		}
	}
	if w.rmsFinal, err = vec("output_norm.weight", dim); err != nil {
		return nil, false, err
	}
	if c.SharedClassifier {
		w.cls = &w.emb
	} else {
		cls, err := mat("output.weight", c.Vocab, dim)
		if err != nil {
			return nil, false, err
		}
		w.cls = &cls
	}
	w.ropeFreqs = ropeFreqs(c, p.ropeTheta)
	return w, aliased, nil
}

// tokenizer builds the file's sentencepiece vocabulary the way llama2.c's
// export does: "▁" becomes a space.
func (f *ggufFile) tokenizer() (*Tokenizer, error) {
	if m, _ := f.meta["tokenizer.ggml.model"].(string); m != "llama" {
		return nil, fmt.Errorf("%w: tokenizer %q (want llama, sentencepiece)", ErrUnsupported, m)
	}
	toks, ok := f.meta["tokenizer.ggml.tokens"].([]string)
	if !ok {
		return nil, fmt.Errorf("%w: no tokenizer.ggml.tokens", ErrBadGGUF)
	}
	for key, want := range map[string]int{"tokenizer.ggml.bos_token_id": TokenBOS, "tokenizer.ggml.eos_token_id": TokenEOS} {
		if v, ok := f.int(key); ok && v != want {
			return nil, fmt.Errorf("%w: %s is %d (the engine uses %d)", ErrUnsupported, key, v, want)
		}
	}
	scores := make([]float32, len(toks))
	if s, ok := f.meta["tokenizer.ggml.scores"].([]float64); ok {
		if len(s) != len(toks) {
			return nil, fmt.Errorf("%w: %d scores for %d tokens", ErrBadGGUF, len(s), len(toks))
		}
		for i, v := range s {
			scores[i] = float32(v)
		}
	}
	pieces := make([]string, len(toks))
	for i, t := range toks {
		pieces[i] = strings.ReplaceAll(t, "▁", " ")
	}
	return NewTokenizer(pieces, scores)
}
