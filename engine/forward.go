package engine

import (
	"math"

	"github.com/shoal-dev/shoal/engine/kernels"
)

// kvPageTokens is how many positions one KV cache page holds. Sequences
// grow page by page, so a short request only touches the pages it uses.
const kvPageTokens = 16

// kvSeq is one sequence's key/value cache: pages of kvPageTokens positions,
// each laid out as [layer][keys, values][kv head][position in page][head
// size], so one head's keys (or values) in a page are contiguous rows that a
// single kernel call covers.
type kvSeq struct {
	pages [][]float32
}

// row is one token of the batch: a sequence's input at a position. logit is
// the row's index in the logits buffer, or -1 when the row's next token is
// already known (a prompt token that is not the last one).
type row struct {
	kv    *kvSeq
	pos   int
	token int
	logit int
}

// matrix slots name a phase's weight matrix and its operands.
const (
	slotQ = iota
	slotK
	slotV
	slotO
	slotFFN13 // W1 and W3 together, then SwiGLU on the chunk
	slotW2
	slotCls
)

// chunk is one parallel item of a matmul phase: rows [r0, r1) of a slot's
// matrix against every activation row.
type chunk struct{ slot, r0, r1 int }

// runner evaluates the transformer on a batch of rows. Every matmul takes
// all rows at once, so each weight matrix is read once per step however
// many sequences run; everything else (norms, RoPE, attention) is per row.
// A row's results never depend on the other rows in its batch.
type runner struct {
	w        *weights
	cfg      ModelConfig
	k        kernels.Set
	pool     *pool
	maxRows  int
	maxLogit int

	x, xb, xb2, q, kk, vv, hb, hb2 []float32
	xq, hq                         []kernels.Block
	xl                             []float32
	xlq                            []kernels.Block
	// rowCos and rowSin are RoPE's rotation for each row's position.
	rowCos, rowSin []float32
	logits         []float32
	att            [][]float32

	rows  []row
	nlog  int
	layer int
	phase []chunk

	qkv, o, ffn13, ffn2, cls []chunk
	// Jobs are built once so the steps do not allocate closures.
	mmJob, attnJob, preAttnJob, ropeJob, quantXbJob, preFFNJob, quantHbJob, finalJob func(worker, item int)
}

func newRunner(w *weights, k kernels.Set, p *pool, maxRows, maxLogits int) *runner {
	c := w.cfg
	dim, kvd, hid := c.Dim, c.KVDim(), c.HiddenDim
	r := &runner{w: w, cfg: c, k: k, pool: p, maxRows: maxRows, maxLogit: maxLogits}
	r.x = make([]float32, maxRows*dim)
	r.xb = make([]float32, maxRows*dim)
	r.xb2 = make([]float32, maxRows*dim)
	r.q = make([]float32, maxRows*dim)
	r.kk = make([]float32, maxRows*kvd)
	r.vv = make([]float32, maxRows*kvd)
	r.hb = make([]float32, maxRows*hid)
	r.hb2 = make([]float32, maxRows*hid)
	r.xl = make([]float32, maxLogits*dim)
	r.rowCos = make([]float32, maxRows*len(w.ropeFreqs))
	r.rowSin = make([]float32, maxRows*len(w.ropeFreqs))
	r.logits = make([]float32, maxLogits*c.Vocab)
	if w.quant {
		r.xq = make([]kernels.Block, maxRows*kernels.Groups(dim))
		r.hq = make([]kernels.Block, maxRows*kernels.Groups(hid))
		r.xlq = make([]kernels.Block, maxLogits*kernels.Groups(dim))
	}
	r.att = make([][]float32, p.size)
	for i := range r.att {
		r.att[i] = make([]float32, c.SeqLen)
	}
	split := func(slots []int, rows int) []chunk {
		per := (rows + 8*p.size - 1) / (8 * p.size)
		per = max(16, (per+3)&^3)
		var out []chunk
		for _, s := range slots {
			for r0 := 0; r0 < rows; r0 += per {
				out = append(out, chunk{s, r0, min(r0+per, rows)})
			}
		}
		return out
	}
	r.qkv = append(split([]int{slotQ}, dim), split([]int{slotK, slotV}, kvd)...)
	r.o = split([]int{slotO}, dim)
	r.ffn13 = split([]int{slotFFN13}, hid)
	r.ffn2 = split([]int{slotW2}, dim)
	r.cls = split([]int{slotCls}, c.Vocab)
	r.mmJob = r.mmItem
	r.attnJob = r.attnItem
	r.preAttnJob = r.preAttn
	r.ropeJob = r.ropeRow
	r.quantXbJob = func(_, i int) { r.quantRow(r.xq, r.xb, dim, i) }
	r.preFFNJob = r.preFFN
	r.quantHbJob = func(_, i int) { r.quantRow(r.hq, r.hb, hid, i) }
	r.finalJob = r.finalRow
	return r
}

// logitsRow returns the logits of the batch row whose logit index is i.
func (r *runner) logitsRow(i int) []float32 {
	v := r.cfg.Vocab
	return r.logits[i*v : (i+1)*v]
}

