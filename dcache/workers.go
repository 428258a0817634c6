package dcache

import (
	"sync"
	"time"
)

// workers runs Olric calls on goroutines that outlive one call. A goroutine
// started per call (as call once did) began with a small stack and grew it by
// copying on every get, about 5% of a cache hit's CPU; a worker keeps its
// stack from call to call. A call never waits for a worker: with none idle it
// starts a new one, so a worker stuck on a hung member holds up nothing, and
// the callers' maxInflight check bounds how many there are.
type workers struct {
	jobs chan func()
	// idle is how long a worker waits for its next job before it exits.
	idle     time.Duration
	stop     chan struct{}
	stopOnce sync.Once
}

func newWorkers(idle time.Duration) *workers {
	return &workers{jobs: make(chan func()), idle: idle, stop: make(chan struct{})}
}

// run starts job on an idle worker, or on a new one when none is idle.
func (w *workers) run(job func()) {
	select {
	case w.jobs <- job:
	default:
		go w.work(job)
	}
}

func (w *workers) work(job func()) {
	job()
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		select {
		case job := <-w.jobs:
			job()
			t.Reset(w.idle)
		case <-t.C:
			return
		case <-w.stop:
			return
		}
	}
}

// close makes idle workers exit, and busy ones once their job is done.
func (w *workers) close() { w.stopOnce.Do(func() { close(w.stop) }) }
