package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
)

// collect reads a task's stream to the end and returns the chunks.
func collect(t testing.TB, task *scheduler.Task) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var all []string
	for {
		chunks, done, err := task.Next(ctx)
		require.NoError(t, err)
		all = append(all, chunks...)
		if done {
			return all
		}
	}
}

// endlessTensors are random weights whose classifier gives <s> and </s>
// logit 0, far below the winners, so generation runs to its limit.
func endlessTensors(c ModelConfig, seed uint64) *testTensors {
	tt := randomTensors(c, seed)
	if !c.SharedClassifier {
		clear(tt.cls[TokenBOS*c.Dim : (TokenEOS+1)*c.Dim])
	}
	return tt
}

func tinyBackend(t testing.TB, c ModelConfig, cfg Config) *Backend {
	return newTestBackend(t, c, endlessTensors(c, 42), cfg)
}

type genCase struct {
	prompt string
	params scheduler.Params
}

func genCases() []genCase {
	var cs []genCase
	prompts := []string{"hello world", "the cat sat", "", "日本 é", "hello hello hello the cat", "world"}
	for i, p := range prompts {
		cs = append(cs,
			genCase{p, scheduler.Params{MaxTokens: 20 + i, Temperature: 0}},
			genCase{p, scheduler.Params{MaxTokens: 25, Temperature: 0.9, Seed: seed(int64(i))}},
			genCase{p, scheduler.Params{MaxTokens: 30, Temperature: 1.2, TopP: 0.9, Seed: seed(int64(100 + i))}},
		)
	}
	return cs
}

// Continuous batching changes nothing in a sequence's output: the same
// requests give identical text alone and all together.
func TestBatchedOutputEqualsUnbatched(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	for _, quant := range []string{"none", "int8"} {
		b := tinyBackend(t, c, Config{Quantize: quant, MaxSequences: 32, PrefillChunk: 3})
		cases := genCases()
		alone := make([]scheduler.Result, len(cases))
		for i, gc := range cases {
			task := newTask(context.Background(), gc.prompt, gc.params)
			require.True(t, b.Admit(task))
			res, err := outcome(t, task)
			require.NoError(t, err)
			alone[i] = res
		}
		steps := b.Stats().Steps
		tasks := make([]*scheduler.Task, len(cases))
		for i, gc := range cases {
			tasks[i] = newTask(context.Background(), gc.prompt, gc.params)
			require.True(t, b.Admit(tasks[i]))
		}
		var generated int
		for i, task := range tasks {
			res, err := outcome(t, task)
			require.NoError(t, err)
			require.Equal(t, alone[i], res, "%s case %d %+v", quant, i, cases[i])
			generated += res.CompletionTokens
		}
		batchedSteps := b.Stats().Steps - steps
		require.Less(t, batchedSteps, uint64(generated/2), "%s: sequences should share steps", quant)
	}
}

func TestStreamedChunksMakeTheResultText(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	b := tinyBackend(t, c, Config{})
	task := newTask(context.Background(), "hello", scheduler.Params{MaxTokens: 12, Temperature: 1, Seed: seed(3)})
	require.True(t, b.Admit(task))
	chunks := collect(t, task)
	res, err := task.Outcome()
	require.NoError(t, err)
	require.Equal(t, res.Text, strings.Join(chunks, ""))
	require.Equal(t, "length", res.FinishReason)
	require.Equal(t, 12, res.CompletionTokens)
	require.Equal(t, len(b.Tokenizer().Encode("hello", true, false)), res.PromptTokens)
	require.Greater(t, len(chunks), 1, "tokens stream one by one")
}

func TestSameSeedSameTextOtherSeedOtherText(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	b := tinyBackend(t, c, Config{})
	run := func(s int64) string {
		task := newTask(context.Background(), "the cat", scheduler.Params{MaxTokens: 40, Temperature: 1, Seed: seed(s)})
		require.True(t, b.Admit(task))
		res, err := outcome(t, task)
		require.NoError(t, err)
		return res.Text
	}
	require.Equal(t, run(7), run(7))
	require.NotEqual(t, run(7), run(8))
}

func TestStopStringEndsCompletionAndIsNotStreamed(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	b := tinyBackend(t, c, Config{})
	params := scheduler.Params{MaxTokens: 40, Temperature: 0}
	task := newTask(context.Background(), "hello world", params)
	require.True(t, b.Admit(task))
	full, err := outcome(t, task)
	require.NoError(t, err)
	require.Greater(t, len(full.Text), 12)
	stop := full.Text[len(full.Text)/2 : len(full.Text)/2+3]
	params.Stop = []string{"never appears \x01", stop}
	task = newTask(context.Background(), "hello world", params)
	require.True(t, b.Admit(task))
	chunks := collect(t, task)
	res, err := task.Outcome()
	require.NoError(t, err)
	require.Equal(t, "stop", res.FinishReason)
	require.Equal(t, full.Text[:strings.Index(full.Text, stop)], res.Text)
	require.Equal(t, res.Text, strings.Join(chunks, ""))
	require.Less(t, res.CompletionTokens, full.CompletionTokens)
}

