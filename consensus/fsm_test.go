package consensus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// applyAll applies cmds at consecutive indexes and returns the responses.
func applyAll(t testing.TB, f *fsm, cmds ...Command) []any {
	t.Helper()
	var out []any
	for _, c := range cmds {
		idx := f.current().Index + 1
		out = append(out, f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: mustEncode(t, c)}))
	}
	return out
}

// Keeping keys is decided at apply time, so a key whose tenant the new
// policy drops fails the command there, and the state is unchanged.
func TestSetLimitPolicyKeepingKeysRejectsADroppedTenant(t *testing.T) {
	key := HashKey("sk-0123456789abcdefghij")
	f := newFSM(discardLogger(), func() {})
	applyAll(t, f, PutTenant{Name: "acme"}, PutKey{Hash: key, Limit: KeyLimit{Tenant: "acme"}})
	before := f.current().Limits
	out := applyAll(t, f, SetLimitPolicy{Policy: LimitPolicy{DefaultRPM: 1}, KeepKeys: true})
	err, _ := out[0].(error)
	var ve *ValidationError
	require.ErrorAs(t, err, &ve)
	require.Contains(t, err.Error(), `keys["`+key+`"].tenant`)
	require.Equal(t, before, f.current().Limits)
}

func TestFSMAppliesEveryCommand(t *testing.T) {
	key := HashKey("sk-0123456789abcdefghij")
	tests := []struct {
		name  string
		setup []Command
		cmd   Command
		check func(t *testing.T, st *State)
	}{
		{
			name: "set batching",
			cmd:  SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 16, FlushTimeout: time.Millisecond}},
			check: func(t *testing.T, st *State) {
				require.Equal(t, map[string]BatchingSettings{"m": {MaxSize: 16, FlushTimeout: time.Millisecond}}, st.Batching)
			},
		},
		{
			name:  "delete batching",
			setup: []Command{SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 16}}, SetBatching{Model: "k", Settings: BatchingSettings{MaxSize: 2}}},
			cmd:   DeleteBatching{Model: "m"},
			check: func(t *testing.T, st *State) {
				require.Equal(t, map[string]BatchingSettings{"k": {MaxSize: 2}}, st.Batching)
			},
		},
		{
			name:  "set limit policy replaces the whole policy",
			setup: []Command{SetEndpointLimit{Path: "/old", Limit: EndpointLimit{RPM: 1}}},
			cmd:   SetLimitPolicy{Policy: LimitPolicy{DefaultRPM: 60, AuthRequired: true}},
			check: func(t *testing.T, st *State) {
				require.Equal(t, &LimitPolicy{DefaultRPM: 60, AuthRequired: true, Endpoints: map[string]EndpointLimit{}, Keys: map[string]KeyLimit{}, Tenants: map[string]TenantLimit{}}, st.Limits)
			},
		},
		{
			name:  "set limit policy keeping keys keeps the applied keys",
			setup: []Command{PutTenant{Name: "acme"}, PutKey{Hash: key, Limit: KeyLimit{TPM: 5, Tenant: "acme"}}},
			cmd:   SetLimitPolicy{Policy: LimitPolicy{DefaultRPM: 7, Tenants: map[string]TenantLimit{"acme": {RPM: 3}}}, KeepKeys: true},
			check: func(t *testing.T, st *State) {
				require.Equal(t, map[string]KeyLimit{key: {TPM: 5, Tenant: "acme"}}, st.Limits.Keys)
				require.Equal(t, 7, st.Limits.DefaultRPM)
			},
		},
		{
			name:  "set limit policy if unset leaves an existing policy",
			setup: []Command{PutKey{Hash: key, Limit: KeyLimit{RPM: 1}}},
			cmd:   SetLimitPolicy{Policy: LimitPolicy{DefaultRPM: 60}, IfUnset: true},
			check: func(t *testing.T, st *State) {
				require.Equal(t, 0, st.Limits.DefaultRPM)
				require.Len(t, st.Limits.Keys, 1)
			},
		},
		{
			name: "set limit policy if unset seeds an empty state",
			cmd:  SetLimitPolicy{Policy: LimitPolicy{DefaultRPM: 60}, IfUnset: true},
			check: func(t *testing.T, st *State) {
				require.Equal(t, 60, st.Limits.DefaultRPM)
				require.NotNil(t, st.Limits.Keys)
			},
		},
		{
			name: "set endpoint limit creates a policy",
			cmd:  SetEndpointLimit{Path: "/v1/infer", Limit: EndpointLimit{RPM: 500, RPH: 50000}},
			check: func(t *testing.T, st *State) {
				require.Equal(t, map[string]EndpointLimit{"/v1/infer": {RPM: 500, RPH: 50000}}, st.Limits.Endpoints)
				require.Equal(t, 0, st.Limits.DefaultRPM)
			},
		},
		{
			name:  "delete endpoint limit keeps the rest",
			setup: []Command{SetLimitPolicy{Policy: LimitPolicy{DefaultRPM: 9, Endpoints: map[string]EndpointLimit{"/a": {RPM: 1}, "/b": {RPM: 2}}}}},
			cmd:   DeleteEndpointLimit{Path: "/a"},
			check: func(t *testing.T, st *State) {
				require.Equal(t, map[string]EndpointLimit{"/b": {RPM: 2}}, st.Limits.Endpoints)
				require.Equal(t, 9, st.Limits.DefaultRPM)
			},
		},
		{
			name:  "put key with tenant",
			setup: []Command{PutTenant{Name: "acme", Limit: TenantLimit{RPM: 100}}},
			cmd:   PutKey{Hash: key, Limit: KeyLimit{Prefix: "sk-0", RPM: 10, TPM: 1000, Tenant: "acme"}},
			check: func(t *testing.T, st *State) {
				require.Equal(t, KeyLimit{Prefix: "sk-0", RPM: 10, TPM: 1000, Tenant: "acme"}, st.Limits.Keys[key])
			},
		},
		{
			name:  "delete key",
			setup: []Command{PutKey{Hash: key, Limit: KeyLimit{RPM: 1}}},
			cmd:   DeleteKey{Hash: key},
			check: func(t *testing.T, st *State) { require.Empty(t, st.Limits.Keys) },
		},
		{
			name: "put tenant",
			cmd:  PutTenant{Name: "acme", Limit: TenantLimit{RPM: 1, TPM: 2}},
			check: func(t *testing.T, st *State) {
				require.Equal(t, map[string]TenantLimit{"acme": {RPM: 1, TPM: 2}}, st.Limits.Tenants)
			},
		},
		{
			name:  "delete unused tenant",
			setup: []Command{PutTenant{Name: "acme"}},
			cmd:   DeleteTenant{Name: "acme"},
			check: func(t *testing.T, st *State) { require.Empty(t, st.Limits.Tenants) },
		},
		{
			name: "breaker opens",
			cmd: BreakerTransition{Node: "n1", Model: "org/m", From: BreakerClosed, To: BreakerOpen,
				At: t0.In(time.FixedZone("x", 3600)), OpenUntil: t0.Add(30 * time.Second), Trips: 1, Reason: "failures"},
			check: func(t *testing.T, st *State) {
				require.Equal(t, BreakerState{Node: "n1", Model: "org/m", State: BreakerOpen, Since: t0, OpenUntil: t0.Add(30 * time.Second), Trips: 1, Reason: "failures"},
					st.Breakers["n1/org/m"])
				require.Equal(t, st.Breakers["n1/org/m"], st.Breaker("n1", "org/m"))
			},
		},
		{
			name: "delete breakers of a node",
			setup: []Command{
				BreakerTransition{Node: "n1", Model: "a", From: BreakerClosed, To: BreakerOpen, At: t0, OpenUntil: t0.Add(time.Second)},
				BreakerTransition{Node: "n1", Model: "b", From: BreakerClosed, To: BreakerOpen, At: t0, OpenUntil: t0.Add(time.Second)},
				BreakerTransition{Node: "n2", Model: "a", From: BreakerClosed, To: BreakerOpen, At: t0, OpenUntil: t0.Add(time.Second)},
			},
			cmd: DeleteBreaker{Node: "n1"},
			check: func(t *testing.T, st *State) {
				require.Len(t, st.Breakers, 1)
				require.Contains(t, st.Breakers, "n2/a")
			},
		},
		{
			name: "delete one breaker",
			setup: []Command{
				BreakerTransition{Node: "n1", Model: "a", From: BreakerClosed, To: BreakerOpen, At: t0, OpenUntil: t0.Add(time.Second)},
				BreakerTransition{Node: "n1", Model: "b", From: BreakerClosed, To: BreakerOpen, At: t0, OpenUntil: t0.Add(time.Second)},
			},
			cmd: DeleteBreaker{Node: "n1", Model: "a"},
			check: func(t *testing.T, st *State) {
				require.Len(t, st.Breakers, 1)
				require.Contains(t, st.Breakers, "n1/b")
			},
		},
		{
			name: "set cache settings",
			cmd:  SetCacheSettings{Settings: CacheSettings{Enabled: true, DefaultTTL: time.Minute}},
			check: func(t *testing.T, st *State) {
				require.Equal(t, &CacheSettings{Enabled: true, DefaultTTL: time.Minute}, st.Cache)
			},
		},
		{
			name:  "purge cache moves the generation on",
			setup: []Command{PurgeCache{}},
			cmd:   PurgeCache{Model: "m"},
			check: func(t *testing.T, st *State) {
				require.Equal(t, uint64(2), st.CacheGeneration)
				// A purge of all moves every model's epoch, a purge of one only its own.
				require.Equal(t, uint64(2), st.CacheEpoch("m"))
				require.Equal(t, uint64(1), st.CacheEpoch("other"))
				require.Equal(t, uint64(1), st.CacheEpoch(""))
			},
		},
		{
			name: "cache epochs are bounded: past the bound a purge moves every model's epoch",
			setup: func() []Command {
				var cmds []Command
				for i := range MaxCacheEpochs {
					cmds = append(cmds, PurgeCache{Model: fmt.Sprintf("m%d", i)})
				}
				return cmds
			}(),
			cmd: PurgeCache{Model: "one-more"},
			check: func(t *testing.T, st *State) {
				require.Equal(t, MaxCacheEpochs+1, len(st.CacheEpochs), "the model names and the count of purges of all")
				require.Equal(t, uint64(1), st.CacheEpoch("one-more"), "purged (with every model)")
				require.Equal(t, uint64(2), st.CacheEpoch("m7"))
				require.Equal(t, uint64(MaxCacheEpochs+1), st.CacheGeneration)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFSM(discardLogger(), func() {})
			for _, r := range applyAll(t, f, tt.setup...) {
				require.Nil(t, r)
			}
			resp := applyAll(t, f, tt.cmd)
			require.Nil(t, resp[0])
			require.Equal(t, uint64(len(tt.setup)+1), f.current().Index)
			tt.check(t, f.current())
		})
	}
}

