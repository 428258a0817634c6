package workers

import (
	"bytes"
	"runtime"
	"testing"
	"time"
)

// A job stuck on a hung peer must not hold up the next ones.
func TestWorkersNeverWaitForAStuckOne(t *testing.T) {
	w := New(Config{Idle: time.Minute})
	defer w.Close()
	release := make(chan struct{})
	defer close(release)
	w.Go(func() { <-release })
	for i := 0; i < 3; i++ {
		done := make(chan struct{})
		w.Go(func() { close(done) })
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("job %d waited for the stuck one", i)
		}
	}
}

// Jobs run one after another land on a worker that ran an earlier one
// (that is the point: its stack is already grown).
func TestWorkersReuseAGoroutine(t *testing.T) {
	w := New(Config{Idle: time.Minute})
	defer w.Close()
	seen := map[string]bool{}
	for i := 0; i < 200; i++ {
		id := make(chan string, 1)
		w.Go(func() { id <- goroutineID() })
		g := <-id
		if seen[g] {
			return
		}
		seen[g] = true
	}
	t.Fatalf("200 jobs ran on 200 goroutines")
}

// A job given after Close still runs.
func TestPoolRunsJobsAfterClose(t *testing.T) {
	w := New(Config{})
	w.Close()
	done := make(chan struct{})
	w.Go(func() { close(done) })
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a job given after Close never ran")
	}
}

// Idle workers exit on close, and after their idle time without it.
func TestWorkersExit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		idle  time.Duration
		close bool
	}{{"on close", time.Hour, true}, {"when idle", 50 * time.Millisecond, false}} {
		t.Run(tc.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			w := New(Config{Idle: tc.idle})
			done := make(chan struct{}, 4)
			for i := 0; i < 4; i++ {
				w.Go(func() { done <- struct{}{} })
			}
			for i := 0; i < 4; i++ {
				<-done
			}
			if tc.close {
				w.Close()
			}
			// Polled here: Eventually would add goroutines of its own.
			for deadline := time.Now().Add(30 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("workers still running: %d goroutines, %d before", runtime.NumGoroutine(), before)
				}
			}
			w.Close()
		})
	}
}

func goroutineID() string {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	return string(b[:bytes.IndexByte(b, ' ')])
}
