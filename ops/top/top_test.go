package top_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops/bench"
	"github.com/shoal-dev/shoal/ops/bench/benchtest"
	"github.com/shoal-dev/shoal/ops/top"
)

func model() benchtest.Model {
	return benchtest.Model{Name: "sim-fast", Sim: benchtest.FastSim(), MaxSize: 16, FlushTimeout: time.Millisecond}
}

// load runs a closed-loop benchmark in the background until the test ends
// and waits for it to finish.
func load(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = bench.Run(ctx, bench.Config{URL: url, Model: "sim-fast", Duration: time.Minute, Concurrency: 4, MaxTokens: 4})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// collectRated returns the first frame whose members all have rates.
func collectRated(t *testing.T, c *top.Collector) top.Frame {
	t.Helper()
	var f top.Frame
	require.EventuallyWithT(t, func(ct *assert.CollectT) { f = collectOnce(ct, c) }, 30*time.Second, 100*time.Millisecond)
	return f
}

// collectOnce collects one frame and checks that every member has rates;
// a failure ends only the EventuallyWithT tick that ct belongs to.
func collectOnce(ct *assert.CollectT, c *top.Collector) top.Frame {
	f, err := c.Collect(context.Background())
	require.NoError(ct, err)
	require.NotEmpty(ct, f.Members)
	for _, m := range f.Members {
		assert.True(ct, m.Rated, "member %s has no rates yet", m.Name)
		assert.Empty(ct, m.Err, "member %s", m.Name)
	}
	return f
}

func TestCollectShowsClusterMembers(t *testing.T) {
	nodes := benchtest.StartCluster(t, 3, model())
	load(t, nodes[0].URL)
	c, err := top.New(top.Config{URL: nodes[1].URL, Token: benchtest.AdminToken})
	require.NoError(t, err)

	var f top.Frame
	// Wait until load shows up as tokens per second somewhere and every
	// member's gossiped load has arrived.
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		f = collectOnce(ct, c)
		total := 0.0
		for _, m := range f.Members {
			total += m.TokensPerSec
			if assert.Len(ct, m.Models, 1, "member %s", m.Name) {
				assert.Positive(ct, m.Models[0].Slots, "member %s", m.Name)
			}
		}
		assert.Positive(ct, total, "no tokens per second yet")
	}, 30*time.Second, 100*time.Millisecond)

	require.Len(t, f.Members, 3)
	require.NotEmpty(t, f.Leader)
	leaders := 0
	for i, m := range f.Members {
		require.Equal(t, nodes[i].Name(), m.Name)
		require.Equal(t, "alive", m.State)
		require.Empty(t, m.Err)
		require.Len(t, m.Models, 1)
		require.Equal(t, "sim-fast", m.Models[0].Name)
		require.Positive(t, m.Models[0].Slots, "%+v", f.Members)
		if m.Role == "leader" {
			leaders++
			require.Equal(t, f.Leader, m.Name)
		}
	}
	require.Equal(t, 1, leaders)
	require.Empty(t, f.Warnings)

	var out bytes.Buffer
	require.NoError(t, top.Render(&out, f))
	text := out.String()
	for _, want := range []string{"MEMBER", "TOK/S", "CACHE HIT", "node-1", "node-2", "node-3", "leader", "sim-fast", "breakers: "} {
		require.Contains(t, text, want)
	}
}

func TestCollectRatesFollowLoad(t *testing.T) {
	n := benchtest.Start(t, "top-node", model())
	c, err := top.New(top.Config{URL: n.URL, Token: benchtest.AdminToken})
	require.NoError(t, err)
	idle := collectRated(t, c)
	require.Zero(t, idle.Members[0].TokensPerSec, "no load, no tokens")
	require.False(t, idle.Members[0].CacheKnown)

	load(t, n.URL)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		f, err := c.Collect(context.Background())
		require.NoError(ct, err)
		require.NotEmpty(ct, f.Members)
		m := f.Members[0]
		assert.Positive(ct, m.TokensPerSec)
		assert.Positive(ct, m.RequestsPerSec)
		if assert.NotEmpty(ct, m.Models) {
			assert.Positive(ct, m.Models[0].TokensPerSec)
		}
		assert.True(ct, m.CacheKnown)
	}, 30*time.Second, 100*time.Millisecond)
}

func TestRunOncePrintsOneFrame(t *testing.T) {
	n := benchtest.Start(t, "top-node", model())
	var out bytes.Buffer
	require.NoError(t, top.Run(context.Background(), top.Config{URL: n.URL, Token: benchtest.AdminToken, Interval: 100 * time.Millisecond}, &out, true))
	text := out.String()
	require.NotContains(t, text, "\x1b[", "a one-shot frame carries no terminal codes")
	require.Equal(t, 1, strings.Count(text, "MEMBER"))
	require.Contains(t, text, "top-node")
	require.Contains(t, text, "leader top-node")
}

