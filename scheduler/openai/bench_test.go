package openai

import (
	"context"
	"fmt"
	"testing"

	"github.com/shoal-dev/shoal/scheduler"
)

// BenchmarkRunCompletions64 runs a batch of 64 completions with equal
// parameters against a loopback upstream: grouped into one call with a
// prompt array, and one call per prompt (MaxPrompts 1, as for servers that
// take no arrays). It measures this package's and HTTP's overhead; a real
// model server's batching gain comes on top.
func BenchmarkRunCompletions64(b *testing.B) {
	for _, maxPrompts := range []int{64, 1} {
		b.Run(fmt.Sprintf("max_prompts=%d", maxPrompts), func(b *testing.B) {
			u := newUpstream(b)
			be, err := New(Config{Model: "m", URL: u.url(), MaxPrompts: maxPrompts})
			if err != nil {
				b.Fatal(err)
			}
			defer be.Close()
			reqs := make([]*scheduler.Request, 64)
			for i := range reqs {
				reqs[i] = completion(fmt.Sprintf("prompt number %d", i), scheduler.Params{MaxTokens: 16})
			}
			b.ReportAllocs()
			for b.Loop() {
				batch := tasks(context.Background(), reqs...)
				be.Run(context.Background(), batch)
				for _, t := range batch {
					if _, err := t.Outcome(); err != nil {
						b.Fatal(err)
					}
				}
			}
			calls, _, _, conns := u.stats()
			b.ReportMetric(float64(calls)/float64(b.N), "upstream-calls/op")
			b.ReportMetric(float64(conns), "conns-opened")
		})
	}
}
