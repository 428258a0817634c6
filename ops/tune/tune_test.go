package tune_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/ops/adminapi"
	"github.com/shoal-dev/shoal/ops/bench"
	"github.com/shoal-dev/shoal/ops/bench/benchtest"
	"github.com/shoal-dev/shoal/ops/tune"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

// peakedSim costs 32ms + 0.5ms*n² a batch of n on one slot: throughput
// n/cost(n) peaks at n = 8 (125/s) against 4 and 16 (100/s), 32 (59/s) and
// 1 (31/s). A closed loop of 32 keeps at least 16 requests waiting whenever
// a batch ends, so batches run full up to 16 whatever the flush timeout,
// and max_size 8 is the one best setting; with a p95 target of 1.5s every
// size but 1 qualifies, so throughput decides.
func peakedSim() sim.Config {
	return sim.Config{Base: 32 * time.Millisecond, PerItem: 500 * time.Microsecond, Exponent: 2, DefaultMaxTokens: 1}
}

const peakedModel = "sim-peaked"

func startPeaked(t *testing.T) *benchtest.Node {
	t.Helper()
	return benchtest.Start(t, "tune-node", benchtest.Model{Name: peakedModel, Sim: peakedSim(), MaxSize: 64, FlushTimeout: 10 * time.Millisecond, Slots: 1})
}

func tuneCfg(n *benchtest.Node) tune.Config {
	return tune.Config{
		URL: n.URL, Token: benchtest.AdminToken, Models: []string{peakedModel},
		Load:         bench.Config{Concurrency: 32, MaxTokens: 1},
		P95Target:    1500 * time.Millisecond,
		StepDuration: time.Second, StepWarmup: 300 * time.Millisecond,
	}
}

func runTune(t *testing.T, cfg tune.Config) tune.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := tune.Run(ctx, cfg)
	require.NoError(t, err)
	return res
}

func batching(t *testing.T, n *benchtest.Node) tune.Setting {
	t.Helper()
	all, err := adminapi.NewClient(n.URL, benchtest.AdminToken, nil).Batching(context.Background())
	require.NoError(t, err)
	return tune.Setting(all[peakedModel])
}

func TestRunFindsBestBatchSize(t *testing.T) {
	n := startPeaked(t)
	res := runTune(t, tuneCfg(n))

	require.Len(t, res.Models, 1)
	m := res.Models[0]
	require.Equal(t, tune.Setting{MaxSize: 64, FlushTimeout: 10 * time.Millisecond}, m.Original)
	var table bytes.Buffer
	require.NoError(t, tune.WriteText(&table, res, "1.5s"))
	t.Log("\n" + table.String())
	require.NotNil(t, m.Best, table.String())
	require.Equal(t, 8, m.Best.MaxSize, table.String())
	require.True(t, m.Applied)
	require.Equal(t, m.Best.Setting, batching(t, n), "the winner is the cluster's setting now")
	// Adaptive: fewer steps than the 32-point grid, both phases used.
	require.Less(t, len(m.Steps), 32)
	phases := map[string]bool{}
	for _, s := range m.Steps {
		phases[s.Phase] = true
		require.Empty(t, s.Err)
	}
	require.True(t, phases["coarse"] && phases["refine"])

	var out bytes.Buffer
	require.NoError(t, tune.WriteText(&out, res, "1.5s"))
	require.Contains(t, out.String(), "<- best")
	require.Contains(t, out.String(), "applied max_size=8")
}

func TestRunDryRunRestoresOriginal(t *testing.T) {
	n := startPeaked(t)
	// Traffic without repeats leaves the cache hit rate at zero, which
	// tune's advice reports.
	_, err := bench.Run(context.Background(), bench.Config{URL: n.URL, Model: peakedModel, Requests: 40, Concurrency: 32, MaxTokens: 1})
	require.NoError(t, err)

	cfg := tuneCfg(n)
	cfg.DryRun, cfg.Exhaustive = true, true
	cfg.Sizes, cfg.FlushTimeouts = []int{1, 8}, []time.Duration{time.Millisecond}
	var seen []tune.Step
	cfg.OnStep = func(model string, s tune.Step) {
		require.Equal(t, peakedModel, model)
		seen = append(seen, s)
	}
	res := runTune(t, cfg)

	m := res.Models[0]
	require.Len(t, seen, 2)
	require.Equal(t, seen, m.Steps)
	require.NotNil(t, m.Best)
	require.Equal(t, 8, m.Best.MaxSize)
	require.False(t, m.Applied)
	require.Equal(t, m.Original, batching(t, n), "dry run leaves the original setting")
	require.Contains(t, m.Note, "recommend max_size=8")

	var cache bool
	for _, a := range res.Advice {
		if bytes.Contains([]byte(a.Symptom), []byte("cache hit rate")) {
			cache = true
		}
	}
	require.True(t, cache, "advice: %+v", res.Advice)
}

func TestRunKeepsOriginalWhenNothingMeetsTarget(t *testing.T) {
	n := startPeaked(t)
	cfg := tuneCfg(n)
	cfg.P95Target = time.Millisecond
	cfg.Exhaustive = true
	cfg.Sizes, cfg.FlushTimeouts = []int{2, 4}, []time.Duration{5 * time.Millisecond}
	res := runTune(t, cfg)

	m := res.Models[0]
	require.Nil(t, m.Best)
	require.False(t, m.Applied)
	require.Contains(t, m.Note, "no setting kept p95 under 1ms")
	require.Equal(t, m.Original, batching(t, n))
}

func TestRunRestoresOnCancel(t *testing.T) {
	n := startPeaked(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := tuneCfg(n)
	cfg.OnStep = func(string, tune.Step) { cancel() }
	_, err := tune.Run(ctx, cfg)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, tune.Setting{MaxSize: 64, FlushTimeout: 10 * time.Millisecond}, batching(t, n))
}

func TestRunTunesEveryModelByDefault(t *testing.T) {
	n := benchtest.Start(t, "two-models",
		benchtest.Model{Name: "a", Sim: benchtest.FastSim(), MaxSize: 4, FlushTimeout: time.Millisecond},
		benchtest.Model{Name: "b", Sim: benchtest.FastSim(), MaxSize: 4, FlushTimeout: time.Millisecond})
	res := runTune(t, tune.Config{URL: n.URL, Token: benchtest.AdminToken, DryRun: true, Exhaustive: true,
		Sizes: []int{2}, FlushTimeouts: []time.Duration{time.Millisecond},
		Load: bench.Config{Concurrency: 2, MaxTokens: 1}, StepDuration: 200 * time.Millisecond})
	require.Len(t, res.Models, 2)
	require.Equal(t, "a", res.Models[0].Model)
	require.Equal(t, "b", res.Models[1].Model)
}

func TestRunRejectsUnknownModel(t *testing.T) {
	n := startPeaked(t)
	cfg := tuneCfg(n)
	cfg.Models = []string{"nope"}
	_, err := tune.Run(context.Background(), cfg)
	require.ErrorContains(t, err, `model "nope"`)
}

func TestRunRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]tune.Config{
		"no url":     {},
		"bad size":   {URL: "http://127.0.0.1:1", Sizes: []int{0}},
		"bad flush":  {URL: "http://127.0.0.1:1", FlushTimeouts: []time.Duration{-time.Second}},
		"short step": {URL: "http://127.0.0.1:1", StepDuration: time.Millisecond},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tune.Run(context.Background(), cfg)
			require.ErrorIs(t, err, tune.ErrBadConfig)
		})
	}
}
