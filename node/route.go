package node

import (
	"math"
	"time"

	"github.com/shoal-dev/shoal/engine"
)

// watchBackend exports what a model's backend measures beyond the
// scheduler's view (the engine's prefix cache) and hands it to tests.
func (n *Node) watchBackend(model string, backend any) {
	if eb, ok := backend.(*engine.Backend); ok {
		n.metrics.WatchPrefixCache(model, func() (uint64, uint64) {
			st := eb.Stats()
			return st.PrefixLookupTokens, st.PrefixHitTokens
		})
	}
	if f := n.cfg.Tuning.Backend; f != nil {
		f(model, backend)
	}
}

// roughly rounds a measured cost to two significant digits for the load
// report: routing needs no finer, and the report is only sent when it
// changed, so a cost that wobbles with every batch would otherwise send one
// per publish interval.
func roughly(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	scale := math.Pow(10, math.Floor(math.Log10(float64(d)))-1)
	return time.Duration(math.Round(float64(d)/scale) * scale)
}
