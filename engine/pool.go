package engine

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// ticket packs a phase's generation, item count and next unclaimed item
// into one word, so that claiming an item is one compare-and-swap that also
// proves the phase is still the current one.
const (
	ticketBits = 20
	ticketMask = 1<<ticketBits - 1
	maxItems   = ticketMask
)

// pool is a fixed set of worker goroutines that split each parallel phase
// of a step. A phase is a number of items; the caller and the workers claim
// items until none are left, so uneven items balance themselves. Workers
// live as long as the pool: a step costs a wake-up signal per worker per
// phase, not a goroutine per row. The caller never waits for a worker to
// wake up, only for items a worker has claimed and is running: on a busy
// machine a worker that is late simply finds no work and sleeps again.
type pool struct {
	size  int
	start []chan struct{}
	quit  chan struct{}
	done  sync.WaitGroup

	ticket    atomic.Uint64
	completed atomic.Int64
	gen       uint64
	job       func(worker, item int)
}

// newPool starts size-1 workers; the caller of run is the last participant.
func newPool(size int) *pool {
	p := &pool{size: max(size, 1), quit: make(chan struct{})}
	p.start = make([]chan struct{}, p.size-1)
	for i := range p.start {
		p.start[i] = make(chan struct{}, 1)
		p.done.Add(1)
		go p.worker(i+1, p.start[i])
	}
	return p
}

func (p *pool) worker(id int, start <-chan struct{}) {
	defer p.done.Done()
	for {
		select {
		case <-start:
			p.work(id)
		case <-p.quit:
			return
		}
	}
}

// work claims and runs items of the current phase until none are left.
func (p *pool) work(id int) {
	for {
		t := p.ticket.Load()
		next, items := t&ticketMask, (t>>ticketBits)&ticketMask
		if next >= items {
			return
		}
		if !p.ticket.CompareAndSwap(t, t+1) {
			continue
		}
		// The phase cannot end (nor p.job change) before this item is
		// counted as completed.
		p.job(id, int(next))
		p.completed.Add(1)
	}
}

// run calls job(worker, item) for every item in [0, items) across the pool
// and returns when all are done. worker is in [0, size) and no two
// concurrent calls share one, so it can index per-worker scratch space.
// run itself must not be called concurrently.
func (p *pool) run(items int, job func(worker, item int)) {
	if items <= 0 {
		return
	}
	if items == 1 || p.size == 1 || items > maxItems {
		for i := 0; i < items; i++ {
			job(0, i)
		}
		return
	}
	p.job = job
	p.completed.Store(0)
	p.gen++
	p.ticket.Store(p.gen<<(2*ticketBits) | uint64(items)<<ticketBits)
	for _, c := range p.start[:min(len(p.start), items-1)] {
		select {
		case c <- struct{}{}:
		default: // already signalled; it will see this phase when it runs
		}
	}
	p.work(0)
	// Only claimed items remain, and they are running right now.
	for p.completed.Load() < int64(items) {
		runtime.Gosched()
	}
}

// close stops the workers.
func (p *pool) close() {
	close(p.quit)
	p.done.Wait()
}
