package sim_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

const waitFor = 10 * time.Second

func newSim(t *testing.T, mutate func(*sim.Config)) *sim.Backend {
	t.Helper()
	c := sim.DefaultConfig()
	c.Model = "sim-test"
	c.Base, c.PerItem, c.TokenInterval = 0, 0, 0
	if mutate != nil {
		mutate(&c)
	}
	b, err := sim.New(c)
	require.NoError(t, err)
	return b
}

// completion is a streamed request, so its tokens can be read as chunks.
func completion(prompt string, p scheduler.Params) *scheduler.Request {
	return &scheduler.Request{ID: prompt, Model: "sim-test", Endpoint: scheduler.EndpointCompletion, Prompt: prompt, Params: p, Stream: true}
}

// run runs one batch to the end and returns each task's result and the
// chunks it streamed.
func run(t *testing.T, b *sim.Backend, reqs ...*scheduler.Request) ([]scheduler.Result, [][]string) {
	t.Helper()
	tasks := make([]*scheduler.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = scheduler.NewTask(t.Context(), r)
	}
	b.Run(t.Context(), tasks)
	results := make([]scheduler.Result, len(tasks))
	streams := make([][]string, len(tasks))
	for i, task := range tasks {
		chunks, finished, err := task.Next(t.Context())
		require.NoError(t, err)
		require.True(t, finished, "Run returned before finishing task %d", i)
		res, err := task.Outcome()
		require.NoError(t, err)
		results[i], streams[i] = res, chunks
	}
	return results, streams
}

func TestCostFormula(t *testing.T) {
	for _, tc := range []struct {
		name     string
		base     time.Duration
		perItem  time.Duration
		exponent float64
		n        int
		want     time.Duration
	}{
		{"one item", 20 * time.Millisecond, 8 * time.Millisecond, 0.5, 1, 28 * time.Millisecond},
		{"sqrt growth", 20 * time.Millisecond, 8 * time.Millisecond, 0.5, 64, 84 * time.Millisecond},
		{"linear", 10 * time.Millisecond, 2 * time.Millisecond, 1, 10, 30 * time.Millisecond},
		{"flat", 5 * time.Millisecond, 3 * time.Millisecond, 0, 100, 8 * time.Millisecond},
		{"free", 0, 0, 0.5, 64, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newSim(t, func(c *sim.Config) { c.Base, c.PerItem, c.Exponent = tc.base, tc.perItem, tc.exponent })
			require.Equal(t, tc.want, b.Cost(tc.n))
		})
	}
}

func TestDefaultsMakeBatchOf64CostAboutThreeTimesBatchOf1(t *testing.T) {
	b, err := sim.New(sim.DefaultConfig())
	require.NoError(t, err)
	ratio := float64(b.Cost(64)) / float64(b.Cost(1))
	require.InDelta(t, 3.0, ratio, 0.5)
}

func TestConfigValidateNamesField(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*sim.Config)
		field  string
	}{
		{func(c *sim.Config) { c.Base = -time.Millisecond }, "base"},
		{func(c *sim.Config) { c.PerItem = -time.Millisecond }, "per_item"},
		{func(c *sim.Config) { c.Exponent = 3 }, "exponent"},
		{func(c *sim.Config) { c.Exponent = -1 }, "exponent"},
		{func(c *sim.Config) { c.TokenInterval = -time.Millisecond }, "token_interval"},
		{func(c *sim.Config) { c.DefaultMaxTokens = -1 }, "default_max_tokens"},
	} {
		c := sim.DefaultConfig()
		tc.mutate(&c)
		_, err := sim.New(c)
		require.ErrorContains(t, err, tc.field)
	}
}

func TestTextDeterministicForSameRequest(t *testing.T) {
	b := newSim(t, nil)
	p := scheduler.Params{MaxTokens: 32, Temperature: 0.7}
	first, _ := run(t, b, completion("tell me about fish", p))
	again, _ := run(t, newSim(t, nil), completion("tell me about fish", p))
	require.Equal(t, first[0], again[0])
	require.NotEmpty(t, first[0].Text)
}