func TestRunRedrawsUntilCancelled(t *testing.T) {
	n := benchtest.Start(t, "top-node", model())
	ctx, cancel := context.WithCancel(context.Background())
	w := &frameCounter{cancelAt: 3, cancel: cancel}
	require.NoError(t, top.Run(ctx, top.Config{URL: n.URL, Token: benchtest.AdminToken, Interval: 20 * time.Millisecond}, w, false))
	require.GreaterOrEqual(t, w.frames, 3)
}

func TestRunQuitsOnQ(t *testing.T) {
	n := benchtest.Start(t, "top-node", model())
	keys, press := io.Pipe()
	defer press.Close()
	w := &frameCounter{cancelAt: 1, cancel: func() { go press.Write([]byte("xq")) }}
	// An hour between frames: only q ends the run.
	require.NoError(t, top.Run(context.Background(), top.Config{URL: n.URL, Token: benchtest.AdminToken, Interval: time.Hour, Keys: keys}, w, false))
	require.Equal(t, 1, w.frames)
}

func TestRunIgnoresTheEndOfKeys(t *testing.T) {
	n := benchtest.Start(t, "top-node", model())
	ctx, cancel := context.WithCancel(context.Background())
	w := &frameCounter{cancelAt: 3, cancel: cancel}
	require.NoError(t, top.Run(ctx, top.Config{URL: n.URL, Token: benchtest.AdminToken, Interval: 20 * time.Millisecond, Keys: strings.NewReader("")}, w, false))
	require.GreaterOrEqual(t, w.frames, 3, "stdin at EOF (no terminal) does not quit")
}

// frameCounter counts screen clears and cancels after enough frames.
type frameCounter struct {
	frames   int
	cancelAt int
	cancel   context.CancelFunc
}

func (w *frameCounter) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte("\x1b[2J")) {
		w.frames++
		if w.frames >= w.cancelAt {
			w.cancel()
		}
	}
	return len(b), nil
}

func TestCollectWithoutAdminTokenFallsBackToNode(t *testing.T) {
	n := benchtest.Start(t, "top-node", model())
	c, err := top.New(top.Config{URL: n.URL, Token: "wrong"})
	require.NoError(t, err)
	f, err := c.Collect(context.Background())
	require.NoError(t, err)
	require.Len(t, f.Members, 1)
	require.Equal(t, "top-node", f.Members[0].Name)
	require.Len(t, f.Members[0].Models, 1, "models come from /v1/models")
	require.Equal(t, "sim-fast", f.Members[0].Models[0].Name)
	require.Len(t, f.Warnings, 1)
	require.Contains(t, f.Warnings[0], "refused the token")
}

func TestCollectFailsWhenNodeIsDown(t *testing.T) {
	c, err := top.New(top.Config{URL: "http://127.0.0.1:1"})
	require.NoError(t, err)
	_, err = c.Collect(context.Background())
	require.ErrorContains(t, err, "health")
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, err := top.New(top.Config{URL: "localhost:8080"})
	require.ErrorIs(t, err, top.ErrBadConfig)
	_, err = top.New(top.Config{URL: "http://x", Interval: time.Microsecond})
	require.ErrorIs(t, err, top.ErrBadConfig)
}

func TestRenderShowsOpenBreakersAndScrapeErrors(t *testing.T) {
	f := top.Frame{At: time.Now(), Via: "http://x", Leader: "a",
		Members: []top.MemberRow{
			{Name: "a", State: "alive", Role: "leader", Rated: true, TokensPerSec: 12.5, CacheKnown: true, CacheHitRatio: 0.5,
				Models: []top.ModelRow{{Name: "m1", QueueDepth: 7, ActiveBatches: 1, Slots: 2, TokensPerSec: 12.5}, {Name: "m2"}}},
			{Name: "b", State: "suspect", Err: "scrape http://b: connection refused"},
		},
		Breakers: []consensus.BreakerState{{Node: "b", Model: "m1", State: "open", Reason: "5 failures"}, {Node: "a", Model: "m1", State: "closed"}},
	}
	var out bytes.Buffer
	require.NoError(t, top.Render(&out, f))
	text := out.String()
	require.Contains(t, text, "breakers: b/m1 open (5 failures)")
	require.Contains(t, text, "! b: scrape http://b: connection refused")
	require.Contains(t, text, "50.0%")
	require.Contains(t, text, "m2")
	lines := strings.Split(text, "\n")
	var m1 string
	for _, l := range lines {
		if strings.Contains(l, "m1") && strings.Contains(l, "leader") {
			m1 = l
		}
	}
	require.Regexp(t, `m1\s+7\s+1\s+2\s+12\.5`, m1)
}