// forward runs rows (at most maxRows, at most maxLogits of them wanting
// logits) through the model, writing each row's keys and values into its
// sequence's cache, whose pages must already cover the row's position.
func (r *runner) forward(rows []row) {
	c := r.cfg
	dim := c.Dim
	r.rows = rows
	r.nlog = 0
	half := len(r.w.ropeFreqs)
	for i, rw := range rows {
		r.w.embedding(r.x[i*dim:], rw.token)
		if rw.logit >= 0 {
			r.nlog = max(r.nlog, rw.logit+1)
		}
		// run.c: val = pos * freq in float32, then cosf/sinf.
		for j, f := range r.w.ropeFreqs {
			v := float64(float32(rw.pos) * f)
			r.rowCos[i*half+j] = float32(math.Cos(v))
			r.rowSin[i*half+j] = float32(math.Sin(v))
		}
	}
	for l := 0; l < c.Layers; l++ {
		r.layer = l
		r.perRow(r.preAttnJob)
		r.matmuls(r.qkv)
		r.perRow(r.ropeJob)
		r.pool.run(len(rows)*c.Heads, r.attnJob)
		if r.w.quant {
			r.perRow(r.quantXbJob)
		}
		r.matmuls(r.o)
		r.perRow(r.preFFNJob)
		r.matmuls(r.ffn13)
		if r.w.quant {
			r.perRow(r.quantHbJob)
		}
		r.matmuls(r.ffn2)
	}
	r.perRow(r.finalJob)
	if r.nlog > 0 {
		r.matmuls(r.cls)
	}
}

// perRow runs a per-row job, spreading it over the pool when the batch is
// big enough to pay for the wake-ups.
func (r *runner) perRow(job func(worker, item int)) {
	if len(r.rows) < 8 {
		for i := range r.rows {
			job(0, i)
		}
		return
	}
	r.pool.run(len(r.rows), job)
}

func (r *runner) matmuls(chunks []chunk) {
	r.phase = chunks
	r.pool.run(len(chunks), r.mmJob)
	r.phase = nil
}

func (r *runner) mmItem(_, item int) {
	c := r.phase[item]
	if c.slot != slotFFN13 {
		r.mm(c.slot, c.r0, c.r1)
		return
	}
	r.mm(slotFFN13, c.r0, c.r1)
	r.mm(-slotFFN13, c.r0, c.r1)
	hid := r.cfg.HiddenDim
	for s := range r.rows {
		r.k.SiLUMul(r.hb[s*hid+c.r0:s*hid+c.r1], r.hb2[s*hid+c.r0:s*hid+c.r1])
	}
}

// mm multiplies rows [r0, r1) of slot's matrix by the slot's input rows.
// Slot -slotFFN13 is W3 (slotFFN13 alone is W1).
func (r *runner) mm(slot, r0, r1 int) {
	c := r.cfg
	lw := &r.w.layers[r.layer]
	n := len(r.rows)
	var m *matrix
	var in, out []float32
	var inq []kernels.Block
	var ldo int
	switch slot {
	case slotQ:
		m, in, inq, out, ldo = &lw.wq, r.xb, r.xq, r.q, c.Dim
	case slotK:
		m, in, inq, out, ldo = &lw.wk, r.xb, r.xq, r.kk, c.KVDim()
	case slotV:
		m, in, inq, out, ldo = &lw.wv, r.xb, r.xq, r.vv, c.KVDim()
	case slotO:
		m, in, inq, out, ldo = &lw.wo, r.xb, r.xq, r.xb2, c.Dim
	case slotFFN13:
		m, in, inq, out, ldo = &lw.w1, r.xb, r.xq, r.hb, c.HiddenDim
	case -slotFFN13:
		m, in, inq, out, ldo = &lw.w3, r.xb, r.xq, r.hb2, c.HiddenDim
	case slotW2:
		m, in, inq, out, ldo = &lw.w2, r.hb, r.hq, r.xb, c.Dim
	case slotCls:
		m, in, inq, out, ldo = r.w.cls, r.xl, r.xlq, r.logits, c.Vocab
		n = r.nlog
	}
	if m.q != nil {
		g := kernels.Groups(m.cols)
		r.k.MatMulQ8(out[r0:], ldo, inq[:n*g], n, m.q[r0*g:r1*g], g, r1-r0)
		return
	}
	r.k.MatMul(out[r0:], ldo, in[:n*m.cols], n, m.f[r0*m.cols:r1*m.cols], m.cols, r1-r0)
}

// rmsnorm is run.c's RMSNorm: o = w * x / sqrt(mean(x^2) + eps).
func rmsnorm(o, x, w []float32, eps float32) {
	var ss float32
	for _, v := range x {
		ss += v * v
	}
	ss /= float32(len(x))
	ss += eps
	ss = 1 / float32(math.Sqrt(float64(ss)))
	o = o[:len(x)]
	w = w[:len(x)]
	for j, v := range x {
		o[j] = w[j] * (ss * v)
	}
}

