package scheduler_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

func TestFlushesAtMaxSizeBeforeTimeout(t *testing.T) {
	be := newRecordingBackend(false)
	// The flush timeout is the longest allowed, so a batch that arrives at
	// all was flushed by size.
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 4, FlushTimeout: time.Minute, MaxQueue: 100, Slots: 1})
	tasks := make([]*scheduler.Task, 4)
	for i := range tasks {
		tasks[i] = submit(t, s, fmt.Sprint("p", i), scheduler.PriorityNormal)
	}
	c := nextCall(t, be)
	require.Equal(t, []string{"p0", "p1", "p2", "p3"}, c.prompts())
	for _, task := range tasks {
		res, err := outcome(t, task)
		require.NoError(t, err)
		require.Equal(t, "echo:"+task.Request().Prompt, res.Text)
	}
}

func TestFlushesPartialBatchAtFlushTimeout(t *testing.T) {
	be := newRecordingBackend(false)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 64, FlushTimeout: 30 * time.Millisecond, MaxQueue: 100, Slots: 1})
	tasks := []*scheduler.Task{submit(t, s, "a", scheduler.PriorityNormal), submit(t, s, "b", scheduler.PriorityNormal), submit(t, s, "c", scheduler.PriorityNormal)}
	// Three tasks never reach max_size 64: they can only leave by timeout.
	seen := 0
	for seen < len(tasks) {
		c := nextCall(t, be)
		require.Less(t, len(c.tasks), 64)
		seen += len(c.tasks)
	}
	require.Equal(t, len(tasks), seen)
	for _, task := range tasks {
		_, err := outcome(t, task)
		require.NoError(t, err)
	}
}

func TestFlushTimeoutBatchHoldsEverythingQueued(t *testing.T) {
	be := newRecordingBackend(false)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 64, FlushTimeout: time.Minute, MaxQueue: 100, Slots: 1})
	for _, p := range []string{"a", "b", "c"} {
		submit(t, s, p, scheduler.PriorityNormal)
	}
	require.Equal(t, 3, queueDepth(s), "nothing flushes before the timeout or max_size")
	require.Empty(t, be.calls)
	// A short timeout makes the queued tasks due: they leave as one batch
	// of three, without waiting for max_size.
	require.NoError(t, s.SetBatching("m", 64, 20*time.Millisecond))
	c := nextCall(t, be)
	require.Equal(t, []string{"a", "b", "c"}, c.prompts())
}

func TestSlotsBoundConcurrentBatches(t *testing.T) {
	be := newRecordingBackend(true)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 100, Slots: 2})
	tasks := make([]*scheduler.Task, 5)
	for i := range tasks {
		tasks[i] = submit(t, s, fmt.Sprint(i), scheduler.PriorityNormal)
	}
	first, second := nextCall(t, be), nextCall(t, be)
	require.Eventually(t, func() bool {
		l := s.Load()["m"]
		return l.ActiveBatches == 2 && l.QueueDepth == 3
	}, waitFor, time.Millisecond, "two slots run two batches and the rest wait")
	require.Never(t, func() bool { return len(be.calls) > 0 }, 50*time.Millisecond, 5*time.Millisecond)

	close(first.release)
	third := nextCall(t, be)
	close(second.release)
	close(third.release)
	for i := 0; i < 2; i++ {
		close(nextCall(t, be).release)
	}
	for _, task := range tasks {
		_, err := outcome(t, task)
		require.NoError(t, err)
	}
	require.EqualValues(t, 2, be.maxActive.Load())
}

