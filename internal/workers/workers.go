// Package workers runs jobs on goroutines that outlive one job.
//
// A goroutine started per job begins with a small stack and grows it by
// copying whenever the job goes deeper than the last one did: an Olric get,
// a model backend's batch or a coalesced cache miss each paid for that on
// every request (runtime.newstack was 5% of a cache hit's CPU when the
// cache's calls ran that way, and 8% of a stored miss's). A worker keeps
// the stack it grew from job to job. A job never waits for a worker: with
// none idle it starts a new one, so a job stuck on a hung peer holds up
// nothing, and the callers' own limits bound how many run at once.
package workers

import (
	"sync"
	"time"
)

// Config is a pool's configuration.
type Config struct {
	// Idle is how long a worker waits for its next job before it exits.
	// Zero means one second.
	Idle time.Duration
}

// Pool hands jobs to idle workers.
type Pool struct {
	jobs     chan func()
	idle     time.Duration
	stop     chan struct{}
	stopOnce sync.Once
}

// New returns a pool with no workers; they start with the first jobs.
func New(cfg Config) *Pool {
	if cfg.Idle <= 0 {
		cfg.Idle = time.Second
	}
	return &Pool{jobs: make(chan func()), idle: cfg.Idle, stop: make(chan struct{})}
}

// Go runs job on an idle worker, or on a new one when none is idle. After
// Close it still runs job, on a goroutine that exits once job returns.
func (p *Pool) Go(job func()) {
	select {
	case p.jobs <- job:
	default:
		go p.work(job)
	}
}

func (p *Pool) work(job func()) {
	job()
	t := time.NewTimer(p.idle)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		select {
		case job := <-p.jobs:
			job()
			t.Reset(p.idle)
		case <-t.C:
			return
		case <-p.stop:
			return
		}
	}
}

// Close makes idle workers exit, and busy ones once their job is done.
func (p *Pool) Close() { p.stopOnce.Do(func() { close(p.stop) }) }
