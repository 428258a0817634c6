package scheduler_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/scheduler"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

// BenchmarkSimBatcherThroughput measures what dynamic batching buys: 64
// closed-loop clients against the sim backend with its default costs
// (base 20ms, per_item 8ms, exponent 0.5: a batch of 64 costs 3x a batch
// of 1), one slot, max_size 1 versus 64. It reports req/s for each and, on
// the max_size=64 run, the ratio to max_size=1.
func BenchmarkSimBatcherThroughput(b *testing.B) {
	const clients = 64
	rates := map[int]float64{}
	for _, size := range []int{1, 64} {
		b.Run(fmt.Sprintf("max_size=%d", size), func(b *testing.B) {
			sc := sim.DefaultConfig()
			sc.Model, sc.TokenInterval = "m", 0
			be, err := sim.New(sc)
			if err != nil {
				b.Fatal(err)
			}
			s := scheduler.New(scheduler.Config{})
			if err := s.AddModel("m", be, scheduler.Settings{MaxSize: size, FlushTimeout: 10 * time.Millisecond, MaxQueue: 1000, Slots: 1}); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = s.Drain(context.Background()) }()

			var next atomic.Int64
			var failed atomic.Value
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for c := 0; c < clients; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						req := &scheduler.Request{Model: "m", Endpoint: scheduler.EndpointCompletion, Prompt: fmt.Sprint("client ", c), Params: scheduler.Params{MaxTokens: 4}}
						task, err := s.Submit(context.Background(), req)
						if err == nil {
							<-task.Done()
							_, err = task.Outcome()
						}
						if err != nil {
							failed.Store(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			rate := float64(b.N) / elapsed.Seconds()
			rates[size] = rate
			b.ReportMetric(rate, "req/s")
			if size == 64 && rates[1] > 0 {
				b.ReportMetric(rate/rates[1], "x_vs_max_size_1")
			}
		})
	}
}
