package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

func avx2OrSkip(t testing.TB) Set {
	s, ok := AVX2()
	if !ok {
		t.Skip("CPU has no AVX2+FMA; only the Go kernels run here")
	}
	return s
}

// requireClose fails unless got is within tol of want, relative to the scale
// of the summed magnitudes (a dot product's rounding error grows with it).
func requireClose(t *testing.T, want, got, scale float64, tol float64, msg string, args ...any) {
	t.Helper()
	if math.Abs(want-got) > tol*math.Max(scale, 1e-6) {
		t.Fatalf("%s: want %g got %g (scale %g)", fmt.Sprintf(msg, args...), want, got, scale)
	}
}

func naiveDot(a, b []float32) (dot, scale float64) {
	for i := range a {
		dot += float64(a[i]) * float64(b[i])
		scale += math.Abs(float64(a[i]) * float64(b[i]))
	}
	return dot, scale
}

var sizes = []int{0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 48, 63, 64, 65, 288, 291, 768}

func TestDotMatchesFloat64Reference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, set := range sets(t) {
		for _, n := range sizes {
			a, b := randVec(r, n), randVec(r, n)
			want, scale := naiveDot(a, b)
			got := set.Dot(a, b)
			requireClose(t, want, float64(got), scale, 1e-5, "%s dot n=%d", set.Name, n)
		}
	}
}

func TestAxpyMatchesGo(t *testing.T) {
	avx := avx2OrSkip(t)
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range sizes {
		x := randVec(r, n)
		y1 := randVec(r, n)
		y2 := append([]float32(nil), y1...)
		a := float32(r.NormFloat64())
		AxpyGo(y1, a, x)
		avx.Axpy(y2, a, x)
		for i := range y1 {
			requireClose(t, float64(y1[i]), float64(y2[i]), math.Abs(float64(y1[i]))+math.Abs(float64(a*x[i])), 1e-6, "axpy n=%d i=%d", n, i)
		}
	}
}

func sets(t *testing.T) []Set {
	out := []Set{Generic()}
	if s, ok := AVX2(); ok {
		out = append(out, s)
	} else {
		t.Log("no AVX2+FMA on this CPU; testing the Go kernels only")
	}
	if s, ok := AVX512(); ok {
		out = append(out, s)
	}
	return out
}

func TestMatMulAVX2MatchesGo(t *testing.T) {
	avx := avx2OrSkip(t)
	r := rand.New(rand.NewPCG(5, 6))
	for trial := 0; trial < 60; trial++ {
		n := sizes[r.IntN(len(sizes))]
		rows := 1 + r.IntN(70)
		seqs := 1 + r.IntN(11)
		ldo := rows + r.IntN(3)
		w := randVec(r, rows*n)
		x := randVec(r, seqs*n)
		want := make([]float32, seqs*ldo)
		got := make([]float32, seqs*ldo)
		MatMulGo(want, ldo, x, seqs, w, n, rows)
		avx.MatMul(got, ldo, x, seqs, w, n, rows)
		for s := 0; s < seqs; s++ {
			for i := 0; i < rows; i++ {
				_, scale := naiveDot(w[i*n:(i+1)*n], x[s*n:(s+1)*n])
				requireClose(t, float64(want[s*ldo+i]), float64(got[s*ldo+i]), scale, 1e-5, "matmul n=%d rows=%d seqs=%d s=%d r=%d", n, rows, seqs, s, i)
			}
		}
	}
}

// The AVX-512 matmul must round exactly like the AVX2 one (and so stay close
// to Go) for any shape: batches with and without a multiple of eight rows,
// row blocks with and without a multiple of four weight rows, odd lengths.
func TestMatMulAVX512MatchesAVX2AndGo(t *testing.T) {
	avx := avx2OrSkip(t)
	avx512, ok := AVX512()
	if !ok {
		t.Skip("CPU has no AVX-512F/VL")
	}
	r := rand.New(rand.NewPCG(11, 12))
	for trial := 0; trial < 80; trial++ {
		n := sizes[r.IntN(len(sizes))]
		rows := 1 + r.IntN(150)
		seqs := 1 + r.IntN(27)
		ldo := rows + r.IntN(3)
		w := randVec(r, rows*n)
		x := randVec(r, seqs*n)
		want := make([]float32, seqs*ldo)
		ref := make([]float32, seqs*ldo)
		got := make([]float32, seqs*ldo)
		MatMulGo(ref, ldo, x, seqs, w, n, rows)
		avx.MatMul(want, ldo, x, seqs, w, n, rows)
		avx512.MatMul(got, ldo, x, seqs, w, n, rows)
		require.Equal(t, want, got, "avx512 vs avx2 n=%d rows=%d seqs=%d ldo=%d", n, rows, seqs, ldo)
		for s := 0; s < seqs; s++ {
			for i := 0; i < rows; i++ {
				_, scale := naiveDot(w[i*n:(i+1)*n], x[s*n:(s+1)*n])
				requireClose(t, float64(ref[s*ldo+i]), float64(got[s*ldo+i]), scale, 1e-5, "matmul n=%d rows=%d seqs=%d s=%d r=%d", n, rows, seqs, s, i)
			}
		}
	}
}

