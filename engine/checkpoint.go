package engine

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"unsafe"

	"github.com/shoal-dev/shoal/engine/kernels"
)

// headerSize is the size of a llama2.c legacy (version 0) checkpoint
// header: seven little-endian int32.
const headerSize = 7 * 4

// Limits on header fields. They are far above any llama2.c model and keep
// size arithmetic from overflowing on a hostile or corrupt header.
const (
	maxDim    = 1 << 16
	maxHidden = 1 << 20
	maxLayers = 1 << 12
	maxVocab  = 1 << 24
	maxSeqLen = 1 << 24
)

// ModelConfig is the shape of a Llama-architecture model, as a llama2.c
// checkpoint header describes it.
type ModelConfig struct {
	Dim       int `json:"dim"`        // transformer width
	HiddenDim int `json:"hidden_dim"` // feed-forward width
	Layers    int `json:"n_layers"`
	Heads     int `json:"n_heads"`    // query heads
	KVHeads   int `json:"n_kv_heads"` // key/value heads; fewer than Heads is grouped-query attention
	Vocab     int `json:"vocab_size"`
	SeqLen    int `json:"seq_len"` // longest context, in tokens
	// SharedClassifier is true when the output layer reuses the token
	// embedding table (a positive vocab_size in the header).
	SharedClassifier bool `json:"shared_classifier"`
}

// HeadSize is the width of one attention head.
func (c ModelConfig) HeadSize() int { return c.Dim / c.Heads }

// KVDim is the width of one position's keys (and of its values).
func (c ModelConfig) KVDim() int { return c.Dim * c.KVHeads / c.Heads }

// Validate reports impossible or unsupported shapes as ErrBadHeader.
func (c ModelConfig) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadHeader, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Dim <= 0 || c.Dim > maxDim:
		return bad("dim %d outside 1..%d", c.Dim, maxDim)
	case c.HiddenDim <= 0 || c.HiddenDim > maxHidden:
		return bad("hidden_dim %d outside 1..%d", c.HiddenDim, maxHidden)
	case c.Layers <= 0 || c.Layers > maxLayers:
		return bad("n_layers %d outside 1..%d", c.Layers, maxLayers)
	case c.Heads <= 0 || c.Heads > c.Dim || c.Dim%c.Heads != 0:
		return bad("n_heads %d does not divide dim %d", c.Heads, c.Dim)
	case c.HeadSize()%2 != 0:
		return bad("head size %d is odd; RoPE rotates pairs", c.HeadSize())
	case c.KVHeads <= 0 || c.KVHeads > c.Heads || c.Heads%c.KVHeads != 0:
		return bad("n_kv_heads %d does not divide n_heads %d", c.KVHeads, c.Heads)
	case c.Vocab <= 0 || c.Vocab > maxVocab:
		return bad("vocab_size %d outside 1..%d", c.Vocab, maxVocab)
	case c.SeqLen <= 0 || c.SeqLen > maxSeqLen:
		return bad("seq_len %d outside 1..%d", c.SeqLen, maxSeqLen)
	}
	return nil
}

