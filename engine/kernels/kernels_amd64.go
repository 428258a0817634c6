//go:build amd64 && !purego

package kernels

import "golang.org/x/sys/cpu"

// AVX2 returns the AVX2+FMA assembly kernels, and false when the CPU (or
// the OS) lacks AVX2 or FMA.
func AVX2() (Set, bool) {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return Set{}, false
	}
	return Set{Name: "avx2", Dot: dotAVX2Slice, Axpy: axpyAVX2Slice, AxpyRows: axpyRowsAVX2Slice, ExpSum: expSumAVX2Slice, SiLUMul: siluMulAVX2Slice, MatMul: matMulAVX2, MatMulQ8: matMulQ8AVX2}, true
}

// AVX512 returns the AVX2 kernels with the fp32 MatMul replaced by one that
// multiplies eight activation rows at a time with 512-bit FMAs, and false
// when the CPU (or the OS) lacks AVX-512F/VL or the AVX2 kernels. Its
// results are bit-identical to the AVX2 set's.
func AVX512() (Set, bool) {
	s, ok := AVX2()
	if !ok || !cpu.X86.HasAVX512F || !cpu.X86.HasAVX512VL {
		return Set{}, false
	}
	s.Name = "avx512"
	s.MatMul = matMulAVX512
	return s, true
}

//go:noescape
func dotAVX2(a, b *float32, n int) float32

//go:noescape
func axpyAVX2(y, x *float32, a float32, n int)

//go:noescape
func axpyRowsAVX2(y *float32, n int, a *float32, rows int, x *float32, ldx int)

//go:noescape
func expSumAVX2(dst, src *float32, n int, shift float32) float32

//go:noescape
func siluMulAVX2(h, gate *float32, n int)

//go:noescape
func matmulX4AVX2(out *float32, ldo int, x *float32, ldx int, w *float32, n, rows, blocks, pf int)

//go:noescape
func matmulX8AVX512(out *float32, ldo int, x *float32, ldx int, w *float32, n, rows, blocks int)

//go:noescape
func matmulX1AVX2(out *float32, x *float32, w *float32, n, rows int)

//go:noescape
func matmulQ8X4AVX2(out *float32, ldo int, x *Block, w *Block, groups, rows int)

//go:noescape
func matmulQ8X1AVX2(out *float32, x *Block, w *Block, groups, rows int)

func dotAVX2Slice(a, b []float32) float32 {
	if len(a) == 0 {
		return 0
	}
	_ = b[len(a)-1]
	return dotAVX2(&a[0], &b[0], len(a))
}

func axpyAVX2Slice(y []float32, a float32, x []float32) {
	if len(y) == 0 {
		return
	}
	_ = x[len(y)-1]
	axpyAVX2(&y[0], &x[0], a, len(y))
}

func axpyRowsAVX2Slice(y []float32, a []float32, x []float32, ldx int) {
	checkAxpyRows(len(y), len(a), len(x), ldx)
	if len(a) == 0 || len(y) == 0 {
		return
	}
	axpyRowsAVX2(&y[0], len(y), &a[0], len(a), &x[0], ldx)
}

// expSumAVX2Slice does whole vectors in assembly and the tail in Go, in
// the same order every time.
func expSumAVX2Slice(dst, src []float32, shift float32) float32 {
	n := len(dst)
	src = src[:n]
	n8 := n &^ 7
	var s float32
	if n8 > 0 {
		s = expSumAVX2(&dst[0], &src[0], n8, shift)
	}
	for i := n8; i < n; i++ {
		e := Expf(src[i] - shift)
		dst[i] = e
		s += e
	}
	return s
}

func siluMulAVX2Slice(h, g []float32) {
	n := len(h)
	g = g[:n]
	n8 := n &^ 7
	if n8 > 0 {
		siluMulAVX2(&h[0], &g[0], n8)
	}
	SiLUMulGo(h[n8:], g[n8:])
}

