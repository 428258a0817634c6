package router

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestExpectedCompletion(t *testing.T) {
	ms := time.Millisecond
	r, _ := New(Config{})
	fast := Candidate{Node: "f", Slots: 1, MaxBatch: 8, ServiceBase: 20 * ms, ServicePerItem: 2 * ms}
	for _, tt := range []struct {
		name                string
		queue, run, batches int
		slots               int
		want                time.Duration
	}{
		{"idle: one batch of one", 0, 0, 0, 1, 22 * ms},
		{"queued work joins its batch", 3, 0, 0, 1, 28 * ms},
		{"waits for the running batch, half done", 0, 8, 1, 1, 18*ms + 22*ms},
		{"a free slot starts at once", 0, 8, 1, 2, 22 * ms},
		{"two full rounds queued", 16, 8, 1, 1, 18*ms + 2*36*ms + 22*ms},
		{"continuous: running sequences share the round", 0, 5, 0, 1, 32 * ms},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := fast
			c.QueueDepth, c.Running, c.ActiveBatches, c.Slots = tt.queue, tt.run, tt.batches, tt.slots
			require.InDelta(t, float64(tt.want), r.expected(c, cost{}), float64(ms)/2) // plus the tie-break
		})
	}
}

// The case least-queued gets wrong: a 4x slower node with a shorter queue
// is still the worse choice.
func TestLeastExpectedWeighsSpeed(t *testing.T) {
	ms := time.Millisecond
	fast := Candidate{Node: "fast", Slots: 1, MaxBatch: 8, ServiceBase: 20 * ms, ServicePerItem: 2 * ms, Running: 8, ActiveBatches: 1, QueueDepth: 2}
	slow := Candidate{Node: "slow", Slots: 1, MaxBatch: 8, ServiceBase: 80 * ms, ServicePerItem: 8 * ms, Running: 1, ActiveBatches: 1}
	for seed := uint64(1); seed <= 10; seed++ {
		r, _ := New(Config{Seed: seed})
		got, reason, err := r.Pick([]Candidate{fast, slow}, nil)
		require.NoError(t, err)
		require.Equal(t, "fast", got.Node)
		require.Equal(t, PolicyLeastExpected, reason)
	}
	// Once the fast node's backlog outweighs the speed difference, the slow
	// node takes work.
	fast.QueueDepth = 24
	r, _ := New(Config{})
	got, _, _ := r.Pick([]Candidate{fast, slow}, nil)
	require.Equal(t, "slow", got.Node)
}

func TestLeastExpectedLocalAndUnmeasured(t *testing.T) {
	ms := time.Millisecond
	r, _ := New(Config{})
	// The local node wins a tie.
	got, reason, _ := r.Pick([]Candidate{{Node: "a", Slots: 1, MaxBatch: 4, ServiceBase: 10 * ms}, {Node: "self", Local: true, Slots: 1, MaxBatch: 4, ServiceBase: 10 * ms}}, nil)
	require.Equal(t, "self", got.Node)
	require.Equal(t, ReasonLocal, reason)
	// An unmeasured node is assumed as fast as the mean of the measured.
	got, _, _ = r.Pick([]Candidate{{Node: "new", Slots: 1, MaxBatch: 4}, {Node: "busy", Slots: 1, MaxBatch: 4, Running: 4, ServiceBase: 10 * ms}}, nil)
	require.Equal(t, "new", got.Node)
}

func TestPrefixHashesChain(t *testing.T) {
	a := PrefixHashes(strings.Repeat("a", 200)+"x", 64)
	b := PrefixHashes(strings.Repeat("a", 200)+"y", 64)
	require.Len(t, a, 3)
	require.Equal(t, a, b, "only full blocks are hashed")
	c := PrefixHashes("b"+strings.Repeat("a", 199), 64)
	require.NotEqual(t, a[2], c[2], "a block's hash covers everything before it")
	require.Equal(t, c[1:], PrefixHashes("b"+strings.Repeat("a", 199), 64)[1:])
	require.Nil(t, PrefixHashes("short", 64))
	require.Len(t, PrefixHashes(strings.Repeat("z", 1<<20), 64), MaxPrefixBlocks)
}

func TestPrefixIndexSummaryAndEviction(t *testing.T) {
	x := NewPrefixIndex(64)
	sys := PrefixHashes(strings.Repeat("you are a helpful assistant. ", 40), 64)
	x.Record("m", sys)
	s := x.Summary("m")
	require.InDelta(t, 1, s.Hit(sys), 0)
	require.Zero(t, x.Summary("other").Hit(sys))
	other := PrefixHashes(strings.Repeat("something else entirely here. ", 40), 64)
	require.Less(t, s.Hit(other), 0.1)
	// A later prompt evicts the oldest blocks, never more than capacity.
	for i := range 10 {
		x.Record("m", PrefixHashes(fmt.Sprintf("%03d", i)+strings.Repeat("filler text ", 60), 64))
	}
	require.False(t, x.Has("m", sys[0]))
	require.Less(t, x.Summary("m").Hit(sys), 0.2)
	x.mu.Lock()
	require.LessOrEqual(t, x.models["m"].lru.Len(), 64)
	x.mu.Unlock()
}

