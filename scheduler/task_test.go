package scheduler_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
)

// Done, Wait and Next each see a finish whether they are called before it
// or after it (their channels are made on first use).
func TestTaskFinishReachesEveryWaiter(t *testing.T) {
	boom := errors.New("boom")
	t.Run("after finish", func(t *testing.T) {
		task := scheduler.NewTask(context.Background(), req("a", scheduler.PriorityNormal))
		task.Finish(scheduler.Result{Text: "x"}, nil)
		select {
		case <-task.Done():
		default:
			t.Fatal("Done is not closed after Finish")
		}
		res, err := task.Wait()
		require.NoError(t, err)
		require.Equal(t, "x", res.Text)
		chunks, finished, err := task.Next(context.Background())
		require.NoError(t, err)
		require.True(t, finished)
		require.Empty(t, chunks)
	})
	t.Run("before finish", func(t *testing.T) {
		task := scheduler.NewTask(context.Background(), req("a", scheduler.PriorityNormal))
		done := task.Done()
		waited := make(chan error, 1)
		go func() {
			_, err := task.Wait()
			waited <- err
		}()
		next := make(chan bool, 1)
		go func() {
			_, finished, _ := task.Next(context.Background())
			next <- finished
		}()
		task.Finish(scheduler.Result{}, boom)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("Done taken before Finish was never closed")
		}
		select {
		case err := <-waited:
			require.ErrorIs(t, err, boom)
		case <-time.After(30 * time.Second):
			t.Fatal("Wait did not return")
		}
		select {
		case finished := <-next:
			require.True(t, finished)
		case <-time.After(30 * time.Second):
			t.Fatal("Next did not return")
		}
	})
	t.Run("emit wakes next", func(t *testing.T) {
		task := scheduler.NewTask(context.Background(), req("a", scheduler.PriorityNormal))
		got := make(chan []string, 1)
		go func() {
			chunks, _, _ := task.Next(context.Background())
			got <- chunks
		}()
		task.Emit("tok")
		select {
		case chunks := <-got:
			require.Equal(t, []string{"tok"}, chunks)
		case <-time.After(30 * time.Second):
			t.Fatal("Emit did not wake Next")
		}
	})
}

// A task that is neither streamed nor waited for before it finishes (a
// pass-through chat run on its caller's goroutine) costs one allocation:
// the task itself.
func TestUnstreamedTaskCostsOneAllocation(t *testing.T) {
	r := req("a", scheduler.PriorityNormal)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		task := scheduler.NewTask(ctx, r)
		task.Finish(scheduler.Result{Text: "x"}, nil)
		if _, err := task.Wait(); err != nil {
			t.Fatal(err)
		}
	})
	require.Equal(t, 1.0, allocs)
}

// A streamed task keeps every chunk for Next; any other task's answer is
// its Result, so its chunks are neither kept nor allocated for.
func TestOnlyStreamedTasksKeepChunks(t *testing.T) {
	streamed := scheduler.NewTask(context.Background(), req("a", scheduler.PriorityNormal))
	streamed.Emit("he")
	streamed.Emit("llo")
	chunks, finished, err := streamed.Next(context.Background())
	require.NoError(t, err)
	require.False(t, finished)
	require.Equal(t, []string{"he", "llo"}, chunks)

	plain := req("b", scheduler.PriorityNormal)
	plain.Stream = false
	task := scheduler.NewTask(context.Background(), plain)
	allocs := testing.AllocsPerRun(100, func() { task.Emit("token") })
	require.Zero(t, allocs, "a token of an answer nobody streams")
	task.Finish(scheduler.Result{Text: "hello"}, nil)
	chunks, finished, err = task.Next(context.Background())
	require.NoError(t, err)
	require.True(t, finished)
	require.Empty(t, chunks)
	res, err := task.Wait()
	require.NoError(t, err)
	require.Equal(t, "hello", res.Text)
}
