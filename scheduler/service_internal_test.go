package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestServiceFit(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name      string
		batches   [][2]int // size, ms
		base, per time.Duration
	}{
		{"empty", nil, 0, 0},
		{"linear", [][2]int{{1, 22}, {8, 36}, {4, 28}, {2, 24}}, 20 * ms, 2 * ms},
		{"one size only", [][2]int{{8, 144}, {8, 144}}, 144 * ms, 0},
		// The later batch weighs more: (50*0.85+30)/1.85 ms.
		{"negative slope clamps", [][2]int{{1, 50}, {8, 30}}, 39189 * time.Microsecond, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f serviceFit
			for _, b := range tc.batches {
				f.add(b[0], time.Duration(b[1])*ms, time.Time{})
			}
			base, per := f.estimate()
			require.InDelta(t, float64(tc.base), float64(base), float64(ms)/10)
			require.InDelta(t, float64(tc.per), float64(per), float64(ms)/10)
		})
	}
}

// A node that slows down shows it in its fit within a few batches.
func TestServiceFitFollowsSlowdown(t *testing.T) {
	ms := time.Millisecond
	var f serviceFit
	for i := 0; i < 50; i++ {
		f.add(8, 36*ms, time.Time{})
	}
	for i := 0; i < 8; i++ {
		f.add(8, 144*ms, time.Time{})
	}
	base, per := f.estimate()
	require.Greater(t, base+8*per, 100*ms)
}

// A fit is forgotten once no batch finished for its memory: a node whose
// last batches were slow is reported unmeasured (so routers rank it like
// its peers and send it work again), and the first batch after that
// starts a new fit instead of being outweighed by the old slow ones.
func TestServiceFitIsForgottenAfterItsMemory(t *testing.T) {
	ms := time.Millisecond
	t0 := time.Unix(1000, 0)
	f := serviceFit{memory: 10 * time.Second}
	for i := range 5 {
		f.add(1, 200*ms, t0.Add(time.Duration(i)*ms))
	}
	last := t0.Add(4 * ms)
	base, _ := f.estimateAt(last.Add(10 * time.Second))
	require.Equal(t, 200*ms, base, "within its memory the fit counts")
	base, per := f.estimateAt(last.Add(10*time.Second + ms))
	require.Zero(t, base+per, "past its memory the fit is unmeasured")

	f.add(1, 2*ms, last.Add(11*time.Second))
	base, _ = f.estimateAt(last.Add(11 * time.Second))
	require.Equal(t, 2*ms, base, "the first batch after the memory starts a new fit")

	// Without a memory (zero) the fit counts forever.
	g := serviceFit{}
	g.add(1, 200*ms, t0)
	base, _ = g.estimateAt(t0.Add(24 * time.Hour))
	require.Equal(t, 200*ms, base)
}