// The local node scores its prefix hits on its exact index: no false positives, and what it
// records shows at once (its view is live, there is no summary to rebuild).
func TestPrefixIndexExactView(t *testing.T) {
	x := NewPrefixIndex(0)
	require.Nil(t, x.Exact("m"))
	hs := PrefixHashes(strings.Repeat("an exact system prompt. ", 40), 0)
	x.Record("m", hs[:3])
	e := x.Exact("m")
	require.NotNil(t, e)
	require.InDelta(t, 3/float64(len(hs)), e.Hit(hs), 1e-9)
	x.Record("m", hs)
	require.InDelta(t, 1, e.Hit(hs), 0)
	require.Zero(t, e.Hit(nil))
	// A hash the Bloom filter holds by accident is no hit here: fill the index, then find one.
	for i := range DefaultPrefixIndexBlocks - len(hs) {
		x.Record("m", []uint64{uint64(i)<<32 | 0xfeed})
	}
	s := x.Summary("m")
	fp := uint64(0)
	for h := uint64(1); fp == 0; h++ {
		if s.Has(h) && !x.Has("m", h) {
			fp = h
		}
	}
	require.Zero(t, e.Hit([]uint64{fp}))
	require.InDelta(t, 1, s.Hit([]uint64{fp}), 0)

	// The router prefers the local holder it knows exactly.
	r, _ := New(Config{Seed: 1})
	ms := time.Millisecond
	cands := []Candidate{
		{Node: "a", Slots: 1, MaxBatch: 4, ServiceBase: 40 * ms, ServicePerItem: 5 * ms, Running: 2},
		{Node: "self", Local: true, Slots: 1, MaxBatch: 4, ServiceBase: 40 * ms, ServicePerItem: 5 * ms, Running: 3, LocalPrefix: e},
	}
	got, reason, err := r.Route(Request{Prefix: hs}, cands, nil)
	require.NoError(t, err)
	require.Equal(t, "self", got.Node)
	require.Equal(t, ReasonPrefix, reason)
}

// BenchmarkLocalPrefixScore is a node's prefix work per request under a stream of unique
// prompts: record the prompt's blocks, then score the local candidate, through the rebuilt
// summary (before) or the exact view.
func BenchmarkLocalPrefixScore(b *testing.B) {
	prompts := make([][]uint64, 256)
	for i := range prompts {
		prompts[i] = PrefixHashes(fmt.Sprintf("%06d unique prompt ", i)+strings.Repeat("filler text ", 30), 0)
	}
	for _, mode := range []string{"summary", "exact"} {
		b.Run(mode, func(b *testing.B) {
			x := NewPrefixIndex(0)
			for _, p := range prompts {
				x.Record("m", p)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p := prompts[i%len(prompts)]
				i++
				if mode == "summary" {
					_ = x.Summary("m").Hit(p)
				} else {
					_ = x.Exact("m").Hit(p)
				}
				// A fresh prompt's blocks: the last one changes every time.
				p[len(p)-1]++
				x.Record("m", p)
			}
		})
	}
}

// A prefix hit wins while the holder is not much busier, and spills to
// others once it is: hot prefixes never pile onto one node.
func TestPrefixWeighedAgainstLoad(t *testing.T) {
	ms := time.Millisecond
	x := NewPrefixIndex(0)
	prompt := strings.Repeat("the same long system prompt. ", 40) + "question"
	hs := PrefixHashes(prompt, 0)
	x.Record("m", hs)
	mk := func(name string, running int, prefix PrefixSummary) Candidate {
		return Candidate{Node: name, Slots: 1, MaxBatch: 4, ServiceBase: 40 * ms, ServicePerItem: 5 * ms, Running: running, Prefix: prefix}
	}
	for seed := uint64(1); seed <= 20; seed++ {
		r, _ := New(Config{Seed: seed})
		cands := []Candidate{mk("a", 2, ""), mk("holder", 3, x.Summary("m")), mk("c", 2, "")}
		got, reason, err := r.Route(Request{Prefix: hs}, cands, nil)
		require.NoError(t, err)
		require.Equal(t, "holder", got.Node, "seed %d", seed)
		require.Equal(t, ReasonPrefix, reason)

		cands[1].Running, cands[1].QueueDepth = 4, 8 // three rounds behind
		got, reason, _ = r.Route(Request{Prefix: hs}, cands, nil)
		require.NotEqual(t, "holder", got.Node)
		require.Equal(t, PolicyLeastExpected, reason)
	}
	off := 0.0
	r, _ := New(Config{PrefixWeight: &off})
	got, _, _ := r.Route(Request{Prefix: hs}, []Candidate{mk("a", 2, ""), mk("holder", 3, x.Summary("m"))}, nil)
	require.Equal(t, "a", got.Node)
}
