// Package kernels holds the numeric inner loops of the engine: float32 dot
// products and axpy for attention, and batched matrix products (float32 and
// Q8_0 int8) that multiply one weight matrix by several activation rows while
// each weight row is still in cache.
//
// Every implementation computes each dot product with the same operation
// order no matter how many activation rows are passed in one call, so a
// sequence's numbers do not depend on which other sequences share its batch.
package kernels

import "fmt"

// GroupSize is the number of weights sharing one scale in a Q8 block, as in
// ggml's Q8_0 and llama2.c's runq.c.
const GroupSize = 32

// Block is a Q8_0 group: GroupSize signed 8-bit values and their scale, so
// the group's values are D*Q[i]. Quantized values stay in [-127, 127], which
// the AVX2 kernel relies on to avoid int16 saturation.
type Block struct {
	D float32
	Q [GroupSize]int8
}

// Set is one implementation of the kernels. All functions panic only on
// slices shorter than the sizes they are given, which is a caller bug.
type Set struct {
	// Name says which implementation this is ("avx512", "avx2" or "go").
	Name string
	// Dot returns the dot product of a and b[:len(a)].
	Dot func(a, b []float32) float32
	// Axpy adds a*x[i] to y[i] for i < len(y).
	Axpy func(y []float32, a float32, x []float32)
	// AxpyRows adds sum over r < len(a) of a[r]*x[r*ldx+i] to y[i] for
	// i < len(y): the weighted sum of value rows in attention.
	AxpyRows func(y []float32, a []float32, x []float32, ldx int)
	// ExpSum sets dst[i] = e^(src[i]-shift) for i < len(dst) and returns
	// their sum: softmax's numerators and denominator.
	ExpSum func(dst, src []float32, shift float32) float32
	// SiLUMul sets h[i] = silu(h[i]) * g[i] for i < len(h), silu(v) being
	// v/(1+e^-v): SwiGLU's gate.
	SiLUMul func(h, g []float32)
	// MatMul sets out[s*ldo+r] to the dot product of weight row r (w[r*n:])
	// with activation row s (x[s*n:]) for r < rows and s < seqs.
	MatMul func(out []float32, ldo int, x []float32, seqs int, w []float32, n, rows int)
	// MatMulQ8 is MatMul for Q8 rows of groups blocks each.
	MatMulQ8 func(out []float32, ldo int, x []Block, seqs int, w []Block, groups, rows int)
}

// Generic returns the portable pure-Go kernels.
func Generic() Set {
	return Set{Name: "go", Dot: DotGo, Axpy: AxpyGo, AxpyRows: AxpyRowsGo, ExpSum: ExpSumGo, SiLUMul: SiLUMulGo, MatMul: MatMulGo, MatMulQ8: MatMulQ8Go}
}

// Best returns the fastest kernels this CPU supports.
func Best() Set {
	if s, ok := AVX512(); ok {
		return s
	}
	if s, ok := AVX2(); ok {
		return s
	}
	return Generic()
}

func checkMatMul(outLen, ldo, xLen, seqs, wLen, n, rows int) {
	if seqs < 0 || rows < 0 || n < 0 || (seqs > 1 && ldo < rows) {
		panic(fmt.Sprintf("kernels: bad matmul shape seqs=%d rows=%d n=%d ldo=%d", seqs, rows, n, ldo))
	}
	if seqs == 0 || rows == 0 {
		return
	}
	if xLen < seqs*n || wLen < rows*n || outLen < (seqs-1)*ldo+rows {
		panic(fmt.Sprintf("kernels: matmul slices too short: x %d < %d*%d or w %d < %d*%d or out %d", xLen, seqs, n, wLen, rows, n, outLen))
	}
}

// hsum8 adds eight lane sums in the order the AVX2 kernels reduce a vector
// register, so the Go kernels round like them wherever rounding allows.
func hsum8(l *[8]float32) float32 {
	a0 := l[0] + l[4]
	a1 := l[1] + l[5]
	a2 := l[2] + l[6]
	a3 := l[3] + l[7]
	return (a0 + a2) + (a1 + a3)
}

// DotGo is the pure-Go Dot.
func DotGo(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var l [8]float32
	i := 0
	for ; i+8 <= n; i += 8 {
		aa := a[i : i+8 : i+8]
		bb := b[i : i+8 : i+8]
		l[0] += aa[0] * bb[0]
		l[1] += aa[1] * bb[1]
		l[2] += aa[2] * bb[2]
		l[3] += aa[3] * bb[3]
		l[4] += aa[4] * bb[4]
		l[5] += aa[5] * bb[5]
		l[6] += aa[6] * bb[6]
		l[7] += aa[7] * bb[7]
	}
	s := hsum8(&l)
	for ; i < n; i++ {
		s += a[i] * b[i]
	}
	return s
}