func TestQueueBoundSharesPerPriority(t *testing.T) {
	for _, tc := range []struct {
		prio  scheduler.Priority
		admit int
	}{
		{scheduler.PriorityLow, 5},
		{scheduler.PriorityNormal, 9},
		{scheduler.PriorityHigh, 10},
	} {
		t.Run(fmt.Sprint("priority=", tc.prio), func(t *testing.T) {
			be := newRecordingBackend(false)
			// Nothing flushes (huge batch, longest timeout), so the queue
			// only fills.
			s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 4096, FlushTimeout: time.Minute, MaxQueue: 10, Slots: 1})
			for i := 0; i < tc.admit; i++ {
				_, err := s.Submit(t.Context(), req(fmt.Sprint(i), tc.prio))
				require.NoError(t, err, "task %d", i)
			}
			_, err := s.Submit(t.Context(), req("over", tc.prio))
			require.ErrorIs(t, err, scheduler.ErrQueueFull)
			require.Equal(t, tc.admit, queueDepth(s))
		})
	}
}

func TestLowPriorityFloodLeavesRoomForHigh(t *testing.T) {
	be := newRecordingBackend(false)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 4096, FlushTimeout: time.Minute, MaxQueue: 10, Slots: 1})
	for i := 0; i < 5; i++ {
		submit(t, s, fmt.Sprint("low", i), scheduler.PriorityLow)
	}
	_, err := s.Submit(t.Context(), req("low-over", scheduler.PriorityLow))
	require.ErrorIs(t, err, scheduler.ErrQueueFull)
	for i := 0; i < 4; i++ {
		submit(t, s, fmt.Sprint("normal", i), scheduler.PriorityNormal)
	}
	_, err = s.Submit(t.Context(), req("normal-over", scheduler.PriorityNormal))
	require.ErrorIs(t, err, scheduler.ErrQueueFull)
	submit(t, s, "high", scheduler.PriorityHigh)
	_, err = s.Submit(t.Context(), req("high-over", scheduler.PriorityHigh))
	require.ErrorIs(t, err, scheduler.ErrQueueFull)
}

// blockSlot fills the only slot with a gated batch, so what is submitted
// next queues up together.
func blockSlot(t *testing.T, s *scheduler.Scheduler, be *recordingBackend) *runCall {
	t.Helper()
	submit(t, s, "blocker", scheduler.PriorityHigh)
	c := nextCall(t, be)
	require.Equal(t, []string{"blocker"}, c.prompts())
	return c
}

func TestHigherPriorityBatchedFirst(t *testing.T) {
	be := newRecordingBackend(true)
	s := newScheduler(t, scheduler.Config{AgingAfter: time.Hour}, be, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 100, Slots: 1})
	blocker := blockSlot(t, s, be)
	// Submitted lowest first, so FIFO order would be the wrong answer.
	submit(t, s, "low", scheduler.PriorityLow)
	submit(t, s, "normal", scheduler.PriorityNormal)
	submit(t, s, "high", scheduler.PriorityHigh)
	require.Equal(t, 3, queueDepth(s))
	close(blocker.release)
	var order []string
	for i := 0; i < 3; i++ {
		c := nextCall(t, be)
		order = append(order, c.prompts()...)
		close(c.release)
	}
	require.Equal(t, []string{"high", "normal", "low"}, order)
}

func TestMixedBatchTakesHighestPriorityFirst(t *testing.T) {
	be := newRecordingBackend(true)
	s := newScheduler(t, scheduler.Config{AgingAfter: time.Hour}, be, scheduler.Settings{MaxSize: 2, FlushTimeout: 0, MaxQueue: 100, Slots: 1})
	blocker := blockSlot(t, s, be)
	submit(t, s, "low", scheduler.PriorityLow)
	submit(t, s, "normal", scheduler.PriorityNormal)
	submit(t, s, "high", scheduler.PriorityHigh)
	close(blocker.release)
	c := nextCall(t, be)
	require.Equal(t, []string{"high", "normal"}, c.prompts())
	close(c.release)
	c = nextCall(t, be)
	require.Equal(t, []string{"low"}, c.prompts())
	close(c.release)
}