func TestFSMDomainErrors(t *testing.T) {
	key := HashKey("sk-0123456789abcdefghij")
	tests := []struct {
		name  string
		setup []Command
		cmd   Command
		want  error
	}{
		{"key of unknown tenant", nil, PutKey{Hash: key, Limit: KeyLimit{Tenant: "ghost"}}, ErrUnknownTenant},
		{"tenant in use", []Command{PutTenant{Name: "acme"}, PutKey{Hash: key, Limit: KeyLimit{Tenant: "acme"}}}, DeleteTenant{Name: "acme"}, ErrTenantInUse},
		{"breaker from mismatch", nil, BreakerTransition{Node: "n", Model: "m", From: BreakerOpen, To: BreakerHalfOpen, At: t0}, ErrBreakerConflict},
		{"invalid command reaching the log", nil, SetBatching{Model: "m"}, ErrInvalidCommand},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFSM(discardLogger(), func() {})
			applyAll(t, f, tt.setup...)
			before := f.current()
			resp := applyAll(t, f, tt.cmd)[0]
			err, ok := resp.(error)
			require.True(t, ok, "response %v is not an error", resp)
			require.ErrorIs(t, err, tt.want)
			after := f.current()
			require.Equal(t, before.Index+1, after.Index, "a failed command still advances the index")
			after2 := *after
			after2.Index = before.Index
			require.Equal(t, before, &after2, "a failed command changes nothing else")
		})
	}
}