// AxpyGo is the pure-Go Axpy.
func AxpyGo(y []float32, a float32, x []float32) {
	x = x[:len(y)]
	for i := range y {
		y[i] += a * x[i]
	}
}

func checkAxpyRows(ny, na, nx, ldx int) {
	if na == 0 || ny == 0 {
		return
	}
	if ldx < ny || nx < (na-1)*ldx+ny {
		panic(fmt.Sprintf("kernels: axpyrows x too short: %d < (%d-1)*%d+%d", nx, na, ldx, ny))
	}
}

// AxpyRowsGo is the pure-Go AxpyRows. Each y[i] sums its terms in row
// order, as the AVX2 kernel does.
func AxpyRowsGo(y []float32, a []float32, x []float32, ldx int) {
	checkAxpyRows(len(y), len(a), len(x), ldx)
	if len(a) == 0 {
		return
	}
	for i := range y {
		acc := y[i]
		for r, ar := range a {
			acc += ar * x[r*ldx+i]
		}
		y[i] = acc
	}
}

// MatMulGo is the pure-Go MatMul.
func MatMulGo(out []float32, ldo int, x []float32, seqs int, w []float32, n, rows int) {
	checkMatMul(len(out), ldo, len(x), seqs, len(w), n, rows)
	for r := 0; r < rows; r++ {
		wr := w[r*n : (r+1)*n]
		for s := 0; s < seqs; s++ {
			out[s*ldo+r] = DotGo(wr, x[s*n:(s+1)*n])
		}
	}
}

// dotQ8Go is the Q8 dot product of two rows of blocks, with 8 lane sums
// like the AVX2 kernel: lane j holds the products of elements 4j..4j+3.
func dotQ8Go(a, b []Block) float32 {
	var l [8]float32
	for g := range a {
		qa, qb := &a[g].Q, &b[g].Q
		d := a[g].D * b[g].D
		for j := 0; j < 8; j++ {
			k := 4 * j
			is := int32(qa[k])*int32(qb[k]) + int32(qa[k+1])*int32(qb[k+1]) +
				int32(qa[k+2])*int32(qb[k+2]) + int32(qa[k+3])*int32(qb[k+3])
			l[j] += float32(is) * d
		}
	}
	return hsum8(&l)
}

// MatMulQ8Go is the pure-Go MatMulQ8.
func MatMulQ8Go(out []float32, ldo int, x []Block, seqs int, w []Block, groups, rows int) {
	checkMatMul(len(out), ldo, len(x), seqs, len(w), groups, rows)
	for r := 0; r < rows; r++ {
		wr := w[r*groups : (r+1)*groups]
		for s := 0; s < seqs; s++ {
			out[s*ldo+r] = dotQ8Go(wr, x[s*groups:(s+1)*groups])
		}
	}
}

// Groups is the number of Q8 blocks that hold n values; the last block is
// zero-padded.
func Groups(n int) int { return (n + GroupSize - 1) / GroupSize }

// Quantize writes src into dst as Q8 blocks, Groups(len(src)) of them, the
// way runq.c does: each group's scale is its largest magnitude over 127 and
// each value is rounded half away from zero. Padding values are zero.
func Quantize(dst []Block, src []float32) {
	ng := Groups(len(src))
	dst = dst[:ng]
	for g := range dst {
		lo := g * GroupSize
		hi := min(lo+GroupSize, len(src))
		var wmax float32
		for _, v := range src[lo:hi] {
			if v < 0 {
				v = -v
			}
			// NaN never compares greater, so a NaN group quantizes to zeros
			// instead of poisoning the int conversion below.
			if v > wmax {
				wmax = v
			}
		}
		b := &dst[g]
		b.D = wmax / 127
		b.Q = [GroupSize]int8{}
		if b.D == 0 || b.D != b.D {
			b.D = 0
			continue
		}
		for i, v := range src[lo:hi] {
			q := float64(v / b.D)
			// Rounding half away from zero like C's round(); the clamp only
			// matters for non-finite input.
			if q >= 0 {
				q += 0.5
			} else {
				q -= 0.5
			}
			q = max(-127, min(127, q))
			if q != q {
				q = 0
			}
			b.Q[i] = int8(q)
		}
	}
}

// Dequantize writes the values of blocks src into dst (len(dst) values).
func Dequantize(dst []float32, src []Block) {
	for i := range dst {
		b := &src[i/GroupSize]
		dst[i] = b.D * float32(b.Q[i%GroupSize])
	}
}
