package scheduler_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
)

// waitFor is the patience of every polling assertion: generous, because the
// test machine is small and shared.
const waitFor = 10 * time.Second

// runCall is one Run of the test backend: the batch it got, the batch
// context, and a gate the test opens to let the batch finish.
type runCall struct {
	ctx     context.Context
	tasks   []*scheduler.Task
	release chan struct{}
}

func (c *runCall) prompts() []string {
	out := make([]string, len(c.tasks))
	for i, t := range c.tasks {
		out[i] = t.Request().Prompt
	}
	return out
}

// recordingBackend is a test model server: it records every batch and,
// when gated, holds it until the test releases it (or every task in it is
// cancelled), then answers each task with its prompt.
type recordingBackend struct {
	gated bool
	calls chan *runCall

	active    atomic.Int32
	maxActive atomic.Int32
	closed    atomic.Int32

	mu  sync.Mutex
	all []*runCall
}

func newRecordingBackend(gated bool) *recordingBackend {
	return &recordingBackend{gated: gated, calls: make(chan *runCall, 4096)}
}

func (b *recordingBackend) Run(ctx context.Context, batch []*scheduler.Task) {
	n := b.active.Add(1)
	defer b.active.Add(-1)
	for {
		m := b.maxActive.Load()
		if n <= m || b.maxActive.CompareAndSwap(m, n) {
			break
		}
	}
	c := &runCall{ctx: ctx, tasks: batch, release: make(chan struct{})}
	b.mu.Lock()
	b.all = append(b.all, c)
	b.mu.Unlock()
	b.calls <- c
	if b.gated {
		select {
		case <-c.release:
		case <-ctx.Done():
		}
	}
	for _, t := range batch {
		if err := t.Context().Err(); err != nil {
			t.Finish(scheduler.Result{}, err)
			continue
		}
		t.Finish(scheduler.Result{Text: "echo:" + t.Request().Prompt, FinishReason: "stop"}, nil)
	}
}

func (b *recordingBackend) Close() error {
	b.closed.Add(1)
	return nil
}

// ranPrompts lists every prompt any batch has carried so far.
func (b *recordingBackend) ranPrompts() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, c := range b.all {
		out = append(out, c.prompts()...)
	}
	return out
}

// nextCall waits for the backend's next batch.
func nextCall(t *testing.T, b *recordingBackend) *runCall {
	t.Helper()
	select {
	case c := <-b.calls:
		return c
	case <-time.After(waitFor):
		t.Fatal("no batch reached the backend")
		return nil
	}
}

// newScheduler makes a scheduler serving one model "m" on backend; the
// scheduler is drained when the test ends.
func newScheduler(t *testing.T, cfg scheduler.Config, backend any, st scheduler.Settings) *scheduler.Scheduler {
	t.Helper()
	s := scheduler.New(cfg)
	require.NoError(t, s.AddModel("m", backend, st))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		_ = s.Drain(ctx)
	})
	return s
}

// req is a streamed request, so a task's chunks can be read with Next.
func req(prompt string, p scheduler.Priority) *scheduler.Request {
	return &scheduler.Request{ID: prompt, Model: "m", Endpoint: scheduler.EndpointCompletion, Prompt: prompt, Priority: p, Stream: true}
}

func submit(t *testing.T, s *scheduler.Scheduler, prompt string, p scheduler.Priority) *scheduler.Task {
	t.Helper()
	task, err := s.Submit(t.Context(), req(prompt, p))
	require.NoError(t, err)
	return task
}

// outcome waits for a task to finish and returns what it finished with.
func outcome(t *testing.T, task *scheduler.Task) (scheduler.Result, error) {
	t.Helper()
	select {
	case <-task.Done():
	case <-time.After(waitFor):
		t.Fatalf("task %s did not finish", task.Request().ID)
	}
	return task.Outcome()
}

func queueDepth(s *scheduler.Scheduler) int { return s.Load()["m"].QueueDepth }

func waitClosed(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitFor):
		t.Fatal("channel not closed in time")
	}
}
