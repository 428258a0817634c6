package scheduler

import (
	"context"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/internal/workers"
)

// modelQueue batches and dispatches one model's tasks.
type modelQueue struct {
	name   string
	obs    Observer
	logger interface {
		Warn(msg string, args ...any)
	}
	batch Backend
	cont  ContinuousBackend
	// slots bounds concurrent batches for a batch backend.
	slots chan struct{}
	// exec runs batches, on the scheduler's workers.
	exec *workers.Pool

	mu       sync.Mutex
	settings Settings
	q        queue
	running  int // tasks handed to the backend and not finished
	batches  int // batches in flight
	idle     *sync.Cond
	// service is the measured batch duration by size (for a continuous
	// backend: request duration by concurrency), gossiped so routers can
	// predict completion.
	service serviceFit
	// draining stops runAlone: once drain has looked, work only enters
	// through the queue, which drain and failQueued account for.
	draining bool

	wake      chan struct{}
	stop      chan struct{}
	closeOnce sync.Once
	// backendOnce closes the backend once, however often Drain runs.
	backendOnce sync.Once
}

func (m *modelQueue) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// enqueue applies the per-priority share of the queue bound. Queue depth is
// reported under the lock throughout, so reports arrive in the order the
// queue changed and the gauge never sticks at a stale value.
func (m *modelQueue) enqueue(t *Task) error {
	m.mu.Lock()
	select {
	case <-m.stop:
		// The dispatcher is gone and the queue was failed; a task pushed
		// now would wait forever.
		m.mu.Unlock()
		return ErrDraining
	default:
	}
	limit := m.settings.MaxQueue
	switch t.req.Priority {
	case PriorityLow:
		limit = max(1, limit/2)
	case PriorityNormal:
		limit = max(1, limit*9/10)
	}
	if m.q.len() >= limit {
		m.mu.Unlock()
		return ErrQueueFull
	}
	m.q.push(t)
	m.obs.QueueDepth(m.name, m.q.len())
	m.mu.Unlock()
	m.signal()
	return nil
}

// runAlone starts t at once as a batch of its own when batching could add
// nothing: the model batches one task at a time, nothing is queued ahead of
// t and a slot is free. That is exactly what the dispatcher would do next,
// without the hand-off to it and back. It reports whether t was started.
func (m *modelQueue) runAlone(t *Task, inline bool) bool {
	if m.batch == nil {
		return false
	}
	m.mu.Lock()
	if m.settings.MaxSize != 1 || m.q.len() > 0 || m.draining {
		m.mu.Unlock()
		return false
	}
	select {
	case <-m.stop:
		m.mu.Unlock()
		return false
	default:
	}
	select {
	case m.slots <- struct{}{}:
	default:
		m.mu.Unlock()
		return false
	}
	m.batches++
	m.running++
	m.mu.Unlock()
	t.alone[0] = t
	if inline {
		m.execute(t.alone[:])
	} else {
		m.exec.Go(func() { m.execute(t.alone[:]) })
	}
	return true
}

// cancel removes a task whose context ended while it was queued.
func (m *modelQueue) cancel(t *Task) {
	m.mu.Lock()
	removed := m.q.remove(t)
	if removed {
		m.obs.QueueDepth(m.name, m.q.len())
		if m.idle != nil {
			m.idle.Broadcast()
		}
	}
	m.mu.Unlock()
	if removed {
		t.Finish(Result{}, t.ctx.Err())
	}
}

func (m *modelQueue) load() ModelLoad {
	m.mu.Lock()
	defer m.mu.Unlock()
	base, per := m.service.estimateAt(time.Now())
	return ModelLoad{QueueDepth: m.q.len(), ActiveBatches: m.batches, Running: m.running, Slots: m.settings.Slots,
		MaxBatch: m.settings.MaxSize, ServiceBase: base, ServicePerItem: per}
}

// runBatches is the dispatcher of a batch backend: it takes a free slot,
// then waits until the queue holds MaxSize tasks or its oldest task is
// FlushTimeout old, and runs that batch in the slot.
func (m *modelQueue) runBatches() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case m.slots <- struct{}{}:
		case <-m.stop:
			return
		}
		batch := m.nextBatch(timer)
		if batch == nil {
			return
		}
		m.exec.Go(func() { m.execute(batch) })
	}
}