func TestTextDiffersWhenInputsDiffer(t *testing.T) {
	b := newSim(t, nil)
	p := scheduler.Params{MaxTokens: 32}
	base, _ := run(t, b, completion("tell me about fish", p))
	otherPrompt, _ := run(t, b, completion("tell me about birds", p))
	require.NotEqual(t, base[0].Text, otherPrompt[0].Text)

	hot := p
	hot.Temperature = 1.5
	otherParams, _ := run(t, b, completion("tell me about fish", hot))
	require.NotEqual(t, base[0].Text, otherParams[0].Text)

	other := newSim(t, func(c *sim.Config) { c.Model = "another-model" })
	otherModel, _ := run(t, other, completion("tell me about fish", p))
	require.NotEqual(t, base[0].Text, otherModel[0].Text)
}

func TestBatchMembersGetTheirOwnText(t *testing.T) {
	b := newSim(t, nil)
	p := scheduler.Params{MaxTokens: 32}
	alone, _ := run(t, b, completion("one", p))
	batched, _ := run(t, b, completion("zero", p), completion("one", p), completion("two", p))
	require.Equal(t, alone[0], batched[1], "batching does not change a request's output")
	require.NotEqual(t, batched[0].Text, batched[2].Text)
}

func TestMaxTokensFinishesWithLength(t *testing.T) {
	b := newSim(t, nil)
	// Natural answers are at least 8 words, so 3 always cuts them short.
	res, stream := run(t, b, completion("a prompt of five words", scheduler.Params{MaxTokens: 3}))
	require.Equal(t, "length", res[0].FinishReason)
	require.Equal(t, 3, res[0].CompletionTokens)
	require.Len(t, strings.Fields(res[0].Text), 3)
	require.Equal(t, 5, res[0].PromptTokens)
	require.Equal(t, res[0].Text, strings.Join(stream[0], ""))
}

func TestDefaultMaxTokensApplies(t *testing.T) {
	b := newSim(t, func(c *sim.Config) { c.DefaultMaxTokens = 4 })
	res, _ := run(t, b, completion("x", scheduler.Params{}))
	require.Equal(t, "length", res[0].FinishReason)
	require.Equal(t, 4, res[0].CompletionTokens)
}

func TestNaturalEndFinishesWithStop(t *testing.T) {
	b := newSim(t, nil)
	// Natural answers are at most 31 words, so 64 never cuts them.
	res, stream := run(t, b, completion("hello", scheduler.Params{MaxTokens: 64}))
	require.Equal(t, "stop", res[0].FinishReason)
	require.True(t, strings.HasSuffix(res[0].Text, "end."), res[0].Text)
	require.Equal(t, res[0].Text, strings.Join(stream[0], ""))
}

func TestStopSequenceEndsTextBeforeIt(t *testing.T) {
	b := newSim(t, nil)
	plain, _ := run(t, b, completion("stop test prompt", scheduler.Params{MaxTokens: 64}))
	words := strings.Fields(plain[0].Text)
	require.GreaterOrEqual(t, len(words), 8)
	for _, tc := range []struct {
		name string
		stop string
	}{
		{"one word", words[4]},
		// A stop string across two words: the first word must not reach
		// the stream before the second shows it is a stop.
		{"across words", words[3] + " " + words[4]},
		{"inside a word", words[5][:1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := plain[0].Text[:strings.Index(plain[0].Text, tc.stop)]
			res, stream := run(t, b, completion("stop test prompt", scheduler.Params{MaxTokens: 64, Stop: []string{"never-produced", tc.stop}}))
			require.Equal(t, "stop", res[0].FinishReason)
			require.Equal(t, want, res[0].Text)
			require.NotContains(t, res[0].Text, tc.stop)
			require.Equal(t, res[0].Text, strings.Join(stream[0], ""), "streamed text equals the final text")
		})
	}
}

func TestUnmatchedStopStreamsEverything(t *testing.T) {
	b := newSim(t, nil)
	plain, plainStream := run(t, b, completion("hello there", scheduler.Params{MaxTokens: 6}))
	// "zz" never appears, but a trailing "z" would have been held back:
	// it must still be released at the end.
	res, stream := run(t, b, completion("hello there", scheduler.Params{MaxTokens: 6, Stop: []string{"zz"}}))
	require.Equal(t, plain[0].Text, res[0].Text)
	require.Equal(t, "length", res[0].FinishReason)
	require.Equal(t, res[0].Text, strings.Join(stream[0], ""))
	require.Len(t, plainStream[0], 6, "one chunk per token")
}