func TestAgingLetsOldLowPriorityThroughHighLoad(t *testing.T) {
	for _, tc := range []struct {
		name     string
		aging    time.Duration
		lowFirst bool
	}{
		// Any wait counts as old: the low task takes the aged place in
		// the very next batch despite the high-priority backlog.
		{"aged", time.Nanosecond, true},
		// Without aging the same backlog keeps it waiting.
		{"fresh", time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := newRecordingBackend(true)
			s := newScheduler(t, scheduler.Config{AgingAfter: tc.aging}, be, scheduler.Settings{MaxSize: 4, FlushTimeout: 0, MaxQueue: 100, Slots: 1})
			blocker := blockSlot(t, s, be)
			submit(t, s, "low", scheduler.PriorityLow)
			for i := 0; i < 8; i++ {
				submit(t, s, fmt.Sprint("high", i), scheduler.PriorityHigh)
			}
			close(blocker.release)
			c := nextCall(t, be)
			require.Len(t, c.tasks, 4)
			require.Equal(t, tc.lowFirst, contains(c.prompts(), "low"), "first batch %v", c.prompts())
			if tc.lowFirst {
				// Aged work takes at most a quarter of the batch.
				require.Equal(t, []string{"low", "high0", "high1", "high2"}, c.prompts())
			}
			close(c.release)
			for seen := len(c.tasks); seen < 9; {
				c := nextCall(t, be)
				seen += len(c.tasks)
				close(c.release)
			}
			require.Contains(t, be.ranPrompts(), "low")
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestCancelledWhileQueuedNeverRuns(t *testing.T) {
	be := newRecordingBackend(true)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 100, Slots: 1})
	blocker := blockSlot(t, s, be)
	ctx, cancel := context.WithCancel(context.Background())
	task, err := s.Submit(ctx, req("cancelled", scheduler.PriorityNormal))
	require.NoError(t, err)
	require.Equal(t, 1, queueDepth(s))
	cancel()
	_, err = outcome(t, task)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, 0, queueDepth(s))

	close(blocker.release)
	marker := submit(t, s, "marker", scheduler.PriorityLow)
	close(nextCall(t, be).release)
	_, err = outcome(t, marker)
	require.NoError(t, err)
	require.NotContains(t, be.ranPrompts(), "cancelled")
}

func TestDeadlineWhileQueuedIsDeadlineExceeded(t *testing.T) {
	be := newRecordingBackend(true)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 100, Slots: 1})
	blocker := blockSlot(t, s, be)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	task, err := s.Submit(ctx, req("late", scheduler.PriorityNormal))
	require.NoError(t, err)
	_, err = outcome(t, task)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, 0, queueDepth(s))
	close(blocker.release)
	require.NotContains(t, be.ranPrompts(), "late")
}

func TestCancellationReachesRunningBackend(t *testing.T) {
	be := newRecordingBackend(true)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 2, FlushTimeout: time.Minute, MaxQueue: 100, Slots: 1})
	ctxA, cancelA := context.WithCancel(context.Background())
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	a, err := s.Submit(ctxA, req("a", scheduler.PriorityNormal))
	require.NoError(t, err)
	b, err := s.Submit(ctxB, req("b", scheduler.PriorityNormal))
	require.NoError(t, err)
	c := nextCall(t, be)
	require.Len(t, c.tasks, 2)

	cancelA()
	// The backend sees the task's own context end; the batch goes on for
	// the client that is still waiting.
	waitClosed(t, c.tasks[0].Context().Done())
	require.NoError(t, c.ctx.Err())
	cancelB()
	waitClosed(t, c.ctx.Done())
	_, err = outcome(t, a)
	require.ErrorIs(t, err, context.Canceled)
	_, err = outcome(t, b)
	require.ErrorIs(t, err, context.Canceled)
}

func TestSetBatchingAppliesToNextBatch(t *testing.T) {
	be := newRecordingBackend(false)
	s := newScheduler(t, scheduler.Config{}, be, scheduler.Settings{MaxSize: 4, FlushTimeout: time.Minute, MaxQueue: 100, Slots: 1})
	submit(t, s, "a", scheduler.PriorityNormal)
	submit(t, s, "b", scheduler.PriorityNormal)
	require.Equal(t, 2, queueDepth(s))
	require.NoError(t, s.SetBatching("m", 2, time.Minute))
	require.Equal(t, []string{"a", "b"}, nextCall(t, be).prompts())
	st, ok := s.Settings("m")
	require.True(t, ok)
	require.Equal(t, 2, st.MaxSize)
	require.Equal(t, time.Minute, st.FlushTimeout)
	require.Equal(t, 100, st.MaxQueue, "max_queue is not touched")

	submit(t, s, "c", scheduler.PriorityNormal)
	submit(t, s, "d", scheduler.PriorityNormal)
	require.Equal(t, []string{"c", "d"}, nextCall(t, be).prompts())
}