// A sequence's results must be bit-identical whether it runs alone or in a
// batch, whatever its position: the engine's batched output equals its
// unbatched output only because of this.
func TestMatMulIsBatchInvariant(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, set := range sets(t) {
		for _, n := range []int{5, 16, 45, 288} {
			rows, seqs := 37, 19
			w := randVec(r, rows*n)
			x := randVec(r, seqs*n)
			batched := make([]float32, seqs*rows)
			set.MatMul(batched, rows, x, seqs, w, n, rows)
			for s := 0; s < seqs; s++ {
				alone := make([]float32, rows)
				set.MatMul(alone, rows, x[s*n:(s+1)*n], 1, w, n, rows)
				require.Equal(t, alone, batched[s*rows:(s+1)*rows], "%s n=%d seq %d", set.Name, n, s)
				// and against a single dot product
				for i := 0; i < rows; i++ {
					require.Equal(t, set.Dot(w[i*n:(i+1)*n], x[s*n:(s+1)*n]), alone[i], "%s dot vs matmul n=%d", set.Name, n)
				}
			}
		}
	}
}

func quantizeRows(x []float32, rows, n int) []Block {
	g := Groups(n)
	out := make([]Block, rows*g)
	for i := 0; i < rows; i++ {
		Quantize(out[i*g:(i+1)*g], x[i*n:(i+1)*n])
	}
	return out
}

func TestQuantizeRoundTripWithinHalfStep(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, n := range sizes {
		x := randVec(r, n)
		q := make([]Block, Groups(n))
		Quantize(q, x)
		back := make([]float32, n)
		Dequantize(back, q)
		for i := range x {
			d := q[i/GroupSize].D
			require.LessOrEqual(t, math.Abs(float64(x[i]-back[i])), float64(d)/2*1.0001, "n=%d i=%d", n, i)
		}
		for _, b := range q {
			for _, v := range b.Q {
				require.GreaterOrEqual(t, v, int8(-127))
			}
		}
	}
}

func TestQuantizeHandlesZeroAndNonFinite(t *testing.T) {
	q := make([]Block, 2)
	Quantize(q, make([]float32, 40))
	require.Equal(t, float32(0), q[0].D)
	nan := float32(math.NaN())
	inf := float32(math.Inf(1))
	Quantize(q, []float32{nan, 1, inf, -inf, 2})
	for _, b := range q {
		for _, v := range b.Q {
			require.GreaterOrEqual(t, v, int8(-127))
		}
	}
}

func TestMatMulQ8MatchesExactIntegerSum(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, set := range sets(t) {
		for trial := 0; trial < 40; trial++ {
			n := 1 + r.IntN(300)
			g := Groups(n)
			rows := 1 + r.IntN(40)
			seqs := 1 + r.IntN(9)
			w := quantizeRows(randVec(r, rows*n), rows, n)
			x := quantizeRows(randVec(r, seqs*n), seqs, n)
			out := make([]float32, seqs*rows)
			set.MatMulQ8(out, rows, x, seqs, w, g, rows)
			for s := 0; s < seqs; s++ {
				for i := 0; i < rows; i++ {
					var want, scale float64
					for k := 0; k < g; k++ {
						wb, xb := w[i*g+k], x[s*g+k]
						var is, abs int64
						for j := 0; j < GroupSize; j++ {
							prod := int64(wb.Q[j]) * int64(xb.Q[j])
							is += prod
							abs += max(prod, -prod)
						}
						p := float64(wb.D) * float64(xb.D)
						want += float64(is) * p
						scale += float64(abs) * p
					}
					requireClose(t, want, float64(out[s*rows+i]), scale, 1e-5, "%s q8 n=%d rows=%d seqs=%d", set.Name, n, rows, seqs)
				}
			}
		}
	}
}

