package scheduler

import "time"

// serviceFit estimates how long a batch of n tasks takes on this node,
// T(n) = base + perItem*n, by least squares over recent batches with
// exponentially decaying weights: a node that slows down (thermal
// throttling, a noisy neighbour, a bigger model) shows it within a few
// batches, and routers that read the fit from its load report move work
// away. The fit has a memory: once no batch has finished for that long it
// is forgotten (see estimateAt). Callers hold the model's lock.
type serviceFit struct {
	w, sn, sd, snn, snd float64
	samples             int
	// last is when the newest sample was added; memory is how long the fit
	// counts after it (zero: forever).
	last   time.Time
	memory time.Duration
}

// serviceDecay weighs each earlier sample down per new one: about the last
// ten batches count.
const serviceDecay = 0.85

// add records a batch of n tasks that took d, finished at now. A fit past
// its memory starts over, so the new batch is not outweighed by the old
// ones that made routers stop sending work here.
func (f *serviceFit) add(n int, d time.Duration, now time.Time) {
	if f.expired(now) {
		*f = serviceFit{memory: f.memory}
	}
	f.last = now
	x, y := float64(n), float64(d)
	f.w = f.w*serviceDecay + 1
	f.sn = f.sn*serviceDecay + x
	f.sd = f.sd*serviceDecay + y
	f.snn = f.snn*serviceDecay + x*x
	f.snd = f.snd*serviceDecay + x*y
	f.samples++
}

// expired says whether the fit is past its memory at now.
func (f *serviceFit) expired(now time.Time) bool {
	return f.memory > 0 && f.samples > 0 && now.Sub(f.last) > f.memory
}

// estimateAt is estimate, or zero (unmeasured) once the fit is past its
// memory. Routers rank a node by its fit only while it is fresh: at light
// load a node whose last batches were slow (a cold start, a backend that
// failed slowly, a passing stall) gets no work, so nothing would ever
// correct its fit and peers would keep taking its requests over a hop. An
// unmeasured node is ranked at the mean of its peers, where it wins ties
// for its own requests and is measured anew. A node that really is slower
// pays one probe per memory for it.
func (f *serviceFit) estimateAt(now time.Time) (base, perItem time.Duration) {
	if f.expired(now) {
		return 0, 0
	}
	return f.estimate()
}

// estimate returns the fitted base and per-item cost; zero before the first
// sample. When recent batches all had about the same size the slope is
// unknowable, so the whole mean cost is the base (a conservative T(n) for
// smaller batches); a negative intercept or slope from noise is clamped.
func (f *serviceFit) estimate() (base, perItem time.Duration) {
	if f.samples == 0 || f.w == 0 {
		return 0, 0
	}
	meanN, meanD := f.sn/f.w, f.sd/f.w
	varN := f.snn/f.w - meanN*meanN
	if varN < 0.25 {
		return time.Duration(meanD), 0
	}
	b := (f.snd/f.w - meanN*meanD) / varN
	a := meanD - b*meanN
	switch {
	case b < 0:
		return time.Duration(meanD), 0
	case a < 0:
		return 0, time.Duration(meanD / max(meanN, 1))
	}
	return time.Duration(a), time.Duration(b)
}
