package router

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNewRejectsUnknownPolicy(t *testing.T) {
	_, err := New(Config{Policy: "fastest"})
	require.ErrorContains(t, err, "router.policy")
}

func TestFilterDropsOpenExcludedAndStale(t *testing.T) {
	r, err := New(Config{StaleAfter: time.Second})
	require.NoError(t, err)
	cands := []Candidate{
		{Node: "local", Local: true, LoadAge: time.Hour}, // local load is never stale
		{Node: "open", Open: true},
		{Node: "tried"},
		{Node: "stale", LoadAge: 2 * time.Second},
		{Node: "ok", LoadAge: 100 * time.Millisecond},
	}
	got := r.Filter(cands, map[string]bool{"tried": true})
	names := []string{}
	for _, c := range got {
		names = append(names, c.Node)
	}
	require.Equal(t, []string{"local", "ok"}, names)
}

// Filter hands back its input when it drops nothing, clipped so a caller's
// append cannot write into the caller's candidates.
func TestFilterKeepsAllWithoutCopyButClipped(t *testing.T) {
	r, err := New(Config{StaleAfter: time.Second})
	require.NoError(t, err)
	cands := make([]Candidate, 2, 3)
	cands[0], cands[1] = Candidate{Node: "a", Local: true}, Candidate{Node: "b"}
	got := r.Filter(cands, nil)
	require.Equal(t, cands, got)
	require.Equal(t, 2, cap(got))
	got = append(got, Candidate{Node: "c"})
	got[0].Node = "changed"
	require.Equal(t, "a", cands[0].Node)
	require.Equal(t, "", cands[:3][2].Node)
}

func TestPickWithNoCandidate(t *testing.T) {
	r, _ := New(Config{})
	_, _, err := r.Pick([]Candidate{{Node: "a", Open: true}}, nil)
	require.ErrorIs(t, err, ErrNoCandidate)
}

func TestLeastQueuedPrefersLessWorkPerSlot(t *testing.T) {
	for _, tt := range []struct {
		name  string
		cands []Candidate
		want  string
	}{
		{"queue depth", []Candidate{{Node: "a", QueueDepth: 10, Slots: 1}, {Node: "b", QueueDepth: 1, Slots: 1}}, "b"},
		{"running counts", []Candidate{{Node: "a", Running: 8, Slots: 1}, {Node: "b", QueueDepth: 2, Slots: 1}}, "b"},
		{"per slot", []Candidate{{Node: "a", QueueDepth: 8, Slots: 8}, {Node: "b", QueueDepth: 4, Slots: 1}}, "a"},
		{"local wins a tie", []Candidate{{Node: "a", QueueDepth: 2, Slots: 1}, {Node: "self", Local: true, QueueDepth: 2, Slots: 1}}, "self"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// With two candidates power of two choices always compares both.
			for seed := uint64(1); seed <= 20; seed++ {
				r, _ := New(Config{Policy: PolicyLeastQueued, Seed: seed})
				got, reason, err := r.Pick(tt.cands, nil)
				require.NoError(t, err)
				require.Equal(t, tt.want, got.Node)
				require.Equal(t, PolicyLeastQueued, reason)
			}
		})
	}
}

// A router that sends to the idle-looking node counts its own sends until
// the target reports again, so it does not herd every request there.
func TestLeastQueuedCountsOwnSendsSinceReport(t *testing.T) {
	for _, policy := range []string{PolicyLeastQueued, PolicyLeastExpected} {
		t.Run(policy, func(t *testing.T) { testCountsOwnSends(t, policy) })
	}
}

func testCountsOwnSends(t *testing.T, policy string) {
	r, _ := New(Config{Policy: policy, Seed: 7})
	report := time.Now()
	cands := []Candidate{{Node: "a", Slots: 1, LoadAt: report}, {Node: "b", Slots: 1, LoadAt: report}}
	counts := map[string]int{}
	for i := 0; i < 100; i++ {
		c, _, err := r.Pick(cands, nil)
		require.NoError(t, err)
		counts[c.Node]++
	}
	require.InDelta(t, 50, counts["a"], 2, "sends should alternate: %v", counts)
	// A newer report includes the earlier sends.
	fresh := time.Now()
	require.Zero(t, r.sentSince("a", fresh))
}

func TestRoundRobinCycles(t *testing.T) {
	r, _ := New(Config{Policy: PolicyRoundRobin})
	cands := []Candidate{{Node: "a"}, {Node: "b"}, {Node: "c"}}
	var got []string
	for i := 0; i < 6; i++ {
		c, reason, err := r.Pick(cands, nil)
		require.NoError(t, err)
		require.Equal(t, PolicyRoundRobin, reason)
		got = append(got, c.Node)
	}
	require.Equal(t, []string{"a", "b", "c", "a", "b", "c"}, got)
}

func TestRandomSpreads(t *testing.T) {
	r, _ := New(Config{Policy: PolicyRandom, Seed: 3})
	cands := []Candidate{{Node: "a"}, {Node: "b"}}
	counts := map[string]int{}
	for i := 0; i < 1000; i++ {
		c, _, _ := r.Pick(cands, nil)
		counts[c.Node]++
	}
	require.InDelta(t, 500, counts["a"], 80)
}

func BenchmarkPickLeastQueued(b *testing.B) {
	r, _ := New(Config{Policy: PolicyLeastQueued, Seed: 1})
	now := time.Now()
	cands := make([]Candidate, 5)
	for i := range cands {
		cands[i] = Candidate{Node: string(rune('a' + i)), QueueDepth: i, Slots: 2, LoadAt: now}
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, _, _ = r.Pick(cands, nil)
	}
}

func BenchmarkPickLeastExpectedWithPrefix(b *testing.B) {
	r, _ := New(Config{Seed: 1})
	now := time.Now()
	x := NewPrefixIndex(0)
	prompt := strings.Repeat("system prompt words ", 100)
	x.Record("m", PrefixHashes(prompt, 0))
	cands := make([]Candidate, 5)
	for i := range cands {
		cands[i] = Candidate{Node: string(rune('a' + i)), QueueDepth: i, Slots: 2, MaxBatch: 8, ServiceBase: 20 * time.Millisecond, LoadAt: now}
	}
	cands[3].Prefix = x.Summary("m")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, _, _ = r.Route(Request{Prefix: PrefixHashes(prompt, 0)}, cands, nil)
	}
}