func TestSetBatchingRejectsBadValues(t *testing.T) {
	s := newScheduler(t, scheduler.Config{}, newRecordingBackend(false), scheduler.Settings{MaxSize: 4, FlushTimeout: time.Millisecond, MaxQueue: 100, Slots: 1})
	require.ErrorContains(t, s.SetBatching("m", 0, time.Millisecond), "max_size")
	require.ErrorContains(t, s.SetBatching("m", 4, -time.Second), "flush_timeout")
	require.ErrorIs(t, s.SetBatching("nope", 4, time.Millisecond), scheduler.ErrUnknownModel)
	st, _ := s.Settings("m")
	require.Equal(t, 4, st.MaxSize, "a rejected change leaves the settings alone")
}

func TestDrainFinishesQueuedWorkThenRejects(t *testing.T) {
	be := newRecordingBackend(true)
	s := scheduler.New(scheduler.Config{})
	require.NoError(t, s.AddModel("m", be, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 100, Slots: 1}))
	tasks := []*scheduler.Task{submit(t, s, "a", scheduler.PriorityNormal), submit(t, s, "b", scheduler.PriorityNormal), submit(t, s, "c", scheduler.PriorityNormal)}
	first := nextCall(t, be)

	drained := make(chan error, 1)
	go func() { drained <- s.Drain(context.Background()) }()
	// Probe with a cancelled context, so a probe that lands before the
	// drain starts leaves the queue at once instead of adding work.
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	require.Eventually(t, func() bool {
		_, err := s.Submit(gone, req("late", scheduler.PriorityHigh))
		return err == scheduler.ErrDraining
	}, waitFor, time.Millisecond)

	close(first.release)
	for i := 0; i < 2; i++ {
		select {
		case err := <-drained:
			t.Fatalf("drain returned with work queued: %v", err)
		default:
		}
		close(nextCall(t, be).release)
	}
	select {
	case err := <-drained:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("drain did not return")
	}
	for _, task := range tasks {
		_, err := outcome(t, task)
		require.NoError(t, err)
	}
	require.EqualValues(t, 1, be.closed.Load(), "drain closes the backend")
	require.NoError(t, s.Drain(context.Background()))
	require.EqualValues(t, 1, be.closed.Load(), "a second drain does not close it again")
	require.NotContains(t, be.ranPrompts(), "late")
}

// Batches run on workers that outlive them; a drained scheduler ends them
// rather than leave them to their idle time (an hour here).
func TestDrainLeavesNoBatchWorkerBehind(t *testing.T) {
	before := runtime.NumGoroutine()
	be := newRecordingBackend(true)
	s := scheduler.New(scheduler.Config{WorkerIdle: time.Hour})
	require.NoError(t, s.AddModel("m", be, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 100, Slots: 4}))
	var tasks []*scheduler.Task
	for _, p := range []string{"a", "b", "c", "d"} {
		tasks = append(tasks, submit(t, s, p, scheduler.PriorityNormal))
	}
	// Four batches at once: four workers.
	for range tasks {
		close(nextCall(t, be).release)
	}
	for _, task := range tasks {
		_, err := outcome(t, task)
		require.NoError(t, err)
	}
	require.Greater(t, runtime.NumGoroutine(), before, "idle workers wait for the next batch")
	require.NoError(t, s.Drain(context.Background()))
	// Polled here: Eventually would add goroutines of its own.
	for deadline := time.Now().Add(waitFor); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines still running after Drain: %d, %d before", runtime.NumGoroutine(), before)
		}
	}
}