func TestFSMBreakerRaceYieldsOneTransition(t *testing.T) {
	f := newFSM(discardLogger(), func() {})
	open := func(node string, at time.Time) BreakerTransition {
		return BreakerTransition{Node: "n1", Model: "m", From: BreakerClosed, To: BreakerOpen, At: at, OpenUntil: at.Add(30 * time.Second), Trips: 1, Reason: "seen by " + node}
	}
	// Two routers saw the same failures and both propose closed->open.
	resp := applyAll(t, f, open("a", t0), open("b", t0.Add(time.Millisecond)))
	require.Nil(t, resp[0])
	var conflict *BreakerConflictError
	require.ErrorAs(t, resp[1].(error), &conflict)
	require.Equal(t, &BreakerConflictError{Key: "n1/m", Want: BreakerClosed, Have: BreakerOpen}, conflict)
	b := f.current().Breaker("n1", "m")
	require.Equal(t, "seen by a", b.Reason)
	require.Equal(t, t0, b.Since)

	// The full cycle, then a forced reset from any state.
	resp = applyAll(t, f,
		BreakerTransition{Node: "n1", Model: "m", From: BreakerOpen, To: BreakerHalfOpen, At: t0.Add(30 * time.Second), Trips: 1},
		BreakerTransition{Node: "n1", Model: "m", From: BreakerHalfOpen, To: BreakerOpen, At: t0.Add(31 * time.Second), OpenUntil: t0.Add(91 * time.Second), Trips: 2},
		BreakerTransition{Node: "n1", Model: "m", To: BreakerClosed, At: t0.Add(40 * time.Second), Force: true, Reason: "admin reset"},
	)
	require.Equal(t, []any{nil, nil, nil}, resp)
	require.Equal(t, BreakerState{Node: "n1", Model: "m", State: BreakerClosed, Since: t0.Add(40 * time.Second), Reason: "admin reset"}, f.current().Breaker("n1", "m"))
}

