// Package scheduler is a node's local dynamic batcher: one bounded priority
// queue per model, flushed into batches by size or age and run on the
// model's backend with a bounded number of batches in flight.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/internal/workers"
)

// Errors returned by Submit and given to tasks the scheduler finishes itself.
var (
	// ErrUnknownModel means no backend serves the requested model here.
	ErrUnknownModel = errors.New("unknown model")
	// ErrQueueFull means the model's queue is at its bound for the request's
	// priority; the client should retry later.
	ErrQueueFull = errors.New("queue full")
	// ErrDraining means the node is shutting down and takes no new work.
	ErrDraining = errors.New("node is draining")
	// ErrBackendDropped means a backend returned without finishing a task.
	ErrBackendDropped = errors.New("backend returned without a result")
	// ErrPromptTooLong means a prompt has more tokens than the model's
	// context. Any backend may finish a task with it (wrapped); it is the
	// client's mistake (400), not a failure of the backend.
	ErrPromptTooLong = errors.New("prompt longer than the model context")
)

// Settings are a model's batching knobs. They can change at run time; a
// change applies to the next batch.
type Settings struct {
	// MaxSize is the most tasks in one batch (for continuous backends, the
	// most sequences running at once).
	MaxSize int
	// FlushTimeout is how long a batch may wait for more tasks after its
	// first one arrived.
	FlushTimeout time.Duration
	// MaxQueue bounds the waiting tasks. Low priority may fill half of it
	// and normal priority nine tenths, so a flood of lower-priority work
	// cannot lock high-priority work out.
	MaxQueue int
	// Slots is how many batches run at once (GPU count or configured
	// concurrency).
	Slots int
}

// Validate reports the first out-of-range field.
func (s Settings) Validate() error {
	switch {
	case s.MaxSize < 1 || s.MaxSize > 4096:
		return fmt.Errorf("max_size must be between 1 and 4096, got %d", s.MaxSize)
	case s.FlushTimeout < 0 || s.FlushTimeout > time.Minute:
		return fmt.Errorf("flush_timeout must be between 0s and 1m, got %s", s.FlushTimeout)
	case s.MaxQueue < 1:
		return fmt.Errorf("max_queue must be at least 1, got %d", s.MaxQueue)
	case s.Slots < 1:
		return fmt.Errorf("slots must be at least 1, got %d", s.Slots)
	}
	return nil
}

// Observer receives the scheduler's measurements. Calls come from the
// scheduler's goroutines, QueueDepth with the model's queue locked (so the
// depths arrive in order); they must not block or call the Scheduler.
type Observer interface {
	QueueDepth(model string, depth int)
	QueueWait(model string, wait time.Duration)
	BatchStarted(model string, size int)
	BatchFinished(model string, size int, took time.Duration)
}

// Config configures a Scheduler.
type Config struct {
	Logger   *slog.Logger
	Observer Observer
	// AgingAfter promotes lower-priority tasks that waited this long
	// (default 2s).
	AgingAfter time.Duration
	// ServiceMemory is how long a model's measured batch cost counts
	// after its last batch (default 10s). Past it the node reports the
	// cost as unmeasured, so at light load a node whose last batches were
	// slow is ranked like its peers and measured anew instead of being
	// passed over for good.
	ServiceMemory time.Duration
	// WorkerIdle is how long a goroutine that ran a batch waits for the
	// next one before it exits (default 2s); Drain ends idle ones at once.
	WorkerIdle time.Duration
}

// Scheduler owns every model's queue on this node.
type Scheduler struct {
	cfg    Config
	logger *slog.Logger

	mu       sync.RWMutex
	models   map[string]*modelQueue
	draining bool
	// exec runs every model's batches: a goroutine per batch grew its
	// stack by copying on each one (a model backend's call runs deep), a
	// worker keeps the stack it grew.
	exec *workers.Pool
	wg   sync.WaitGroup
}

// New makes an empty scheduler; add models with AddModel.
func New(cfg Config) *Scheduler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.AgingAfter == 0 {
		cfg.AgingAfter = 2 * time.Second
	}
	if cfg.WorkerIdle == 0 {
		cfg.WorkerIdle = 2 * time.Second
	}
	if cfg.ServiceMemory == 0 {
		cfg.ServiceMemory = 10 * time.Second
	}
	return &Scheduler{cfg: cfg, logger: cfg.Logger.With("component", "scheduler"), models: map[string]*modelQueue{},
		exec: workers.New(workers.Config{Idle: cfg.WorkerIdle})}
}

// AddModel starts serving a model. backend is a Backend or a
// ContinuousBackend.
func (s *Scheduler) AddModel(name string, backend any, st Settings) error {
	if err := st.Validate(); err != nil {
		return fmt.Errorf("model %q: %w", name, err)
	}
	m := &modelQueue{
		name:     name,
		settings: st,
		q:        queue{agingAfter: s.cfg.AgingAfter},
		service:  serviceFit{memory: s.cfg.ServiceMemory},
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		obs:      s.cfg.Observer,
		logger:   s.logger.With("model", name),
		exec:     s.exec,
	}
	switch b := backend.(type) {
	case ContinuousBackend:
		m.cont = b
	case Backend:
		m.batch = b
		m.slots = make(chan struct{}, st.Slots)
	default:
		return fmt.Errorf("model %q: %T is not a backend", name, backend)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.models[name]; ok {
		return fmt.Errorf("model %q: already added", name)
	}
	s.models[name] = m
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if m.cont != nil {
			m.runContinuous()
		} else {
			m.runBatches()
		}
	}()
	return nil
}