func TestStreamsTokensProgressively(t *testing.T) {
	b := newSim(t, func(c *sim.Config) { c.TokenInterval = 25 * time.Millisecond })
	task := scheduler.NewTask(t.Context(), completion("stream me", scheduler.Params{MaxTokens: 12}))
	go b.Run(t.Context(), []*scheduler.Task{task})

	var chunks []string
	reads, earlyReads := 0, 0
	for {
		got, finished, err := task.Next(t.Context())
		require.NoError(t, err)
		reads++
		if !finished && len(got) > 0 {
			earlyReads++
		}
		chunks = append(chunks, got...)
		if finished {
			break
		}
	}
	res, err := task.Outcome()
	require.NoError(t, err)
	require.Positive(t, earlyReads, "output arrived before the task finished")
	require.Len(t, chunks, res.CompletionTokens, "one chunk per token")
	require.Equal(t, res.Text, strings.Join(chunks, ""))
}

func TestCancelMidStreamFinishesWithCancellation(t *testing.T) {
	b := newSim(t, func(c *sim.Config) { c.TokenInterval = 20 * time.Millisecond })
	ctx, cancel := context.WithCancel(t.Context())
	task := scheduler.NewTask(ctx, completion("long", scheduler.Params{MaxTokens: 1000}))
	go b.Run(t.Context(), []*scheduler.Task{task})
	got, _, err := task.Next(t.Context())
	require.NoError(t, err)
	require.NotEmpty(t, got)
	cancel()
	select {
	case <-task.Done():
	case <-time.After(waitFor):
		t.Fatal("cancelled task did not finish")
	}
	_, err = task.Outcome()
	require.ErrorIs(t, err, context.Canceled)
}

func TestChatPromptTextFeedsGeneration(t *testing.T) {
	b := newSim(t, nil)
	chat := &scheduler.Request{Model: "sim-test", Endpoint: scheduler.EndpointChat, Messages: []scheduler.Message{
		{Role: "system", Content: "be brief"}, {Role: "user", Content: "hi there"},
	}, Params: scheduler.Params{MaxTokens: 64}}
	require.Equal(t, "system: be brief\nuser: hi there\nassistant:", chat.PromptText())
	res, _ := run(t, b, chat)
	require.Equal(t, 7, res[0].PromptTokens)
	require.Equal(t, strings.Join(b.Words(chat, 64), " "), res[0].Text)
}

// The deadline of a request that is still in its batch's compute time
// must surface as DeadlineExceeded (the client gets 504), not as the batch
// context's plain cancellation.
func TestDeadlineDuringComputeIsDeadlineExceeded(t *testing.T) {
	b := newSim(t, func(c *sim.Config) { c.Base = time.Minute })
	s := scheduler.New(scheduler.Config{})
	require.NoError(t, s.AddModel("sim-test", b, scheduler.Settings{MaxSize: 1, MaxQueue: 10, Slots: 1}))
	t.Cleanup(func() { _ = s.Drain(context.Background()) })
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	task, err := s.Submit(ctx, completion("slow", scheduler.Params{}))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return s.Load()["sim-test"].ActiveBatches == 1 || ctx.Err() != nil }, waitFor, time.Millisecond)
	select {
	case <-task.Done():
	case <-time.After(waitFor):
		t.Fatal("task did not finish at its deadline")
	}
	_, err = task.Outcome()
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestSetSlowdownScalesCost(t *testing.T) {
	b, err := sim.New(sim.Config{Base: 10 * time.Millisecond, PerItem: time.Millisecond, Exponent: 1})
	require.NoError(t, err)
	require.Equal(t, 14*time.Millisecond, b.Cost(4))
	b.SetSlowdown(4)
	require.Equal(t, 56*time.Millisecond, b.Cost(4))
	b.SetSlowdown(math.NaN())
	require.Equal(t, 14*time.Millisecond, b.Cost(4))
}
