package respcache

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/scheduler"
	"github.com/stretchr/testify/require"
)

func seed(v int64) *int64 { return &v }

func base() KeyInput {
	return KeyInput{Model: "m", Endpoint: scheduler.EndpointChat,
		Messages: []scheduler.Message{{Role: "user", Content: "Hello  there"}},
		Params:   scheduler.Params{MaxTokens: 16, Temperature: 0}}
}

func mustKey(t *testing.T, in KeyInput, lower bool) string {
	t.Helper()
	k, ok := Key(in, lower)
	require.True(t, ok)
	return k
}

func TestSampledRequestsHaveNoKey(t *testing.T) {
	in := base()
	in.Params.Temperature = 0.7
	_, ok := Key(in, false)
	require.False(t, ok)
	in.Params.Seed = seed(3)
	_, ok = Key(in, false)
	require.True(t, ok, "a fixed seed makes a sampled request deterministic")
}

func TestWhitespaceDoesNotChangeTheKey(t *testing.T) {
	a := base()
	b := base()
	b.Messages = []scheduler.Message{{Role: "user", Content: "  Hello\n there "}}
	require.Equal(t, mustKey(t, a, false), mustKey(t, b, false))
}

func TestCaseChangesTheKeyUnlessLowercasing(t *testing.T) {
	a := base()
	b := base()
	b.Messages = []scheduler.Message{{Role: "user", Content: "hello there"}}
	require.NotEqual(t, mustKey(t, a, false), mustKey(t, b, false))
	require.Equal(t, mustKey(t, a, true), mustKey(t, b, true))
}

func TestEveryOutputChangingFieldChangesTheKey(t *testing.T) {
	want := mustKey(t, base(), false)
	for name, change := range map[string]func(*KeyInput){
		"model":       func(in *KeyInput) { in.Model = "other" },
		"endpoint":    func(in *KeyInput) { in.Endpoint = scheduler.EndpointCompletion },
		"role":        func(in *KeyInput) { in.Messages[0].Role = "system" },
		"content":     func(in *KeyInput) { in.Messages[0].Content = "bye" },
		"extra msg":   func(in *KeyInput) { in.Messages = append(in.Messages, scheduler.Message{Role: "user"}) },
		"prompt":      func(in *KeyInput) { in.Prompts = []string{"x"} },
		"max_tokens":  func(in *KeyInput) { in.Params.MaxTokens = 17 },
		"top_p":       func(in *KeyInput) { in.Params.TopP = 0.5 },
		"seed":        func(in *KeyInput) { in.Params.Seed = seed(1) },
		"stop":        func(in *KeyInput) { in.Params.Stop = []string{"\n"} },
		"temperature": func(in *KeyInput) { in.Params.Temperature, in.Params.Seed = 0.5, seed(0) },
	} {
		in := base()
		in.Messages = append([]scheduler.Message(nil), in.Messages...)
		change(&in)
		require.NotEqual(t, want, mustKey(t, in, false), name)
	}
}

func TestFieldBoundariesAreUnambiguous(t *testing.T) {
	a := base()
	a.Prompts, a.Messages = []string{"ab", "c"}, nil
	b := base()
	b.Prompts, b.Messages = []string{"a", "bc"}, nil
	require.NotEqual(t, mustKey(t, a, false), mustKey(t, b, false))
}

func TestParsePolicy(t *testing.T) {
	for h, want := range map[string]Policy{
		"":                    {Lookup: true, Store: true},
		"no-cache":            {Lookup: false, Store: true},
		"No-Store":            {Lookup: false, Store: false},
		"max-age=0, no-cache": {Lookup: false, Store: true},
		"private":             {Lookup: true, Store: true},
	} {
		require.Equal(t, want, ParsePolicy(h), h)
	}
}

func TestSeedsAbove2To53HaveTheirOwnKeys(t *testing.T) {
	a, b := base(), base()
	a.Params.Seed, b.Params.Seed = seed(1<<53), seed(1<<53+1)
	require.NotEqual(t, mustKey(t, a, false), mustKey(t, b, false))
}

func TestScopeOf(t *testing.T) {
	for _, tc := range []struct {
		mode   string
		auth   bool
		hash   string
		tenant string
		want   string
	}{
		{"", false, "h1", "acme", ""},
		{"", true, "h1", "acme", "tenant:acme"},
		{"", true, "h1", "", "key:h1"},
		{ScopeCluster, true, "h1", "acme", ""},
		{ScopeTenant, false, "h1", "acme", "tenant:acme"},
		{ScopeTenant, false, "", "", "anonymous"},
		{ScopeKey, false, "h1", "acme", "key:h1"},
		{ScopeKey, true, "", "", "anonymous"},
	} {
		require.Equal(t, tc.want, ScopeOf(tc.mode, tc.auth, tc.hash, tc.tenant), "%+v", tc)
	}
}

func TestScopesNeverShareAKey(t *testing.T) {
	a, b := base(), base()
	a.Scope, b.Scope = "tenant:acme", "tenant:globex"
	require.NotEqual(t, mustKey(t, a, false), mustKey(t, b, false))
}

func TestEachEpochHasItsOwnKeys(t *testing.T) {
	in := base()
	k0 := mustKey(t, in, false)
	require.Len(t, k0, 64, "epoch 0 keys are the keys of nodes older than epochs")
	seen := map[string]bool{k0: true}
	for _, e := range []uint64{1, 2, 10, 1<<64 - 1} {
		in.Epoch = e
		k := mustKey(t, in, false)
		require.False(t, seen[k], "epoch %d reuses a key", e)
		require.Equal(t, k0, k[:64], "the epoch is appended to the same hash")
		seen[k] = true
	}
}

// The cache asks for the model's epoch on every key, so a purge (which
// moves the epoch on) puts answers stored before it out of reach even when
// the store still holds them.
func TestAnAnswerStoredUnderAnEarlierEpochIsOutOfReach(t *testing.T) {
	var epoch atomic.Uint64
	c, _ := newLocal(t, Config{Settings: func() (time.Duration, bool) { return time.Hour, false },
		Epoch: func(model string) uint64 {
			if model == "m" {
				return epoch.Load()
			}
			return 0
		}})
	ctx := context.Background()
	in := base()
	key, stamp, ok := c.Key(in)
	require.True(t, ok)
	require.Equal(t, c.KeyStamp("m"), stamp)
	c.Store("m", key, []scheduler.Result{{Text: "before"}})
	require.Eventually(t, func() bool { _, ok := c.Lookup(ctx, "m", key); return ok }, 5*time.Second, time.Millisecond)

	epoch.Store(1)
	again, stampAfter, ok := c.Key(in)
	require.True(t, ok)
	require.NotEqual(t, key, again)
	require.NotEqual(t, stamp, stampAfter, "a purge keeps the stamp of keys from before it")
	require.Equal(t, c.KeyStamp("m"), stampAfter)
	_, hit := c.Lookup(ctx, "m", again)
	require.False(t, hit, "the answer stored before the purge was found after it")
	other := base()
	other.Model = "n"
	k1, _, _ := c.Key(other)
	k2, _ := Key(other, false)
	require.Equal(t, k2, k1, "another model's keys do not move")
}