// nextBatch blocks until a batch is due; nil means the scheduler stopped.
func (m *modelQueue) nextBatch(timer *time.Timer) []*Task {
	for {
		m.mu.Lock()
		st := m.settings
		n := m.q.len()
		now := time.Now()
		var wait time.Duration = -1
		if n > 0 {
			oldest, _ := m.q.oldest()
			due := oldest.Add(st.FlushTimeout)
			if n >= st.MaxSize || !now.Before(due) {
				batch := m.q.pop(st.MaxSize, now)
				m.batches++
				m.running += len(batch)
				m.obs.QueueDepth(m.name, m.q.len())
				m.mu.Unlock()
				return batch
			}
			wait = due.Sub(now)
		}
		m.mu.Unlock()
		if wait >= 0 {
			timer.Reset(wait)
		}
		var tc <-chan time.Time
		if wait >= 0 {
			tc = timer.C
		}
		select {
		case <-m.wake:
		case <-tc:
		case <-m.stop:
			return nil
		}
		if wait >= 0 && !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

func (m *modelQueue) execute(batch []*Task) {
	start := time.Now()
	for _, t := range batch {
		m.obs.QueueWait(m.name, start.Sub(t.enqueued))
	}
	m.obs.BatchStarted(m.name, len(batch))
	ctx, cancel := batchContext(batch)
	func() {
		defer func() {
			if r := recover(); r != nil {
				m.logger.Warn("backend panicked", "panic", r)
			}
		}()
		m.batch.Run(ctx, batch)
	}()
	cancel()
	for _, t := range batch {
		t.Finish(Result{}, ErrBackendDropped)
	}
	end := time.Now()
	took := end.Sub(start)
	m.obs.BatchFinished(m.name, len(batch), took)
	m.mu.Lock()
	m.service.add(len(batch), took, end)
	m.batches--
	m.running -= len(batch)
	if m.idle != nil {
		m.idle.Broadcast()
	}
	m.mu.Unlock()
	<-m.slots
	m.signal()
}

// batchContext ends when every task in the batch has ended, so a backend
// can abandon a batch nobody waits for.
func batchContext(batch []*Task) (context.Context, context.CancelFunc) {
	if len(batch) == 1 {
		// A batch of one ends with its task.
		return batch[0].ctx, func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	left := len(batch)
	stops := make([]func() bool, 0, len(batch))
	for _, t := range batch {
		stops = append(stops, context.AfterFunc(t.ctx, func() {
			mu.Lock()
			left--
			last := left == 0
			mu.Unlock()
			if last {
				cancel()
			}
		}))
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// runContinuous is the dispatcher of a continuous backend: it admits queued
// tasks, highest priority first, whenever the running set has room.
func (m *modelQueue) runContinuous() {
	room := m.cont.Room()
	for {
		m.mu.Lock()
		st := m.settings
		var t *Task
		if m.q.len() > 0 && m.cont.Active() < st.MaxSize {
			t = m.q.pop(1, time.Now())[0]
			m.obs.QueueDepth(m.name, m.q.len())
		}
		m.mu.Unlock()
		if t != nil {
			if t.ctx.Err() != nil {
				t.Finish(Result{}, t.ctx.Err())
				continue
			}
			m.obs.QueueWait(m.name, time.Since(t.enqueued))
			m.mu.Lock()
			m.running++
			n := m.running
			m.mu.Unlock()
			if m.cont.Admit(t) {
				go m.awaitContinuous(t, time.Now(), n)
				continue
			}
			m.mu.Lock()
			m.running--
			m.q.pushFront(t)
			m.obs.QueueDepth(m.name, m.q.len())
			m.mu.Unlock()
			select {
			case <-room:
			case <-m.stop:
				return
			}
			continue
		}
		select {
		case <-m.wake:
		case <-room:
		case <-m.stop:
			return
		}
	}
}

// awaitContinuous waits for an admitted task; running is how many ran,
// itself included, when it was admitted.
func (m *modelQueue) awaitContinuous(t *Task, admitted time.Time, running int) {
	<-t.Done()
	end := time.Now()
	took := end.Sub(admitted)
	m.mu.Lock()
	if t.ctx.Err() == nil {
		// The running set shares each step, so a request's duration
		// grows with how many run beside it: the fit is by that count.
		m.service.add(running, took, end)
	}
	m.running--
	if m.idle != nil {
		m.idle.Broadcast()
	}
	m.mu.Unlock()
	m.signal()
}

// drain waits until nothing is queued or running.
func (m *modelQueue) drain(ctx context.Context) error {
	m.mu.Lock()
	m.draining = true
	if m.idle == nil {
		m.idle = sync.NewCond(&m.mu)
	}
	stop := context.AfterFunc(ctx, func() {
		m.mu.Lock()
		m.idle.Broadcast()
		m.mu.Unlock()
	})
	defer stop()
	for (m.q.len() > 0 || m.running > 0) && ctx.Err() == nil {
		m.idle.Wait()
	}
	m.mu.Unlock()
	return ctx.Err()
}

func (m *modelQueue) failQueued(err error) {
	m.mu.Lock()
	tasks := m.q.pop(m.q.len(), time.Now())
	m.obs.QueueDepth(m.name, 0)
	m.mu.Unlock()
	for _, t := range tasks {
		t.Finish(Result{}, err)
	}
}
