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
				f.add(b[0], time.Duration(b[1])*ms)
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
		f.add(8, 36*ms)
	}
	for i := 0; i < 8; i++ {
		f.add(8, 144*ms)
	}
	base, per := f.estimate()
	require.Greater(t, base+8*per, 100*ms)
}
