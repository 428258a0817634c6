package scheduler_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
)

// With max_size 1 a task with nothing queued ahead of it and a free slot
// starts as its own batch without the dispatcher; Run runs it on the
// caller's goroutine. Whatever the path, the slots bound the batches in
// flight and every task ends with its answer.
func TestMaxSizeOneRunsAtOnce(t *testing.T) {
	b := newRecordingBackend(false)
	s := newScheduler(t, scheduler.Config{}, b, scheduler.Settings{MaxSize: 1, FlushTimeout: time.Minute, MaxQueue: 100, Slots: 2})

	task, err := s.Run(context.Background(), req("inline", scheduler.PriorityNormal))
	require.NoError(t, err)
	select {
	case <-task.Done():
	default:
		t.Fatal("Run returned an unfinished task")
	}
	res, err := task.Outcome()
	require.NoError(t, err)
	require.Equal(t, "echo:inline", res.Text)

	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Go(func() {
			task, err := s.Submit(context.Background(), req("p", scheduler.PriorityNormal))
			if !assert.NoError(t, err) {
				return
			}
			<-task.Done()
			res, err := task.Outcome()
			assert.NoError(t, err)
			assert.Equal(t, "echo:p", res.Text)
		})
	}
	wg.Wait()
	require.LessOrEqual(t, b.maxActive.Load(), int32(2), "more batches in flight than slots")
	require.Eventually(t, func() bool {
		l := s.Load()["m"]
		return l.Running == 0 && l.ActiveBatches == 0 && l.QueueDepth == 0
	}, waitFor, time.Millisecond)
}

// Other batch sizes keep every task on the queue: Run waits for the
// dispatcher like Submit.
func TestRunQueuesWhenBatching(t *testing.T) {
	b := newRecordingBackend(true)
	s := newScheduler(t, scheduler.Config{}, b, scheduler.Settings{MaxSize: 4, FlushTimeout: 0, MaxQueue: 100, Slots: 1})
	task, err := s.Run(context.Background(), req("queued", scheduler.PriorityNormal))
	require.NoError(t, err)
	call := nextCall(t, b)
	require.Equal(t, []string{"queued"}, call.prompts())
	close(call.release)
	res, err := outcome(t, task)
	require.NoError(t, err)
	require.Equal(t, "echo:queued", res.Text)
}