func TestDrainTimeoutFailsQueuedWithDraining(t *testing.T) {
	be := newRecordingBackend(true)
	s := scheduler.New(scheduler.Config{})
	require.NoError(t, s.AddModel("m", be, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 100, Slots: 1}))
	running := submit(t, s, "running", scheduler.PriorityNormal)
	c := nextCall(t, be)
	queued := submit(t, s, "queued", scheduler.PriorityNormal)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, s.Drain(ctx), context.DeadlineExceeded)
	_, err := outcome(t, queued)
	require.ErrorIs(t, err, scheduler.ErrDraining)
	close(c.release)
	_, err = outcome(t, running)
	require.NoError(t, err)
}

// forgetfulBackend returns without finishing anything.
type forgetfulBackend struct{}

func (forgetfulBackend) Run(context.Context, []*scheduler.Task) {}
func (forgetfulBackend) Close() error                           { return nil }

func TestBackendThatForgetsToFinishGivesBackendDropped(t *testing.T) {
	s := newScheduler(t, scheduler.Config{}, forgetfulBackend{}, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 10, Slots: 1})
	_, err := outcome(t, submit(t, s, "x", scheduler.PriorityNormal))
	require.ErrorIs(t, err, scheduler.ErrBackendDropped)
}

// panickyBackend panics on the prompt "boom" and answers anything else.
type panickyBackend struct{}

func (panickyBackend) Run(_ context.Context, batch []*scheduler.Task) {
	for _, t := range batch {
		if t.Request().Prompt == "boom" {
			panic("backend bug")
		}
		t.Finish(scheduler.Result{Text: "fine"}, nil)
	}
}
func (panickyBackend) Close() error { return nil }

func TestPanickingBackendDoesNotKillScheduler(t *testing.T) {
	s := newScheduler(t, scheduler.Config{}, panickyBackend{}, scheduler.Settings{MaxSize: 1, FlushTimeout: 0, MaxQueue: 10, Slots: 1})
	_, err := outcome(t, submit(t, s, "boom", scheduler.PriorityNormal))
	require.ErrorIs(t, err, scheduler.ErrBackendDropped)
	for i := 0; i < 3; i++ {
		res, err := outcome(t, submit(t, s, "ok", scheduler.PriorityNormal))
		require.NoError(t, err)
		require.Equal(t, "fine", res.Text)
	}
	// With one slot, the three answers above already prove the panicked
	// batch gave its slot back; the count settles once the last batch ends.
	require.Eventually(t, func() bool { return s.Load()["m"].ActiveBatches == 0 }, waitFor, time.Millisecond)
}

func TestSubmitUnknownModel(t *testing.T) {
	s := newScheduler(t, scheduler.Config{}, newRecordingBackend(false), scheduler.Settings{MaxSize: 1, MaxQueue: 1, Slots: 1})
	_, err := s.Submit(context.Background(), &scheduler.Request{Model: "other"})
	require.ErrorIs(t, err, scheduler.ErrUnknownModel)
	require.True(t, s.Has("m"))
	require.False(t, s.Has("other"))
	require.Equal(t, []string{"m"}, s.Models())
}

func TestAddModelRejectsBadInput(t *testing.T) {
	s := newScheduler(t, scheduler.Config{}, newRecordingBackend(false), scheduler.Settings{MaxSize: 1, MaxQueue: 1, Slots: 1})
	good := scheduler.Settings{MaxSize: 1, MaxQueue: 1, Slots: 1}
	require.ErrorContains(t, s.AddModel("m", newRecordingBackend(false), good), "already added")
	require.ErrorContains(t, s.AddModel("x", "not a backend", good), "not a backend")
	for _, bad := range []scheduler.Settings{
		{MaxSize: 0, MaxQueue: 1, Slots: 1},
		{MaxSize: 5000, MaxQueue: 1, Slots: 1},
		{MaxSize: 1, FlushTimeout: 2 * time.Minute, MaxQueue: 1, Slots: 1},
		{MaxSize: 1, MaxQueue: 0, Slots: 1},
		{MaxSize: 1, MaxQueue: 1, Slots: 0},
	} {
		require.Error(t, s.AddModel("y", newRecordingBackend(false), bad), "%+v", bad)
	}
}