func TestMaxTokensIsBoundedByContext(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	c.SeqLen = 16
	b := tinyBackend(t, c, Config{})
	task := newTask(context.Background(), "hello world", scheduler.Params{MaxTokens: 1000, Temperature: 1, Seed: seed(1)})
	require.True(t, b.Admit(task))
	res, err := outcome(t, task)
	require.NoError(t, err)
	require.Equal(t, "length", res.FinishReason)
	require.Equal(t, 16-res.PromptTokens+1, res.CompletionTokens)
}

func TestDefaultMaxTokensApplies(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	b := tinyBackend(t, c, Config{DefaultMaxTokens: 9})
	task := newTask(context.Background(), "hi", scheduler.Params{Temperature: 1, Seed: seed(2)})
	require.True(t, b.Admit(task))
	res, err := outcome(t, task)
	require.NoError(t, err)
	require.Equal(t, 9, res.CompletionTokens)
}

func TestPromptLongerThanContextFails(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	c.SeqLen = 8
	b := tinyBackend(t, c, Config{})
	task := newTask(context.Background(), strings.Repeat("zq", 10), scheduler.Params{})
	require.True(t, b.Admit(task), "a task that can never run is finished, not queued")
	_, err := outcome(t, task)
	require.ErrorIs(t, err, scheduler.ErrPromptTooLong, "any backend's callers test the scheduler's error")
	require.Zero(t, b.Active())
}

func TestChatRequestUsesPromptText(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	b := tinyBackend(t, c, Config{})
	req := &scheduler.Request{ID: "chat", Endpoint: scheduler.EndpointChat, Messages: []scheduler.Message{{Role: "user", Content: "hello"}},
		Params: scheduler.Params{MaxTokens: 3}, Stream: true}
	task := scheduler.NewTask(context.Background(), req)
	require.True(t, b.Admit(task))
	res, err := outcome(t, task)
	require.NoError(t, err)
	require.Equal(t, len(b.Tokenizer().Encode(req.PromptText(), true, false)), res.PromptTokens)
}

// longModel has a long context so a generation runs long enough to be
// observed and cancelled while it is running.
func longModel(t testing.TB) ModelConfig {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	c.SeqLen = 4096
	return c
}