func TestStateBreakerDefaultsClosed(t *testing.T) {
	require.Equal(t, BreakerState{Node: "n", Model: "m", State: BreakerClosed}, newState().Breaker("n", "m"))
}

// randomCommand returns a command drawn from a small space, so that
// sequences contain updates, deletes, conflicts and invalid values.
func randomCommand(r *rand.Rand) Command {
	models := []string{"a", "b", "org/c"}
	nodes := []string{"n1", "n2"}
	tenants := []string{"acme", "globex"}
	keys := []string{HashKey("k1-0123456789"), HashKey("k2-0123456789")}
	states := []BreakerStatus{BreakerClosed, BreakerOpen, BreakerHalfOpen}
	at := t0.Add(time.Duration(r.IntN(1000)) * time.Second)
	switch r.IntN(13) {
	case 0:
		return SetBatching{Model: models[r.IntN(3)], Settings: BatchingSettings{MaxSize: r.IntN(5000), FlushTimeout: time.Duration(r.IntN(100)) * time.Millisecond}}
	case 1:
		return DeleteBatching{Model: models[r.IntN(3)]}
	case 2:
		return SetLimitPolicy{Policy: LimitPolicy{DefaultRPM: r.IntN(100), Endpoints: map[string]EndpointLimit{"/v1/infer": {RPM: r.IntN(10)}}}}
	case 3:
		return SetEndpointLimit{Path: "/v1/" + models[r.IntN(2)], Limit: EndpointLimit{RPM: r.IntN(10), RPH: r.IntN(100)}}
	case 4:
		return DeleteEndpointLimit{Path: "/v1/a"}
	case 5:
		return PutKey{Hash: keys[r.IntN(2)], Limit: KeyLimit{RPM: r.IntN(10), Tenant: []string{"", "acme", "globex"}[r.IntN(3)]}}
	case 6:
		return DeleteKey{Hash: keys[r.IntN(2)]}
	case 7:
		return PutTenant{Name: tenants[r.IntN(2)], Limit: TenantLimit{RPM: r.IntN(10)}}
	case 8:
		return DeleteTenant{Name: tenants[r.IntN(2)]}
	case 9:
		from, to := states[r.IntN(3)], states[r.IntN(3)]
		c := BreakerTransition{Node: nodes[r.IntN(2)], Model: models[r.IntN(3)], From: from, To: to, At: at, Trips: r.IntN(4), Force: r.IntN(10) == 0}
		if to == BreakerOpen {
			c.OpenUntil = at.Add(30 * time.Second)
		}
		return c
	case 10:
		return DeleteBreaker{Node: nodes[r.IntN(2)]}
	case 11:
		return PurgeCache{Model: models[r.IntN(3)]}
	default:
		return SetCacheSettings{Settings: CacheSettings{Enabled: r.IntN(2) == 0, DefaultTTL: time.Duration(r.IntN(10)) * time.Minute}}
	}
}