// Models lists the served models, sorted.
func (s *Scheduler) Models() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.models))
	for n := range s.models {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Has reports whether this node serves model.
func (s *Scheduler) Has(model string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.models[model]
	return ok
}

// Submit queues a request. The task ends when ctx ends, whether it is still
// queued (it is removed and never run) or running (the backend sees the
// cancellation through the task's context).
func (s *Scheduler) Submit(ctx context.Context, req *Request) (*Task, error) {
	return s.submit(ctx, req, false)
}

// Run is Submit for a caller that only waits for the task's end (no
// streaming): when the task can start at once as a batch of its own, it
// runs on the caller's goroutine, and Run returns it finished.
func (s *Scheduler) Run(ctx context.Context, req *Request) (*Task, error) {
	return s.submit(ctx, req, true)
}

func (s *Scheduler) submit(ctx context.Context, req *Request, inline bool) (*Task, error) {
	s.mu.RLock()
	m, ok := s.models[req.Model]
	draining := s.draining
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownModel, req.Model)
	}
	if draining {
		return nil, ErrDraining
	}
	if req.Priority < PriorityLow || req.Priority > PriorityHigh {
		req.Priority = PriorityNormal
	}
	t := NewTask(ctx, req)
	if m.runAlone(t, inline) {
		return t, nil
	}
	if err := m.enqueue(t); err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { m.cancel(t) })
	return t, nil
}

// SetBatching changes a model's batch size and flush timeout; the next batch
// uses them.
func (s *Scheduler) SetBatching(model string, maxSize int, flush time.Duration) error {
	s.mu.RLock()
	m, ok := s.models[model]
	s.mu.RUnlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownModel, model)
	}
	m.mu.Lock()
	st := m.settings
	st.MaxSize, st.FlushTimeout = maxSize, flush
	if err := st.Validate(); err != nil {
		m.mu.Unlock()
		return err
	}
	m.settings = st
	m.mu.Unlock()
	m.signal()
	return nil
}

// Settings returns a model's current batching settings.
func (s *Scheduler) Settings(model string) (Settings, bool) {
	s.mu.RLock()
	m, ok := s.models[model]
	s.mu.RUnlock()
	if !ok {
		return Settings{}, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.settings, true
}

// ModelLoad is one model's instantaneous load on this node.
type ModelLoad struct {
	QueueDepth    int
	ActiveBatches int
	Running       int
	Slots         int
	// MaxBatch is the most tasks in one batch (or running sequences).
	MaxBatch int
	// ServiceBase and ServicePerItem fit recent batch durations as
	// base + per-item*size (for a continuous backend: a request's duration
	// by how many ran at its admission); zero until the first finished.
	ServiceBase    time.Duration
	ServicePerItem time.Duration
}

// Load reports every model's queue depth and running work.
func (s *Scheduler) Load() map[string]ModelLoad {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]ModelLoad, len(s.models))
	for n, m := range s.models {
		out[n] = m.load()
	}
	return out
}

// ModelLoad reports one model's queue depth and running work, without
// building Load's map: routing asks for it on every request.
func (s *Scheduler) ModelLoad(model string) (ModelLoad, bool) {
	s.mu.RLock()
	m, ok := s.models[model]
	s.mu.RUnlock()
	if !ok {
		return ModelLoad{}, false
	}
	return m.load(), true
}

// Drain stops accepting new work and waits until every queued and running
// task has finished or ctx ends; then it closes the backends.
func (s *Scheduler) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	models := make([]*modelQueue, 0, len(s.models))
	for _, m := range s.models {
		models = append(models, m)
	}
	s.mu.Unlock()
	var err error
	for _, m := range models {
		if e := m.drain(ctx); e != nil && err == nil {
			err = fmt.Errorf("drain %s: %w", m.name, e)
		}
	}
	s.close()
	return err
}

func (s *Scheduler) close() {
	s.mu.Lock()
	models := s.models
	s.mu.Unlock()
	for _, m := range models {
		m.closeOnce.Do(func() { close(m.stop) })
	}
	s.wg.Wait()
	s.exec.Close()
	for _, m := range models {
		m.failQueued(ErrDraining)
		// Drain may run more than once (a node's Shutdown, then its
		// cleanup); a backend is closed only the first time.
		m.backendOnce.Do(func() {
			var err error
			if m.cont != nil {
				err = m.cont.Close()
			} else {
				err = m.batch.Close()
			}
			if err != nil {
				s.logger.Warn("close backend", "model", m.name, "err", err)
			}
		})
	}
}

type nopObserver struct{}

func (nopObserver) QueueDepth(string, int)                   {}
func (nopObserver) QueueWait(string, time.Duration)          {}
func (nopObserver) BatchStarted(string, int)                 {}
func (nopObserver) BatchFinished(string, int, time.Duration) {}