func TestCancelMidGenerationFreesSequence(t *testing.T) {
	c := longModel(t)
	b := tinyBackend(t, c, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	task := newTask(ctx, "hello", scheduler.Params{MaxTokens: 4000, Temperature: 1, Seed: seed(1)})
	require.True(t, b.Admit(task))
	require.Equal(t, 1, b.Active())
	require.Positive(t, b.Stats().KVBytesInUse)
	// Wait for generation to be under way.
	_, _, err := task.Next(context.Background())
	require.NoError(t, err)
	cancel()
	res, err := outcome(t, task)
	require.ErrorIs(t, err, context.Canceled)
	require.Less(t, res.CompletionTokens, 4000)
	select {
	case <-b.Room():
	case <-time.After(30 * time.Second):
		t.Fatal("Room did not fire after the sequence left")
	}
	require.Zero(t, b.Active())
	st := b.Stats()
	require.Zero(t, st.KVBytesInUse)
	require.Positive(t, st.KVBytesAllocated, "pages stay on the free list for reuse")
}

func TestAdmitRefusesWhenKVBudgetFullThenAdmitsAfterLeave(t *testing.T) {
	c := longModel(t)
	perSeq := c.KVBytesPerSeq()
	b := tinyBackend(t, c, Config{KVCacheBytes: 2 * perSeq})
	require.Equal(t, 2*perSeq, b.Stats().KVBytesBudget)
	params := scheduler.Params{MaxTokens: 5000, Temperature: 1, Seed: seed(1)}
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	first := newTask(ctx1, "hello", params)
	second := newTask(ctx2, "world", params)
	require.True(t, b.Admit(first))
	require.True(t, b.Admit(second))
	third := newTask(context.Background(), "the cat", scheduler.Params{MaxTokens: 3})
	require.False(t, b.Admit(third), "two full-context sequences fill the budget")
	require.Equal(t, 2, b.Active())
	cancel1()
	_, err := outcome(t, first)
	require.ErrorIs(t, err, context.Canceled)
	select {
	case <-b.Room():
	case <-time.After(30 * time.Second):
		t.Fatal("no Room signal")
	}
	require.True(t, b.Admit(third))
	res, err := outcome(t, third)
	require.NoError(t, err)
	require.Equal(t, 3, res.CompletionTokens)
	cancel2()
	_, err = outcome(t, second)
	require.ErrorIs(t, err, context.Canceled)
	waitFor(t, "all sequences to leave", func() bool { return b.Active() == 0 })
}

func TestAdmitRefusesBeyondMaxSequences(t *testing.T) {
	c := longModel(t)
	b := tinyBackend(t, c, Config{MaxSequences: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	require.True(t, b.Admit(newTask(ctx, "hello", scheduler.Params{MaxTokens: 4000, Temperature: 1})))
	require.False(t, b.Admit(newTask(context.Background(), "world", scheduler.Params{MaxTokens: 1})))
	cancel()
	waitFor(t, "the sequence to leave", func() bool { return b.Active() == 0 })
	task := newTask(context.Background(), "world", scheduler.Params{MaxTokens: 1})
	require.True(t, b.Admit(task))
	_, err := outcome(t, task)
	require.NoError(t, err)
}

func TestCloseFinishesRunningTasks(t *testing.T) {
	c := longModel(t)
	ckpt, tokPath := writeModel(t, c, endlessTensors(c, 1))
	b, err := New(context.Background(), Config{Checkpoint: ckpt, Tokenizer: tokPath})
	require.NoError(t, err)
	var tasks []*scheduler.Task
	for i := 0; i < 3; i++ {
		task := newTask(context.Background(), fmt.Sprint("hello ", i), scheduler.Params{MaxTokens: 4000, Temperature: 1})
		require.True(t, b.Admit(task))
		tasks = append(tasks, task)
	}
	require.NoError(t, b.Close())
	for _, task := range tasks {
		_, err := outcome(t, task)
		require.ErrorIs(t, err, ErrClosed)
	}
	late := newTask(context.Background(), "late", scheduler.Params{})
	require.True(t, b.Admit(late))
	_, err = outcome(t, late)
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, b.Close(), "Close is idempotent")
}

func TestConcurrentAdmitsAllFinish(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	b := tinyBackend(t, c, Config{MaxSequences: 4})
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			task := newTask(context.Background(), fmt.Sprint("the cat ", i), scheduler.Params{MaxTokens: 10, Temperature: 1})
			for !b.Admit(task) {
				select {
				case <-b.Room():
				case <-time.After(50 * time.Millisecond):
				}
			}
			<-task.Done()
			_, err := task.Outcome()
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, uint64(20), b.Stats().Requests)
	require.Zero(t, b.Stats().KVBytesInUse)
}

func TestConfigValidateNamesBadField(t *testing.T) {
	cases := map[string]Config{
		"checkpoint":         {Checkpoint: "m.bin"},
		"tokenizer":          {Tokenizer: "t.bin", DataDir: "d"},
		"data_dir":           {},
		"quantize":           {DataDir: "d", Quantize: "int4"},
		"max_sequences":      {DataDir: "d", MaxSequences: -1},
		"threads":            {DataDir: "d", Threads: -2},
		"kv_cache_bytes":     {DataDir: "d", KVCacheBytes: -1},
		"prefill_chunk":      {DataDir: "d", PrefillChunk: -1},
		"default_max_tokens": {DataDir: "d", DefaultMaxTokens: -1},
	}
	for field, cfg := range cases {
		err := cfg.Validate()
		require.ErrorIs(t, err, ErrInvalidConfig, field)
		require.Contains(t, err.Error(), field)
	}
	require.NoError(t, Config{DataDir: "d"}.Validate())
	require.NoError(t, Config{Checkpoint: "m", Tokenizer: "t", Quantize: "int8"}.Validate())
	require.NoError(t, Config{Checkpoint: "m.gguf"}.Validate())
}

func TestNewRejectsBudgetBelowOneSequence(t *testing.T) {
	c := tinyConfig(tinyTokenizer(t).VocabSize())
	ckpt, tokPath := writeModel(t, c, randomTensors(c, 1))
	_, err := New(context.Background(), Config{Checkpoint: ckpt, Tokenizer: tokPath, KVCacheBytes: c.KVBytesPerSeq() - 1})
	require.ErrorIs(t, err, ErrInvalidConfig)
}

func TestNewCreatesDefaultModelInDataDir(t *testing.T) {
	dir := t.TempDir()
	b, err := New(context.Background(), Config{DataDir: dir})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	ckpt := filepath.Join(dir, "models", "default", "model.bin")
	st1, err := os.Stat(ckpt)
	require.NoError(t, err)
	info := b.Info()
	require.Equal(t, 288, info.Dim)
	require.Equal(t, 6, info.Layers)
	task := newTask(context.Background(), "Once upon a time", scheduler.Params{MaxTokens: 8})
	require.True(t, b.Admit(task))
	res, err := outcome(t, task)
	require.NoError(t, err)
	require.Equal(t, 8, res.CompletionTokens)

	// A second start reuses the files.
	b2, err := New(context.Background(), Config{DataDir: dir, Quantize: "int8"})
	require.NoError(t, err)
	require.NoError(t, b2.Close())
	st2, err := os.Stat(ckpt)
	require.NoError(t, err)
	require.Equal(t, st1.ModTime(), st2.ModTime())
}

func TestNewHonoursCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := New(ctx, Config{DataDir: t.TempDir()})
	require.True(t, errors.Is(err, context.Canceled), "%v", err)
}