func TestFSMIsDeterministic(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 42))
		var log [][]byte
		for range 300 {
			log = append(log, mustEncode(t, randomCommand(r)))
		}
		a := newFSM(discardLogger(), func() {})
		b := newFSM(discardLogger(), func() {})
		for i, entry := range log {
			ra := a.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: entry})
			rb := b.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: bytes.Clone(entry)})
			require.Equal(t, ra, rb, "seed %d entry %d", seed, i)
		}
		require.Equal(t, a.current(), b.current(), "seed %d", seed)
		ja, err := json.Marshal(a.current())
		require.NoError(t, err)
		jb, err := json.Marshal(b.current())
		require.NoError(t, err)
		require.Equal(t, string(ja), string(jb))
	}
}

func TestFSMNeverModifiesPublishedState(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	f := newFSM(discardLogger(), func() {})
	var published []*State
	var copies []*State
	for range 500 {
		published = append(published, f.current())
		copies = append(copies, f.current().Clone())
		applyAll(t, f, randomCommand(r))
	}
	for i := range published {
		require.Equal(t, copies[i], published[i], "state %d changed after publication", i)
	}
}

func TestFSMNotifiesOnChangeOnly(t *testing.T) {
	n := 0
	f := newFSM(discardLogger(), func() { n++ })
	applyAll(t, f, SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 1}})
	require.Equal(t, 1, n)
	applyAll(t, f, DeleteTenant{Name: "x"}, BreakerTransition{Node: "n", Model: "m", From: BreakerOpen, To: BreakerHalfOpen, At: t0})
	require.Equal(t, 2, n, "a successful no-op notifies, a failed command does not")
}

func TestFSMPanicsOnUndecodableEntry(t *testing.T) {
	f := newFSM(discardLogger(), func() {})
	require.Panics(t, func() {
		f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{byte(SetBatchingType), '{'}})
	})
	require.Panics(t, func() {
		f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{77, '{', '}'}})
	})
}

func TestFSMSkipsIgnorableUnknownType(t *testing.T) {
	f := newFSM(discardLogger(), func() {})
	resp := f.Apply(&raft.Log{Index: 5, Type: raft.LogCommand, Data: append([]byte{77 | byte(IgnoreUnknownTypeFlag)}, `{"v":1,"body":{}}`...)})
	require.Nil(t, resp)
	require.Equal(t, uint64(5), f.current().Index)
}

func TestFSMSnapshotRestoreRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	src := newFSM(discardLogger(), func() {})
	for range 200 {
		applyAll(t, src, randomCommand(r))
	}
	applyAll(t, src, SetCacheSettings{Settings: CacheSettings{Enabled: true, DefaultTTL: time.Hour}})

	store, err := raft.NewFileSnapshotStoreWithLogger(t.TempDir(), 1, newHCLogAdapter(discardLogger(), "snap"))
	require.NoError(t, err)
	snap, err := src.Snapshot()
	require.NoError(t, err)
	sink, err := store.Create(raft.SnapshotVersionMax, src.current().Index, 1, raft.Configuration{}, 1, nil)
	require.NoError(t, err)
	require.NoError(t, snap.Persist(sink))
	snap.Release()

	metas, err := store.List()
	require.NoError(t, err)
	require.Len(t, metas, 1)
	_, rc, err := store.Open(metas[0].ID)
	require.NoError(t, err)

	notified := false
	dst := newFSM(discardLogger(), func() { notified = true })
	applyAll(t, dst, SetBatching{Model: "stale", Settings: BatchingSettings{MaxSize: 1}})
	require.NoError(t, dst.Restore(rc))
	require.True(t, notified)
	require.Equal(t, src.current(), dst.current())
}