func TestOutOfRangePriorityIsNormal(t *testing.T) {
	s := newScheduler(t, scheduler.Config{}, newRecordingBackend(false), scheduler.Settings{MaxSize: 4096, FlushTimeout: time.Minute, MaxQueue: 10, Slots: 1})
	task := submit(t, s, "x", scheduler.Priority(42))
	require.Equal(t, scheduler.PriorityNormal, task.Request().Priority)
}

// recordingObserver keeps what the scheduler reports for metrics.
type recordingObserver struct {
	mu       sync.Mutex
	depths   []int
	waits    int
	started  []int
	finished []int
}

func (o *recordingObserver) QueueDepth(_ string, d int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.depths = append(o.depths, d)
}

func (o *recordingObserver) QueueWait(string, time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.waits++
}

func (o *recordingObserver) BatchStarted(_ string, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.started = append(o.started, n)
}

func (o *recordingObserver) BatchFinished(_ string, n int, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.finished = append(o.finished, n)
}

func TestObserverSeesQueueAndBatches(t *testing.T) {
	obs := &recordingObserver{}
	s := newScheduler(t, scheduler.Config{Observer: obs}, newRecordingBackend(false), scheduler.Settings{MaxSize: 3, FlushTimeout: time.Minute, MaxQueue: 10, Slots: 1})
	tasks := []*scheduler.Task{submit(t, s, "a", scheduler.PriorityNormal), submit(t, s, "b", scheduler.PriorityNormal), submit(t, s, "c", scheduler.PriorityNormal)}
	for _, task := range tasks {
		_, err := outcome(t, task)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return len(obs.finished) == 1
	}, waitFor, time.Millisecond)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	require.Equal(t, []int{3}, obs.started)
	require.Equal(t, []int{3}, obs.finished)
	require.Equal(t, 3, obs.waits)
	// Reported in the order the queue changed, so the gauge ends at the
	// true depth.
	require.Equal(t, []int{1, 2, 3, 0}, obs.depths)
}

func TestSimBackendBehindScheduler(t *testing.T) {
	sc := sim.DefaultConfig()
	sc.Model = "m"
	sc.Base, sc.PerItem, sc.TokenInterval = time.Millisecond, 0, 0
	b, err := sim.New(sc)
	require.NoError(t, err)
	s := newScheduler(t, scheduler.Config{}, b, scheduler.Settings{MaxSize: 8, FlushTimeout: time.Millisecond, MaxQueue: 100, Slots: 2})
	var tasks []*scheduler.Task
	for i := 0; i < 20; i++ {
		r := req(fmt.Sprint("prompt number ", i), scheduler.PriorityNormal)
		r.Params.MaxTokens = 5
		task, err := s.Submit(context.Background(), r)
		require.NoError(t, err)
		tasks = append(tasks, task)
	}
	for _, task := range tasks {
		res, err := outcome(t, task)
		require.NoError(t, err)
		want := b.Words(task.Request(), 5)
		require.Equal(t, strings.Join(want, " "), res.Text)
		require.Equal(t, len(want), res.CompletionTokens)
		require.Equal(t, 3, res.PromptTokens)
	}
}

// Load reports the fitted batch cost once batches have run.
func TestLoadReportsServiceTime(t *testing.T) {
	b := newRecordingBackend(false)
	s := newScheduler(t, scheduler.Config{}, b, scheduler.Settings{MaxSize: 4, FlushTimeout: time.Millisecond, MaxQueue: 10, Slots: 1})
	require.Zero(t, s.Load()["m"].ServiceBase)
	task := submit(t, s, "a", scheduler.PriorityNormal)
	_, err := outcome(t, task)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		l := s.Load()["m"]
		return l.ServiceBase+l.ServicePerItem > 0 && l.MaxBatch == 4
	}, 5*time.Second, time.Millisecond)
}
