package engine

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/scheduler"
)

// Benchmarks run the built-in model (stories15M shapes, 4096-word
// vocabulary). Run them briefly, e.g.
//
//	go test ./engine -run '^$' -bench . -benchtime 3x
//
// Numbers on a shared machine are noisy; compare ratios within one run.

const benchTokens = 64

// reportRates reports tokens per wall-clock second and per CPU second (the
// latter is what a loaded, shared machine cannot distort much).
func reportRates(b *testing.B, tokens int, cpu time.Duration) {
	b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tok/s")
	if cpu > 0 {
		b.ReportMetric(float64(tokens)/cpu.Seconds(), "tok/cpu-s")
	}
}

func benchBackend(b *testing.B, quant string, maxSeqs int) *Backend {
	b.Helper()
	be, err := New(context.Background(), Config{DataDir: b.TempDir(), Quantize: quant, MaxSequences: maxSeqs})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = be.Close() })
	return be
}

// runRound admits n requests of benchTokens tokens each and waits for all.
func runRound(b *testing.B, be *Backend, n int, round int) int {
	tasks := make([]*scheduler.Task, n)
	for i := range tasks {
		tasks[i] = newTask(context.Background(), "Once upon a time", scheduler.Params{MaxTokens: benchTokens, Temperature: 1, Seed: seed(int64(round*n + i))})
		if !be.Admit(tasks[i]) {
			b.Fatalf("request %d not admitted", i)
		}
	}
	tokens := 0
	for _, t := range tasks {
		<-t.Done()
		res, err := t.Outcome()
		if err != nil {
			b.Fatal(err)
		}
		tokens += res.CompletionTokens
	}
	return tokens
}

// BenchmarkAggregate is tokens/s over all sequences with 1..32 running
// together: the gain continuous batching buys by reading weights once per
// step for all of them.
func BenchmarkAggregate(b *testing.B) {
	for _, quant := range []string{"none", "int8"} {
		for _, n := range []int{1, 4, 16, 32} {
			b.Run(fmt.Sprintf("%s/seqs=%d", quant, n), func(b *testing.B) {
				be := benchBackend(b, quant, 32)
				runRound(b, be, n, -1) // warm up: page faults, KV pages, pool
				tokens := 0
				cpu0 := cpuTime()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					tokens += runRound(b, be, n, i)
				}
				b.StopTimer()
				reportRates(b, tokens, cpuTime()-cpu0)
			})
		}
	}
}

// BenchmarkStep is one decode step of the runner alone (no scheduling):
// the forward pass of n rows.
func BenchmarkStep(b *testing.B) {
	for _, quant := range []string{"none", "int8"} {
		for _, n := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/rows=%d", quant, n), func(b *testing.B) {
				be := benchBackend(b, quant, 32)
				r := newRunner(be.w, be.run.k, be.pool, n, n)
				rows := make([]row, n)
				for i := range rows {
					rows[i] = row{kv: newKV(be.w.cfg, 128), pos: 100, token: 500 + i, logit: i}
				}
				cpu0 := cpuTime()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					r.forward(rows)
				}
				b.StopTimer()
				reportRates(b, n*b.N, cpuTime()-cpu0)
			})
		}
	}
}

// BenchmarkTimeToFirstToken measures how long a new request waits for its
// first token while 0 or 15 other sequences keep generating.
func BenchmarkTimeToFirstToken(b *testing.B) {
	for _, load := range []int{0, 15} {
		b.Run(fmt.Sprintf("load=%d", load), func(b *testing.B) {
			be := benchBackend(b, "none", 32)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for i := 0; i < load; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						t := newTask(ctx, "Once upon a time", scheduler.Params{MaxTokens: 1000, Temperature: 1})
						if be.Admit(t) {
							<-t.Done()
						}
					}
				}()
			}
			defer func() { cancel(); wg.Wait() }()
			for be.Active() < load {
				time.Sleep(time.Millisecond)
			}
			prompt := "the little girl named Lily went to the park with her mom and they played with a big red ball"
			var total time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t := newTask(context.Background(), prompt, scheduler.Params{MaxTokens: 1})
				start := time.Now()
				for !be.Admit(t) {
					<-be.Room()
				}
				<-t.Done()
				total += time.Since(start)
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/ttft")
		})
	}
}

// BenchmarkMemoryPerSequence reports the KV cache a typical request
// reserves and allocates, the full-context worst case, and heap bytes
// allocated per generated token.
func BenchmarkMemoryPerSequence(b *testing.B) {
	be := benchBackend(b, "none", 32)
	const n = 16
	runRound(b, be, n, -1)
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	tokens := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tokens += runRound(b, be, n, i)
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	st := be.Stats()
	b.ReportMetric(float64(st.KVBytesAllocated)/n, "kvB/seq")
	b.ReportMetric(float64(be.Info().KVBytesPerSeq), "kvB/fullseq")
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(tokens), "heapB/tok")
}
