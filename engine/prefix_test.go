package engine

import (
	"context"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/scheduler"
	"github.com/stretchr/testify/require"
)

func runPrompt(t *testing.T, b *Backend, prompt string, p scheduler.Params) scheduler.Result {
	t.Helper()
	task := newTask(context.Background(), prompt, p)
	require.True(t, b.Admit(task))
	res, err := outcome(t, task)
	require.NoError(t, err)
	return res
}

// Reusing a cached prefix's KV changes nothing in the output: greedy and
// seeded sampling give the same text with the prefix cache as without, for
// prompts that share a system prefix, repeat exactly, or share nothing.
func TestPrefixCacheOutputIdentical(t *testing.T) {
	c := longModel(t)
	for _, quant := range []string{"none", "int8"} {
		cached := tinyBackend(t, c, Config{Quantize: quant, PrefillChunk: 7})
		plain := tinyBackend(t, c, Config{Quantize: quant, PrefillChunk: 7, NoPrefixCache: true})
		system := strings.Repeat("the cat sat hello world ", 12)
		prompts := []string{system + "hello", system + "the cat", system + "hello", "world " + system, system}
		params := []scheduler.Params{{MaxTokens: 12}, {MaxTokens: 9, Temperature: 0.9, Seed: seed(3)}}
		for _, p := range params {
			for i, prompt := range prompts {
				want := runPrompt(t, plain, prompt, p)
				got := runPrompt(t, cached, prompt, p)
				require.Equal(t, want, got, "%s prompt %d params %+v", quant, i, p)
			}
		}
		st := cached.Stats()
		require.Positive(t, st.PrefixHitTokens, "later prompts reuse the system prefix")
		require.Less(t, st.PromptTokens, plain.Stats().PromptTokens, "cached prefixes skip prefill")
		require.Zero(t, plain.Stats().PrefixHitTokens)
		require.Zero(t, st.KVBytesInUse)
		require.Positive(t, st.PrefixCachedBytes)
	}
}

// Sequences that share a cached prefix while running read the same pages;
// all of them finish with the text they would have produced alone.
func TestPrefixCacheSharedByConcurrentSequences(t *testing.T) {
	c := longModel(t)
	b := tinyBackend(t, c, Config{PrefillChunk: 16})
	plain := tinyBackend(t, c, Config{PrefillChunk: 16, NoPrefixCache: true})
	system := strings.Repeat("hello world the cat ", 10)
	runPrompt(t, b, system+"sat", scheduler.Params{MaxTokens: 2})
	suffixes := []string{"hello", "world", "the cat sat", "cat", "sat sat"}
	tasks := make([]*scheduler.Task, len(suffixes))
	for i, s := range suffixes {
		tasks[i] = newTask(context.Background(), system+s, scheduler.Params{MaxTokens: 10})
		require.True(t, b.Admit(tasks[i]))
	}
	for i, task := range tasks {
		res, err := outcome(t, task)
		require.NoError(t, err)
		require.Equal(t, runPrompt(t, plain, system+suffixes[i], scheduler.Params{MaxTokens: 10}), res)
	}
	waitFor(t, "sequences to leave", func() bool { return b.Active() == 0 })
	require.Zero(t, b.Stats().KVBytesInUse)
}

// Cached prefixes never push the cache over its budget: a reservation
// evicts idle prefix pages, least recently used first, and a full-length
// sequence still fits.
func TestPrefixCacheEvictsWithinBudget(t *testing.T) {
	c := longModel(t)
	perSeq := c.KVBytesPerSeq()
	b := tinyBackend(t, c, Config{KVCacheBytes: perSeq})
	for i := range 20 {
		prompt := strings.Repeat([]string{"hello ", "world ", "the ", "cat ", "sat "}[i%5], 40+i*3)
		runPrompt(t, b, prompt, scheduler.Params{MaxTokens: 2})
		st := b.Stats()
		require.LessOrEqual(t, st.PrefixCachedBytes+st.KVBytesInUse, st.KVBytesBudget)
		require.LessOrEqual(t, st.KVBytesAllocated, st.KVBytesBudget)
	}
	require.Positive(t, b.Stats().PrefixCachedBytes)
	// A full-context request evicts whatever it needs.
	res := runPrompt(t, b, "hello", scheduler.Params{MaxTokens: 5000, Temperature: 1, Seed: seed(1)})
	require.Equal(t, c.SeqLen-1, res.CompletionTokens)
}

func TestBlockHashesChain(t *testing.T) {
	a := make([]int, 40)
	for i := range a {
		a[i] = i
	}
	h := blockHashes(a)
	require.Len(t, h, 2)
	b := append([]int{99}, a[1:]...)
	hb := blockHashes(b)
	require.NotEqual(t, h[0], hb[0])
	require.NotEqual(t, h[1], hb[1], "a block's hash covers its whole prefix")
	require.Nil(t, blockHashes(a[:15]))
}

// A prompt's blocks are shared as soon as its prefill passed them: a second
// request with the same prefix reuses them while the first still runs.
func TestPrefixSharedWhileFirstStillRuns(t *testing.T) {
	c := longModel(t)
	b := tinyBackend(t, c, Config{})
	plain := tinyBackend(t, c, Config{NoPrefixCache: true})
	system := strings.Repeat("world the cat sat hello ", 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := newTask(ctx, system+"first", scheduler.Params{MaxTokens: 3000, Temperature: 1, Seed: seed(2)})
	require.True(t, b.Admit(first))
	_, _, err := first.Next(context.Background()) // prefill done
	require.NoError(t, err)
	got := runPrompt(t, b, system+"second", scheduler.Params{MaxTokens: 8})
	require.Equal(t, runPrompt(t, plain, system+"second", scheduler.Params{MaxTokens: 8}), got)
	require.Positive(t, b.Stats().PrefixHitTokens)
	require.Equal(t, 1, b.Active(), "the first is still running")
	cancel()
	_, err = outcome(t, first)
	require.ErrorIs(t, err, context.Canceled)
	waitFor(t, "the first to leave", func() bool { return b.Active() == 0 })
	st := b.Stats()
	require.Zero(t, st.KVBytesInUse)
	require.LessOrEqual(t, st.PrefixCachedBytes, st.KVBytesBudget)
}