// rowBlock is how many weight rows one pass over a batch covers: enough to
// amortise the loop, few enough that the rows stay in L1 while every
// activation row streams past them.
func rowBlock(rowBytes int) int {
	rb := (32 << 10) / max(rowBytes, 1)
	rb &^= 1
	return max(rb, 4)
}

func matMulAVX2(out []float32, ldo int, x []float32, seqs int, w []float32, n, rows int) {
	checkMatMul(len(out), ldo, len(x), seqs, len(w), n, rows)
	if seqs == 0 || rows == 0 {
		return
	}
	if n == 0 {
		for s := 0; s < seqs; s++ {
			clear(out[s*ldo : s*ldo+rows])
		}
		return
	}
	// Row blocks keep a block of weights in cache for the activation rows
	// left over after the groups of four; the X4 kernel itself uses each
	// weight row pair for all groups right after loading it.
	rb := max(rowBlock(n*4), 64)
	pf := 4 * n * 4
	blocks := seqs / 4
	for r0 := 0; r0 < rows; r0 += rb {
		nr := min(rb, rows-r0)
		wp := &w[r0*n]
		if blocks > 0 {
			matmulX4AVX2(&out[r0], ldo, &x[0], n, wp, n, nr, blocks, pf)
		}
		for s := 4 * blocks; s < seqs; s++ {
			matmulX1AVX2(&out[s*ldo+r0], &x[s*n], wp, n, nr)
		}
	}
}

func matMulQ8AVX2(out []float32, ldo int, x []Block, seqs int, w []Block, groups, rows int) {
	checkMatMul(len(out), ldo, len(x), seqs, len(w), groups, rows)
	if seqs == 0 || rows == 0 {
		return
	}
	if groups == 0 {
		for s := 0; s < seqs; s++ {
			clear(out[s*ldo : s*ldo+rows])
		}
		return
	}
	rb := rowBlock(groups * 36)
	for r0 := 0; r0 < rows; r0 += rb {
		nr := min(rb, rows-r0)
		wp := &w[r0*groups]
		s := 0
		for ; s+4 <= seqs; s += 4 {
			matmulQ8X4AVX2(&out[s*ldo+r0], ldo, &x[s*groups], wp, groups, nr)
		}
		for ; s < seqs; s++ {
			matmulQ8X1AVX2(&out[s*ldo+r0], &x[s*groups], wp, groups, nr)
		}
	}
}

// matMulAVX512 is matMulAVX2 with the groups of eight activation rows done
// by matmulX8AVX512, which loads each weight row once per eight activation
// rows instead of once per four. Weight rows past a multiple of four in a
// row block and activation rows past a multiple of eight go to the AVX2
// kernels, which round identically.
func matMulAVX512(out []float32, ldo int, x []float32, seqs int, w []float32, n, rows int) {
	checkMatMul(len(out), ldo, len(x), seqs, len(w), n, rows)
	if seqs == 0 || rows == 0 {
		return
	}
	if n == 0 {
		for s := 0; s < seqs; s++ {
			clear(out[s*ldo : s*ldo+rows])
		}
		return
	}
	rb := max(rowBlock(n*4), 64)
	pf := 4 * n * 4
	blocks8 := seqs / 8
	for r0 := 0; r0 < rows; r0 += rb {
		nr := min(rb, rows-r0)
		wp := &w[r0*n]
		s := 0
		if blocks8 > 0 {
			r4 := nr &^ 3
			if r4 > 0 {
				matmulX8AVX512(&out[r0], ldo, &x[0], n, wp, n, r4, blocks8)
			}
			if r4 < nr {
				matmulX4AVX2(&out[r0+r4], ldo, &x[0], n, &w[(r0+r4)*n], n, nr-r4, 2*blocks8, pf)
			}
			s = 8 * blocks8
		}
		if b4 := (seqs - s) / 4; b4 > 0 {
			matmulX4AVX2(&out[s*ldo+r0], ldo, &x[s*n], n, wp, n, nr, b4, pf)
			s += 4 * b4
		}
		for ; s < seqs; s++ {
			matmulX1AVX2(&out[s*ldo+r0], &x[s*n], wp, n, nr)
		}
	}
}
