package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
)

// errStopped finishes the sequences a closed continuous backend held.
var errStopped = errors.New("continuous backend stopped")

// stepBackend is a test continuous backend: a running set with a fixed
// capacity whose sequences finish when the test releases them.
type stepBackend struct {
	capacity int
	admitted chan *scheduler.Task
	room     chan struct{}
	refused  atomic.Int32

	mu      sync.Mutex
	running map[*scheduler.Task]chan struct{}
}

func newStepBackend(capacity int) *stepBackend {
	return &stepBackend{capacity: capacity, admitted: make(chan *scheduler.Task, 1024), room: make(chan struct{}, 1), running: map[*scheduler.Task]chan struct{}{}}
}

func (b *stepBackend) Admit(t *scheduler.Task) bool {
	b.mu.Lock()
	if len(b.running) >= b.capacity {
		b.mu.Unlock()
		b.refused.Add(1)
		return false
	}
	gate := make(chan struct{})
	b.running[t] = gate
	b.mu.Unlock()
	b.admitted <- t
	go func() {
		select {
		case <-gate:
			t.Finish(scheduler.Result{Text: "seq:" + t.Request().Prompt, FinishReason: "stop"}, nil)
		case <-t.Context().Done():
			t.Finish(scheduler.Result{}, t.Context().Err())
		}
		b.mu.Lock()
		delete(b.running, t)
		b.mu.Unlock()
		select {
		case b.room <- struct{}{}:
		default:
		}
	}()
	return true
}

func (b *stepBackend) Room() <-chan struct{} { return b.room }

func (b *stepBackend) Active() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.running)
}

func (b *stepBackend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for t := range b.running {
		t.Finish(scheduler.Result{}, errStopped)
	}
	return nil
}

func (b *stepBackend) release(t *scheduler.Task) {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.running[t])
}

func nextAdmitted(t *testing.T, b *stepBackend) *scheduler.Task {
	t.Helper()
	select {
	case task := <-b.admitted:
		return task
	case <-time.After(waitFor):
		t.Fatal("no task admitted")
		return nil
	}
}

func TestContinuousRefusedTaskRetriedAfterRoom(t *testing.T) {
	be := newStepBackend(1)
	// The scheduler would allow 10 sequences; the backend's own budget
	// (one) is what refuses.
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 10, FlushTimeout: time.Minute, MaxQueue: 10, Slots: 1})
	a := submit(t, s, "a", scheduler.PriorityNormal)
	require.Same(t, a, nextAdmitted(t, be))
	b := submit(t, s, "b", scheduler.PriorityNormal)
	require.Eventually(t, func() bool { return be.refused.Load() >= 1 && queueDepth(s) == 1 }, waitFor, time.Millisecond,
		"a refused task stays queued")

	be.release(a)
	require.Same(t, b, nextAdmitted(t, be))
	be.release(b)
	for _, task := range []*scheduler.Task{a, b} {
		res, err := outcome(t, task)
		require.NoError(t, err)
		require.Equal(t, "seq:"+task.Request().Prompt, res.Text)
	}
}

func TestContinuousMaxSizeBoundsRunningSet(t *testing.T) {
	be := newStepBackend(100)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 2, FlushTimeout: 0, MaxQueue: 10, Slots: 1})
	tasks := make([]*scheduler.Task, 3)
	for i := range tasks {
		tasks[i] = submit(t, s, fmt.Sprint(i), scheduler.PriorityNormal)
	}
	first, second := nextAdmitted(t, be), nextAdmitted(t, be)
	require.Eventually(t, func() bool { return queueDepth(s) == 1 && s.Load()["m"].Running == 2 }, waitFor, time.Millisecond)
	require.Never(t, func() bool { return len(be.admitted) > 0 }, 50*time.Millisecond, 5*time.Millisecond)
	be.release(first)
	third := nextAdmitted(t, be)
	be.release(second)
	be.release(third)
	for _, task := range tasks {
		_, err := outcome(t, task)
		require.NoError(t, err)
	}
	require.Zero(t, be.refused.Load())
}

func TestContinuousAdmitsHighestPriorityFirst(t *testing.T) {
	be := newStepBackend(1)
	s := newScheduler(t, scheduler.Config{AgingAfter: time.Hour}, be, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 10, Slots: 1})
	blocker := submit(t, s, "blocker", scheduler.PriorityNormal)
	nextAdmitted(t, be)
	low := submit(t, s, "low", scheduler.PriorityLow)
	high := submit(t, s, "high", scheduler.PriorityHigh)
	be.release(blocker)
	require.Same(t, high, nextAdmitted(t, be))
	be.release(high)
	require.Same(t, low, nextAdmitted(t, be))
	be.release(low)
}

func TestContinuousCancelledWhileQueuedNeverAdmitted(t *testing.T) {
	be := newStepBackend(1)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 10, Slots: 1})
	blocker := submit(t, s, "blocker", scheduler.PriorityNormal)
	nextAdmitted(t, be)
	ctx, cancel := context.WithCancel(t.Context())
	gone, err := s.Submit(ctx, req("gone", scheduler.PriorityNormal))
	require.NoError(t, err)
	cancel()
	_, err = outcome(t, gone)
	require.ErrorIs(t, err, context.Canceled)
	be.release(blocker)
	marker := submit(t, s, "marker", scheduler.PriorityNormal)
	require.Same(t, marker, nextAdmitted(t, be))
	be.release(marker)
	_, err = outcome(t, marker)
	require.NoError(t, err)
}
