package engine

import (
	"sync"
	"sync/atomic"
)

// pool is a fixed set of worker goroutines that split each parallel phase
// of a step. A phase is a number of items; participants (the workers and the
// caller) claim items from an atomic counter until none are left, so uneven
// items balance themselves. Workers live as long as the pool, so a step
// costs one wake-up per worker per phase, not a goroutine per row.
type pool struct {
	size  int
	start []chan struct{}
	wg    sync.WaitGroup
	quit  chan struct{}
	done  sync.WaitGroup

	job   func(worker, item int)
	items int64
	next  atomic.Int64
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
			p.wg.Done()
		case <-p.quit:
			return
		}
	}
}

func (p *pool) work(id int) {
	for {
		i := p.next.Add(1) - 1
		if i >= p.items {
			return
		}
		p.job(id, int(i))
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
	if items == 1 || p.size == 1 {
		for i := 0; i < items; i++ {
			job(0, i)
		}
		return
	}
	p.job = job
	p.items = int64(items)
	p.next.Store(0)
	helpers := min(len(p.start), items-1)
	p.wg.Add(helpers)
	for _, c := range p.start[:helpers] {
		c <- struct{}{}
	}
	p.work(0)
	p.wg.Wait()
	p.job = nil
}

// close stops the workers.
func (p *pool) close() {
	close(p.quit)
	p.done.Wait()
}
