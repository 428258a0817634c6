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
