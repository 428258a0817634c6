package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkMatMul reports multiply-accumulates per second for a 768x288
// matrix (the default model's FFN shape) against 1..16 activation rows.
func BenchmarkMatMul(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	const rows, n = 768, 288
	w := randVec(r, rows*n)
	wq := quantizeRows(w, rows, n)
	all := []Set{Generic()}
	if s, ok := AVX2(); ok {
		all = append(all, s)
	}
	if s, ok := AVX512(); ok {
		all = append(all, s)
	}
	for _, set := range all {
		for _, seqs := range []int{1, 4, 16} {
			x := randVec(r, seqs*n)
			xq := quantizeRows(x, seqs, n)
			out := make([]float32, seqs*rows)
			b.Run(fmt.Sprintf("%s/f32/seqs=%d", set.Name, seqs), func(b *testing.B) {
				for b.Loop() {
					set.MatMul(out, rows, x, seqs, w, n, rows)
				}
				b.ReportMetric(float64(b.N)*rows*n*float64(seqs)/b.Elapsed().Seconds()/1e9, "GMAC/s")
			})
			b.Run(fmt.Sprintf("%s/q8/seqs=%d", set.Name, seqs), func(b *testing.B) {
				for b.Loop() {
					set.MatMulQ8(out, rows, xq, seqs, wq, Groups(n), rows)
				}
				b.ReportMetric(float64(b.N)*rows*n*float64(seqs)/b.Elapsed().Seconds()/1e9, "GMAC/s")
			})
		}
	}
}

// BenchmarkMatMulStreaming multiplies a 32 MiB weight matrix, too big for
// the caches, like a whole model's weights in one step.
func BenchmarkMatMulStreaming(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	const rows, n = 28672, 288
	w := randVec(r, rows*n)
	set := Best()
	for _, seqs := range []int{1, 4, 16, 32} {
		x := randVec(r, seqs*n)
		out := make([]float32, seqs*rows)
		b.Run(fmt.Sprintf("%s/seqs=%d", set.Name, seqs), func(b *testing.B) {
			for b.Loop() {
				for r0 := 0; r0 < rows; r0 += 64 {
					set.MatMul(out[r0:], rows, x, seqs, w[r0*n:(r0+64)*n], n, 64)
				}
			}
			b.ReportMetric(float64(b.N)*rows*n*float64(seqs)/b.Elapsed().Seconds()/1e9, "GMAC/s")
			b.ReportMetric(float64(b.N)*rows*n*4/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}