func TestMatMulQ8AVX2MatchesGo(t *testing.T) {
	avx := avx2OrSkip(t)
	r := rand.New(rand.NewPCG(13, 14))
	for trial := 0; trial < 40; trial++ {
		n := 1 + r.IntN(800)
		g := Groups(n)
		rows := 1 + r.IntN(50)
		seqs := 1 + r.IntN(9)
		w := quantizeRows(randVec(r, rows*n), rows, n)
		x := quantizeRows(randVec(r, seqs*n), seqs, n)
		want := make([]float32, seqs*rows)
		got := make([]float32, seqs*rows)
		MatMulQ8Go(want, rows, x, seqs, w, g, rows)
		avx.MatMulQ8(got, rows, x, seqs, w, g, rows)
		for i := range want {
			requireClose(t, float64(want[i]), float64(got[i]), math.Abs(float64(want[i]))+1, 1e-4, "q8 n=%d i=%d", n, i)
		}
	}
}

func TestMatMulQ8IsBatchInvariant(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	for _, set := range sets(t) {
		n, rows, seqs := 96, 23, 9
		g := Groups(n)
		w := quantizeRows(randVec(r, rows*n), rows, n)
		x := quantizeRows(randVec(r, seqs*n), seqs, n)
		batched := make([]float32, seqs*rows)
		set.MatMulQ8(batched, rows, x, seqs, w, g, rows)
		for s := 0; s < seqs; s++ {
			alone := make([]float32, rows)
			set.MatMulQ8(alone, rows, x[s*g:(s+1)*g], 1, w, g, rows)
			require.Equal(t, alone, batched[s*rows:(s+1)*rows], "%s seq %d", set.Name, s)
		}
	}
}

func TestMatMulPanicsOnShortSlices(t *testing.T) {
	for _, set := range sets(t) {
		require.Panics(t, func() { set.MatMul(make([]float32, 3), 4, make([]float32, 8), 2, make([]float32, 16), 4, 4) }, set.Name)
	}
}

func TestAxpyRowsMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	for _, set := range sets(t) {
		for _, n := range []int{1, 5, 8, 13, 32, 45, 48, 70} {
			for _, rows := range []int{1, 3, 16} {
				ldx := n + r.IntN(3)
				x := randVec(r, (rows-1)*ldx+n)
				a := randVec(r, rows)
				y := randVec(r, n)
				got := append([]float32(nil), y...)
				set.AxpyRows(got, a, x, ldx)
				for i := range y {
					want, scale := float64(y[i]), math.Abs(float64(y[i]))
					for k := range a {
						p := float64(a[k]) * float64(x[k*ldx+i])
						want += p
						scale += math.Abs(p)
					}
					requireClose(t, want, float64(got[i]), scale, 1e-5, "%s axpyrows n=%d rows=%d i=%d", set.Name, n, rows, i)
				}
			}
		}
	}
}

func TestExpfWithinTwoUlp(t *testing.T) {
	for x := float32(-90); x < 90; x += 0.0137 {
		want := math.Exp(float64(x))
		got := float64(Expf(x))
		if want < math.SmallestNonzeroFloat32*(1<<23) || want > math.MaxFloat32 {
			continue
		}
		ulp := float64(math.Nextafter32(float32(want), float32(math.Inf(1))) - float32(want))
		require.LessOrEqual(t, math.Abs(got-want), 2*ulp, "x=%g", x)
	}
	require.True(t, math.IsInf(float64(Expf(100)), 1))
	require.Equal(t, float32(0), Expf(-200))
	require.True(t, math.IsNaN(float64(Expf(float32(math.NaN())))))
	require.Equal(t, float32(1), Expf(0))
}

func TestExpSumAndSiLUMatchFloat64(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 20))
	for _, set := range sets(t) {
		for _, n := range []int{1, 7, 8, 9, 31, 300, 4096} {
			src := randVec(r, n)
			for i := range src {
				src[i] *= 8
			}
			dst := make([]float32, n)
			shift := float32(3)
			sum := set.ExpSum(dst, src, shift)
			var want float64
			for i := range src {
				e := math.Exp(float64(src[i] - shift))
				want += e
				require.InEpsilon(t, e, float64(dst[i]), 4e-7, "%s exp n=%d i=%d", set.Name, n, i)
			}
			require.InEpsilon(t, want, float64(sum), 1e-5, "%s sum n=%d", set.Name, n)

			h := randVec(r, n)
			g := randVec(r, n)
			for i := range h {
				h[i] *= 4
			}
			got := append([]float32(nil), h...)
			set.SiLUMul(got, g)
			for i := range h {
				v := float64(h[i])
				w := v / (1 + math.Exp(-v)) * float64(g[i])
				require.InDelta(t, w, float64(got[i]), 1e-6*(math.Abs(w)+1e-3), "%s silu n=%d i=%d v=%g", set.Name, n, i, v)
			}
		}
	}
}
