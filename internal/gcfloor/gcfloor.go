// Package gcfloor keeps the Go garbage collector's heap goal at or above a
// floor.
//
// The runtime sets the next collection at the live heap plus GOGC percent of
// it (and of the stacks and globals). A gateway node serving from its cache
// keeps a live heap of a few MiB while allocating hundreds of MiB a second
// in short-lived request garbage, so with GOGC=100 it collects dozens of
// times a second, each cycle paying fixed costs (phase changes, stack
// scans, sweeping) for almost no memory. A floor gives the collector room
// where room is cheap: while live + GOGC% is below the floor, the percent
// is raised so the goal is the floor; once the live heap is large (a full
// response cache, a loaded engine model), the percent is the configured one
// again and memory grows exactly as it would without the floor. The heap
// never exceeds max(floor, what GOGC alone allows), and GOMEMLIMIT, when set,
// still bounds it.
//
// The percent is recomputed after every collection (a cleanup on a
// sentinel object runs once the collection that freed it ends), so it
// follows the live heap within a cycle.
package gcfloor

import (
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Config is a floor's configuration.
type Config struct {
	// Floor is the heap goal, in bytes, the collector is kept at or above.
	// Zero disables the floor.
	Floor uint64
	// Logger receives the start and stop records; nil discards them.
	Logger *slog.Logger
}

// maxPercent bounds the percent the floor sets (a 1 TiB floor asks for
// 2.6 million), so it stays in an int on every platform.
const maxPercent = 1 << 30

// The runtime/metrics samples the computation reads.
const (
	mGOGC    = "/gc/gogc:percent"
	mLive    = "/gc/heap/live:bytes"
	mStacks  = "/gc/scan/stack:bytes"
	mGlobals = "/gc/scan/globals:bytes"
)

// Floor holds the collector's heap goal at or above a floor until Stop.
type Floor struct {
	floor  uint64
	base   int
	logger *slog.Logger

	mu      sync.Mutex
	stopped bool
	percent int
	samples []metrics.Sample
}

// sentinel is the object whose cleanup marks the end of a collection. It
// is larger than the tiny allocator's blocks, which would keep it alive
// with unrelated objects.
type sentinel struct{ _ [32]byte }

// Start raises the collector's percent whenever the heap goal would fall
// below cfg.Floor. With GOGC=off there is no goal to raise and Start
// returns nil, nil; a zero floor does the same.
func Start(cfg Config) (*Floor, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Floor == 0 {
		return nil, nil
	}
	f := &Floor{floor: cfg.Floor, logger: logger}
	f.samples = []metrics.Sample{{Name: mGOGC}, {Name: mLive}, {Name: mStacks}, {Name: mGlobals}}
	metrics.Read(f.samples)
	for _, s := range f.samples {
		if s.Value.Kind() != metrics.KindUint64 {
			return nil, fmt.Errorf("gc floor: runtime metric %s is not available", s.Name)
		}
	}
	// GOGC=off reads as -1 stored in a uint64.
	base := int64(f.samples[0].Value.Uint64())
	if base < 0 {
		logger.Info("gc heap floor not applied: GOGC=off", "floor_bytes", cfg.Floor)
		return nil, nil
	}
	f.base = int(base)
	f.percent = f.base
	f.mu.Lock()
	f.adjustLocked()
	f.mu.Unlock()
	f.arm()
	logger.Info("gc heap floor", "floor_bytes", cfg.Floor, "gogc", f.base)
	return f, nil
}

// Percent is the collector's percent as the floor last set it.
func (f *Floor) Percent() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.percent
}

// Stop gives the collector its configured percent back. It is safe to call
// on a nil Floor and more than once.
func (f *Floor) Stop() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return
	}
	f.stopped = true
	if f.percent != f.base {
		debug.SetGCPercent(f.base)
		f.percent = f.base
	}
	f.logger.Info("gc heap floor stopped", "gogc", f.base)
}

// arm allocates a sentinel whose cleanup runs after the collection that
// frees it, and re-arms from there.
func (f *Floor) arm() {
	runtime.AddCleanup(new(sentinel), func(f *Floor) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.stopped {
			return
		}
		f.adjustLocked()
		f.arm()
	}, f)
}

// adjustLocked sets the percent whose goal is the floor, or the base
// percent once that goal is above the floor already.
func (f *Floor) adjustLocked() {
	metrics.Read(f.samples)
	live := f.samples[1].Value.Uint64()
	if live == 0 {
		// No collection has ended yet, so the runtime's base for the
		// goal is its own start-up minimum, not a live heap: a percent
		// computed here would multiply that. The first collection's
		// cleanup sets it.
		return
	}
	roots := f.samples[2].Value.Uint64() + f.samples[3].Value.Uint64()
	p := Percent(f.floor, f.base, live, roots)
	if p != f.percent {
		debug.SetGCPercent(p)
		f.percent = p
	}
}

// runtimeHeapMinimum is the runtime's smallest heap goal at GOGC=100; it
// scales with the percent (4 MiB x GOGC/100), so a raised percent raises
// this minimum too and it bounds the percent a floor can use.
const runtimeHeapMinimum = 4 << 20

// Percent is the GOGC percent whose heap goal is the floor, given the live
// heap and the GC roots (stacks and globals) the runtime adds to it, or base
// when base's own goal reaches the floor. The runtime's goal is the larger
// of live + (live+roots)*percent/100 and 4 MiB*percent/100.
func Percent(floor uint64, base int, live, roots uint64) int {
	scan := live + roots
	if live == 0 || live >= floor || live+scan*uint64(base)/100 >= floor {
		return base
	}
	p := min((floor-live)*100/scan, floor*100/runtimeHeapMinimum, maxPercent)
	return max(int(p), base)
}
