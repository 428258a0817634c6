package kernels

import "math"

// Expf is e^x in float32 by Cephes' expf (reduce by ln 2, a degree-5
// polynomial, scale by the exponent bits): within 2 ulp of exact. The AVX2
// kernels use the same steps with FMA. Outside [-87, 88] it defers to
// math.Exp, which handles overflow, denormals and NaN.
func Expf(x float32) float32 {
	if !(x > -87 && x < 88) {
		return float32(math.Exp(float64(x)))
	}
	t := x*1.44269504088896341 + 0.5
	n := float32(int32(t))
	if n > t { // floor for negative t
		n--
	}
	r := x - n*0.693359375
	r -= n * -2.12194440e-4
	p := ((((1.9875691500e-4*r+1.3981999507e-3)*r+8.3334519073e-3)*r+4.1665795894e-2)*r+1.6666665459e-1)*r + 5.0000001201e-1
	p = p*(r*r) + r + 1
	return p * math.Float32frombits(uint32(int32(n)+127)<<23)
}

// ExpSumGo is the pure-Go ExpSum.
func ExpSumGo(dst, src []float32, shift float32) float32 {
	src = src[:len(dst)]
	var l [8]float32
	i := 0
	for ; i+8 <= len(dst); i += 8 {
		for j := 0; j < 8; j++ {
			e := Expf(src[i+j] - shift)
			dst[i+j] = e
			l[j] += e
		}
	}
	s := hsum8(&l)
	for ; i < len(dst); i++ {
		e := Expf(src[i] - shift)
		dst[i] = e
		s += e
	}
	return s
}

// SiLUMulGo is the pure-Go SiLUMul.
func SiLUMulGo(h, g []float32) {
	g = g[:len(h)]
	for i, v := range h {
		v *= 1 / (1 + Expf(-v))
		h[i] = v * g[i]
	}
}