// failingSink is a raft.SnapshotSink whose writes fail, to check Persist
// cancels rather than closes.
type failingSink struct {
	canceled, closed bool
}

func (s *failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }
func (s *failingSink) Close() error              { s.closed = true; return nil }
func (s *failingSink) ID() string                { return "failing" }
func (s *failingSink) Cancel() error             { s.canceled = true; return nil }

func TestSnapshotPersistCancelsSinkOnError(t *testing.T) {
	f := newFSM(discardLogger(), func() {})
	applyAll(t, f, SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 3}})
	snap, err := f.Snapshot()
	require.NoError(t, err)
	sink := &failingSink{}
	require.ErrorContains(t, snap.Persist(sink), "disk full")
	require.True(t, sink.canceled)
	require.False(t, sink.closed)
}

func TestDecodeSnapshotRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":       ``,
		"not json":    `{`,
		"no version":  `{"state":{}}`,
		"newer":       `{"version":2,"state":{}}`,
		"no state":    `{"version":1}`,
		"wrong shape": `{"version":1,"state":{"batching":{"m":{"max_size":"x"}}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := decodeSnapshot(strings.NewReader(in))
			require.Error(t, err)
		})
	}
	_, err := decodeSnapshot(strings.NewReader(`{"version":7,"state":{}}`))
	require.ErrorIs(t, err, ErrUnsupportedVersion)
}

func TestFSMRestoreKeepsStateOnBadSnapshot(t *testing.T) {
	f := newFSM(discardLogger(), func() {})
	applyAll(t, f, SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 3}})
	before := f.current()
	require.Error(t, f.Restore(io.NopCloser(strings.NewReader(`{"version":9}`))))
	require.Same(t, before, f.current())
}

func TestStateJSONForAdminAPI(t *testing.T) {
	f := newFSM(discardLogger(), func() {})
	applyAll(t, f,
		SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 8, FlushTimeout: 10 * time.Millisecond}},
		SetCacheSettings{Settings: CacheSettings{Enabled: true, DefaultTTL: 5 * time.Minute}},
		BreakerTransition{Node: "n1", Model: "m", From: BreakerClosed, To: BreakerOpen, At: t0, OpenUntil: t0.Add(30 * time.Second), Trips: 1},
	)
	data, err := json.Marshal(f.current())
	require.NoError(t, err)
	require.JSONEq(t, `{
		"index": 3,
		"batching": {"m": {"max_size": 8, "flush_timeout": "10ms"}},
		"limits": null,
		"breakers": {"n1/m": {"node": "n1", "model": "m", "state": "open", "since": "2025-03-01T12:00:00Z",
			"open_until": "2025-03-01T12:00:30Z", "trips": 1}},
		"cache": {"enabled": true, "default_ttl": "5m0s", "lowercase": false}
	}`, string(data))
}

// FuzzDecodeSnapshot checks the snapshot decoder never panics and that what
// it accepts encodes again.
func FuzzDecodeSnapshot(f *testing.F) {
	src := newFSM(discardLogger(), func() {})
	for _, c := range sampleCommands() {
		applyAll(f, src, c)
	}
	data, err := json.Marshal(snapshotFile{Version: 1, State: src.current()})
	require.NoError(f, err)
	f.Add(data)
	f.Add([]byte(`{"version":1,"state":{}}`))
	f.Add([]byte(`{"version":1,"state":{"limits":{"keys":null}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decodeSnapshot(bytes.NewReader(data))
		if err != nil {
			return
		}
		require.NotNil(t, st.Batching)
		require.NotNil(t, st.Breakers)
		require.Equal(t, st, st.Clone())
		_, err = json.Marshal(snapshotFile{Version: snapshotVersion, State: st})
		require.NoError(t, err)
	})
}