func (r *runner) quantRow(dst []kernels.Block, src []float32, n, i int) {
	g := kernels.Groups(n)
	kernels.Quantize(dst[i*g:(i+1)*g], src[i*n:(i+1)*n])
}

// preAttn adds the previous layer's FFN output to the residual stream and
// normalises it for attention.
func (r *runner) preAttn(_, i int) {
	dim := r.cfg.Dim
	x := r.x[i*dim : (i+1)*dim]
	if r.layer > 0 {
		for j, v := range r.xb[i*dim : (i+1)*dim] {
			x[j] += v
		}
	}
	rmsnorm(r.xb[i*dim:(i+1)*dim], x, r.w.layers[r.layer].rmsAtt, r.w.normEps)
	if r.w.quant {
		r.quantRow(r.xq, r.xb, dim, i)
	}
}

// ropeRow rotates the row's query and key as run.c does and stores its key
// and value in the sequence's cache.
func (r *runner) ropeRow(_, i int) {
	c := r.cfg
	dim, kvd, hs := c.Dim, c.KVDim(), c.HeadSize()
	half := hs / 2
	rw := r.rows[i]
	q := r.q[i*dim : (i+1)*dim]
	k := r.kk[i*kvd : (i+1)*kvd]
	cs := r.rowCos[i*half : (i+1)*half]
	sn := r.rowSin[i*half : (i+1)*half]
	for j := 0; j < dim; j += 2 {
		hd := (j % hs) / 2
		fcr, fci := cs[hd], sn[hd]
		v0, v1 := q[j], q[j+1]
		q[j] = v0*fcr - v1*fci
		q[j+1] = v0*fci + v1*fcr
		if j < kvd {
			v0, v1 = k[j], k[j+1]
			k[j] = v0*fcr - v1*fci
			k[j+1] = v0*fci + v1*fcr
		}
	}
	page := rw.kv.pages[rw.pos/kvPageTokens]
	v := r.vv[i*kvd : (i+1)*kvd]
	base := r.layer*2*kvPageTokens*kvd + (rw.pos%kvPageTokens)*hs
	for g := 0; g < c.KVHeads; g++ {
		off := base + g*kvPageTokens*hs
		copy(page[off:off+hs], k[g*hs:(g+1)*hs])
		off += kvPageTokens * kvd
		copy(page[off:off+hs], v[g*hs:(g+1)*hs])
	}
}

// attnItem is one head of one row: scaled dot-product attention over the
// sequence's positions up to the row's own.
func (r *runner) attnItem(worker, item int) {
	c := r.cfg
	dim, kvd, hs := c.Dim, c.KVDim(), c.HeadSize()
	i, h := item/c.Heads, item%c.Heads
	rw := r.rows[i]
	q := r.q[i*dim+h*hs : i*dim+(h+1)*hs]
	att := r.att[worker][:rw.pos+1]
	scale := float32(math.Sqrt(float64(hs)))
	kOff := r.layer*2*kvPageTokens*kvd + (h/(c.Heads/c.KVHeads))*kvPageTokens*hs
	vOff := kOff + kvPageTokens*kvd
	for t0 := 0; t0 < len(att); t0 += kvPageTokens {
		n := min(kvPageTokens, len(att)-t0)
		page := rw.kv.pages[t0/kvPageTokens]
		r.k.MatMul(att[t0:t0+n], n, q, 1, page[kOff:kOff+n*hs], hs, n)
	}
	for t := range att {
		att[t] /= scale
	}
	softmax(att, &r.k)
	xb := r.xb[i*dim+h*hs : i*dim+(h+1)*hs]
	clear(xb)
	for t0 := 0; t0 < len(att); t0 += kvPageTokens {
		n := min(kvPageTokens, len(att)-t0)
		page := rw.kv.pages[t0/kvPageTokens]
		r.k.AxpyRows(xb, att[t0:t0+n], page[vOff:vOff+n*hs], hs)
	}
}

// preFFN adds the attention output to the residual stream and normalises
// it for the feed-forward block.
func (r *runner) preFFN(_, i int) {
	dim := r.cfg.Dim
	x := r.x[i*dim : (i+1)*dim]
	for j, v := range r.xb2[i*dim : (i+1)*dim] {
		x[j] += v
	}
	rmsnorm(r.xb[i*dim:(i+1)*dim], x, r.w.layers[r.layer].rmsFFN, r.w.normEps)
	if r.w.quant {
		r.quantRow(r.xq, r.xb, dim, i)
	}
}

// finalRow finishes the residual stream of a row that wants logits and
// normalises it into the classifier's input.
func (r *runner) finalRow(_, i int) {
	rw := r.rows[i]
	if rw.logit < 0 {
		return
	}
	dim := r.cfg.Dim
	x := r.x[i*dim : (i+1)*dim]
	for j, v := range r.xb[i*dim : (i+1)*dim] {
		x[j] += v
	}
	rmsnorm(r.xl[rw.logit*dim:(rw.logit+1)*dim], x, r.w.rmsFinal, r.w.normEps)
	if r.w.quant {
		r.quantRow(r.xlq, r.xl, dim, rw.logit)
	}
}