// parseHeader decodes and validates a checkpoint header.
func parseHeader(b []byte) (ModelConfig, error) {
	if len(b) < headerSize {
		return ModelConfig{}, fmt.Errorf("%w: %d bytes, header needs %d", ErrTruncated, len(b), headerSize)
	}
	var v [7]int32
	for i := range v {
		v[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	c := ModelConfig{
		Dim: int(v[0]), HiddenDim: int(v[1]), Layers: int(v[2]), Heads: int(v[3]),
		KVHeads: int(v[4]), Vocab: int(v[5]), SeqLen: int(v[6]), SharedClassifier: v[5] > 0,
	}
	if c.Vocab < 0 {
		c.Vocab = -c.Vocab
	}
	return c, c.Validate()
}

// appendHeader encodes c as a checkpoint header.
func (c ModelConfig) appendHeader(b []byte) []byte {
	vocab := c.Vocab
	if !c.SharedClassifier {
		vocab = -vocab
	}
	for _, v := range []int{c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KVHeads, vocab, c.SeqLen} {
		b = binary.LittleEndian.AppendUint32(b, uint32(int32(v)))
	}
	return b
}

// layout gives each tensor's offset, in float32s after the header, in
// llama2.c's order. RoPE tables that old exports still carry (freq_cis_real
// and freq_cis_imag) sit between rmsFinal and cls and are skipped, as run.c
// skips them.
type layout struct {
	emb, rmsAtt, wq, wk, wv, wo, rmsFFN, w1, w2, w3, rmsFinal, cls int64
	total                                                          int64
}

func (c ModelConfig) layout() layout {
	dim, hid, nl := int64(c.Dim), int64(c.HiddenDim), int64(c.Layers)
	kv, voc, hs := int64(c.KVDim()), int64(c.Vocab), int64(c.HeadSize())
	var l layout
	off := int64(0)
	next := func(n int64) int64 { o := off; off += n; return o }
	l.emb = next(voc * dim)
	l.rmsAtt = next(nl * dim)
	l.wq = next(nl * dim * dim)
	l.wk = next(nl * dim * kv)
	l.wv = next(nl * dim * kv)
	l.wo = next(nl * dim * dim)
	l.rmsFFN = next(nl * dim)
	l.w1 = next(nl * dim * hid)
	l.w2 = next(nl * hid * dim)
	l.w3 = next(nl * dim * hid)
	l.rmsFinal = next(dim)
	next(int64(c.SeqLen) * hs) // freq_cis_real and freq_cis_imag, seq_len*head_size/2 each
	if c.SharedClassifier {
		l.cls = l.emb
	} else {
		l.cls = next(voc * dim)
	}
	l.total = off
	return l
}

// FileSize is the exact size in bytes of a checkpoint with this shape.
func (c ModelConfig) FileSize() int64 { return headerSize + 4*c.layout().total }

// Params counts the model's weights (the skipped RoPE tables excluded, a
// shared classifier counted once).
func (c ModelConfig) Params() int64 {
	return c.layout().total - int64(c.SeqLen)*int64(c.HeadSize())
}

// int8Bytes is the weight memory with quantize="int8": every matrix in Q8
// blocks, the RMSNorm vectors in float32.
func (c ModelConfig) int8Bytes() int64 {
	dim, hid, nl := int64(c.Dim), int64(c.HiddenDim), int64(c.Layers)
	kv, voc := int64(c.KVDim()), int64(c.Vocab)
	q := func(rows, cols int64) int64 {
		return rows * int64(kernels.Groups(int(cols))) * int64(unsafe.Sizeof(kernels.Block{}))
	}
	perLayer := q(dim, dim)*2 + q(kv, dim)*2 + q(hid, dim)*2 + q(dim, hid) + 4*2*dim
	total := q(voc, dim) + nl*perLayer + 4*dim
	if !c.SharedClassifier {
		total += q(voc, dim)
	}
	return total
}

// KVBytesPerSeq is the key/value cache one sequence needs at full seq_len.
func (c ModelConfig) KVBytesPerSeq() int64 {
	return int64(c.Layers) * int64(c.SeqLen) * int64(c.KVDim()) * 2 * 4
}

// Info describes a checkpoint and what serving it costs.
type Info struct {
	ModelConfig
	// FileBytes is the checkpoint's size on disk.
	FileBytes int64 `json:"file_bytes"`
	// Params is the number of weights.
	Params int64 `json:"params"`
	// FP32Bytes is the weight memory when serving unquantized.
	FP32Bytes int64 `json:"fp32_bytes"`
	// Int8Bytes is the weight memory with quantize="int8".
	Int8Bytes int64 `json:"int8_bytes"`
	// KVBytesPerSeq is the KV cache of one sequence at full context.
	KVBytesPerSeq int64 `json:"kv_bytes_per_seq"`
}

func infoFor(c ModelConfig) Info {
	p := c.Params()
	return Info{ModelConfig: c, FileBytes: c.FileSize(), Params: p, FP32Bytes: 4 * p, Int8Bytes: c.int8Bytes(), KVBytesPerSeq: c.KVBytesPerSeq()}
}

// checkSize compares a file's size with what its header implies.
func checkSize(c ModelConfig, size int64) error {
	want := c.FileSize()
	switch {
	case size < want:
		return fmt.Errorf("%w: header implies %d bytes, file has %d", ErrTruncated, want, size)
	case size > want:
		return fmt.Errorf("%w: header implies %d bytes, file has %d", ErrSizeMismatch, want, size)
	}
	return nil
}

// Inspect reads a checkpoint's header (llama2.c or GGUF) and reports its
// shapes, parameter count and memory needs without loading the weights.
func Inspect(path string) (Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return Info{}, fmt.Errorf("inspect checkpoint: %w", err)
	}
	defer f.Close()
	var hdr [headerSize]byte
	n, err := io.ReadFull(f, hdr[:])
	if isGGUF(hdr[:n]) {
		return inspectGGUF(path)
	}
	if err != nil && n < headerSize {
		return Info{}, fmt.Errorf("inspect %s: %w: %d bytes, header needs %d", path, ErrTruncated, n, headerSize)
	}
	c, err := parseHeader(hdr[:])
	if err != nil {
		return Info{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		return Info{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	if err := checkSize(c, st.Size()); err != nil {
		return Info{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	return infoFor(c), nil
}

// matrix is a row-major weight matrix, in float32 (f) or Q8 blocks (q).
type matrix struct {
	rows, cols int
	f          []float32
	q          []kernels.Block
}

// layerWeights are one transformer block's weights.
type layerWeights struct {
	rmsAtt, rmsFFN             []float32
	wq, wk, wv, wo, w1, w2, w3 matrix
}

// weights is a loaded model. In float32 mode the matrices are views into
// the mapped file; in int8 mode they are quantized copies and the file is
// unmapped right after loading.
type weights struct {
	cfg      ModelConfig
	quant    bool
	emb      matrix
	layers   []layerWeights
	rmsFinal []float32
	cls      *matrix
	// normEps is RMSNorm's epsilon (1e-5 in llama2.c).
	normEps float32
	// ropeFreqs holds RoPE's frequency for each pair of a head
	// (head_size/2), computed as run.c does.
	ropeFreqs []float32
	release   func() error
}

// close releases the mapped file, if any.
func (w *weights) close() error {
	if w.release == nil {
		return nil
	}
	err := w.release()
	w.release = nil
	return err
}

// embedding writes token's embedding row into dst.
func (w *weights) embedding(dst []float32, token int) {
	d := w.cfg.Dim
	if w.emb.q != nil {
		g := kernels.Groups(d)
		kernels.Dequantize(dst[:d], w.emb.q[token*g:(token+1)*g])
		return
	}
	copy(dst[:d], w.emb.f[token*d:(token+1)*d])
}

// floatsOf views b as little-endian float32s, without copying where the
// platform allows it.
func floatsOf(b []byte) []float32 {
	n := len(b) / 4
	if n == 0 {
		return nil
	}
	le := binary.NativeEndian.Uint16([]byte{1, 0}) == 1
	if le && uintptr(unsafe.Pointer(&b[0]))%4 == 0 {
		return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// loadModel maps a checkpoint — llama2.c or GGUF, told apart by GGUF's
// magic — and builds the model and its tokenizer: from tokPath, or for GGUF
// with an empty tokPath from the file's own vocabulary. The mapping stays
// only while weights alias it.
func loadModel(ckpt, tokPath string, quantize bool) (*weights, *Tokenizer, error) {
	data, release, err := mapFile(ckpt)
	if err != nil {
		return nil, nil, fmt.Errorf("load checkpoint: %w", err)
	}
	var w *weights
	var tok *Tokenizer
	aliased := !quantize
	if isGGUF(data) {
		var f *ggufFile
		if f, err = parseGGUF(data); err == nil {
			w, aliased, err = weightsFromGGUF(f, quantize)
		}
		if err == nil && tokPath == "" {
			if tok, err = f.tokenizer(); err == nil && tok.VocabSize() != w.cfg.Vocab {
				err = fmt.Errorf("%w: tokenizer has %d pieces, model has %d", ErrVocabMismatch, tok.VocabSize(), w.cfg.Vocab)
			}
		}
	} else {
		w, err = weightsFromBytes(data, quantize)
	}
	if err != nil {
		_ = release()
		return nil, nil, fmt.Errorf("load checkpoint %s: %w", ckpt, err)
	}
	if tok == nil {
		if tokPath == "" {
			_ = release()
			return nil, nil, fmt.Errorf("load checkpoint %s: %w: a llama2.c checkpoint needs a tokenizer file", ckpt, ErrInvalidConfig)
		}
		if tok, err = ReadTokenizer(tokPath, w.cfg.Vocab); err != nil {
			_ = release()
			return nil, nil, err
		}
	}
	if aliased {
		w.release = release
	} else if err := release(); err != nil {
		return nil, nil, fmt.Errorf("unmap checkpoint %s: %w", ckpt, err)
	}
	return w, tok, nil
}

// loadWeights maps a llama2.c checkpoint and builds the model from it,
// quantizing every matrix to Q8 when quantize is set.
func loadWeights(path string, quantize bool) (*weights, error) {
	data, release, err := mapFile(path)
	if err != nil {
		return nil, fmt.Errorf("load checkpoint: %w", err)
	}
	w, err := weightsFromBytes(data, quantize)
	if err != nil {
		_ = release()
		return nil, fmt.Errorf("load checkpoint %s: %w", path, err)
	}
	if quantize {
		// Everything lives in quantized copies now.
		if err := release(); err != nil {
			return nil, fmt.Errorf("unmap checkpoint %s: %w", path, err)
		}
	} else {
		w.release = release
	}
	return w, nil
}

// weightsFromBytes builds a model from a checkpoint's bytes. Unquantized
// weights alias data.
func weightsFromBytes(data []byte, quantize bool) (*weights, error) {
	c, err := parseHeader(data)
	if err != nil {
		return nil, err
	}
	if err := checkSize(c, int64(len(data))); err != nil {
		return nil, err
	}
	return weightsFromFloats(c, floatsOf(data[headerSize:]), quantize), nil
}

// weightsFromFloats builds a model of shape c from its float32s in
// llama2.c order. Unquantized weights alias fl.
func weightsFromFloats(c ModelConfig, fl []float32, quantize bool) *weights {
	lo := c.layout()
	vec := func(off int64, n int) []float32 {
		v := fl[off : off+int64(n) : off+int64(n)]
		if quantize {
			v = append([]float32(nil), v...)
		}
		return v
	}
	mat := func(off int64, rows, cols int) matrix {
		m := matrix{rows: rows, cols: cols}
		f := fl[off : off+int64(rows)*int64(cols)]
		if !quantize {
			m.f = f
			return m
		}
		g := kernels.Groups(cols)
		m.q = make([]kernels.Block, rows*g)
		for r := 0; r < rows; r++ {
			kernels.Quantize(m.q[r*g:(r+1)*g], f[r*cols:(r+1)*cols])
		}
		return m
	}
	dim, hid, kv := c.Dim, c.HiddenDim, c.KVDim()
	w := &weights{cfg: c, quant: quantize}
	w.emb = mat(lo.emb, c.Vocab, dim)
	w.layers = make([]layerWeights, c.Layers)
	for i := range w.layers {
		l := int64(i)
		w.layers[i] = layerWeights{
			rmsAtt: vec(lo.rmsAtt+l*int64(dim), dim),
			rmsFFN: vec(lo.rmsFFN+l*int64(dim), dim),
			wq:     mat(lo.wq+l*int64(dim*dim), dim, dim),
			wk:     mat(lo.wk+l*int64(dim*kv), kv, dim),
			wv:     mat(lo.wv+l*int64(dim*kv), kv, dim),
			wo:     mat(lo.wo+l*int64(dim*dim), dim, dim),
			w1:     mat(lo.w1+l*int64(dim*hid), hid, dim),
			w2:     mat(lo.w2+l*int64(hid*dim), dim, hid),
			w3:     mat(lo.w3+l*int64(dim*hid), hid, dim),
		}
	}
	w.rmsFinal = vec(lo.rmsFinal, dim)
	if c.SharedClassifier {
		w.cls = &w.emb
	} else {
		cls := mat(lo.cls, c.Vocab, dim)
		w.cls = &cls
	}
	w.normEps = llamaNormEps
	w.ropeFreqs = ropeFreqs(c, llamaRopeTheta)
	return w
}

// llama2.c's fixed RMSNorm epsilon and RoPE base; GGUF files may set others.
const (
	llamaNormEps   = 1e-5
	llamaRopeTheta = 10000
)

// ropeFreqs computes RoPE's frequency for each pair of a head the way run.c
// does in float32: 1/powf(theta, head_dim/head_size). Rows turn them into
// cos/sin of pos*freq each step (see runner.forward), so nothing here grows
// with seq_len.
func ropeFreqs(c ModelConfig, theta float64) []float32 {
	hs := c.HeadSize()
	freqs := make([]float32, hs/2)
	for i := range freqs {
		e := float32(2*i) / float32(hs)
		freqs[i] = 1 / float32(math.Pow(theta, float64(e)))
	}
	return freqs
}

// writeCheckpoint writes a checkpoint: the header, then weights, which
// must hold the header's layout().total float32s in llama2.c order.
func writeCheckpoint(w io.Writer, c ModelConfig, floats []float32) error {
	if int64(len(floats)) != c.layout().total {
		return fmt.Errorf("write checkpoint: %d floats, shape needs %d", len(floats), c.layout().total)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := bw.Write(c.appendHeader(nil)); err != nil {
		return fmt.Errorf("write checkpoint header: %w", err)
	}
	var buf []byte
	for len(floats) > 0 {
		n := min(len(floats), 1<<16)
		buf = buf[:0]
		for _, f := range floats[:n] {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(f))
		}
		if _, err := bw.Write(buf); err != nil {
			return fmt.Errorf("write checkpoint weights: %w", err)
		}
		floats = floats[n:]
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// unsafePointer is the address of b's first byte, or nil.
func unsafePointer(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

// inspectGGUF parses a GGUF file's header (mapped, so the tensor data is
// not read).
func inspectGGUF(path string) (Info, error) {
	data, release, err := mapFile(path)
	if err != nil {
		return Info{}, fmt.Errorf("inspect checkpoint: %w", err)
	}
	defer func() { _ = release() }()
	f, err := parseGGUF(data)
	if err != nil {
		return Info{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	c, _, err := f.config()
	if err != nil {
		return Info{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	info := infoFor(c)
	info.FileBytes = int64(len(data))
	return info, nil
}
