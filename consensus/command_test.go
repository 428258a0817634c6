package consensus

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// sampleCommands holds one valid command of every type.
func sampleCommands() []Command {
	return []Command{
		SetBatching{Model: "llama", Settings: BatchingSettings{MaxSize: 32, FlushTimeout: 5 * time.Millisecond}},
		DeleteBatching{Model: "llama"},
		SetLimitPolicy{Policy: LimitPolicy{
			DefaultRPM: 60,
			Endpoints:  map[string]EndpointLimit{"/v1/infer": {RPM: 500, RPH: 50000}},
			Tenants:    map[string]TenantLimit{"acme": {RPM: 1000, TPM: 100000}},
			Keys:       map[string]KeyLimit{HashKey("sk-test-0123456789abcdef"): {Prefix: "sk-test-", RPM: 10, Tenant: "acme"}},
		}},
		SetEndpointLimit{Path: "/v1/chat/completions", Limit: EndpointLimit{RPM: 10}},
		DeleteEndpointLimit{Path: "/v1/chat/completions"},
		NewPutKey("sk-other-0123456789abcdef", KeyLimit{RPM: 5, TPM: 1000}),
		DeleteKey{Hash: HashKey("sk-other-0123456789abcdef")},
		PutTenant{Name: "globex", Limit: TenantLimit{RPM: 7}},
		DeleteTenant{Name: "globex"},
		BreakerTransition{Node: "n1", Model: "meta/llama", From: BreakerClosed, To: BreakerOpen, At: t0, OpenUntil: t0.Add(30 * time.Second), Trips: 1, Reason: "3 consecutive failures"},
		DeleteBreaker{Node: "n1"},
		SetCacheSettings{Settings: CacheSettings{Enabled: true, DefaultTTL: 5 * time.Minute, Lowercase: true, Scope: CacheScopeTenant}},
		PurgeCache{},
		PurgeCache{Model: "meta/llama"},
	}
}

func TestSampleCommandsCoverEveryType(t *testing.T) {
	seen := map[CommandType]bool{}
	for _, c := range sampleCommands() {
		seen[c.Type()] = true
	}
	for typ := SetBatchingType; typ <= PurgeCacheType; typ++ {
		if typ == OnceType || typ == SetClusterSecretType {
			continue // once_test.go covers them
		}
		require.True(t, seen[typ], "no sample command of type %d", typ)
	}
}

func TestCommandEncodeDecodeRoundTrip(t *testing.T) {
	for _, c := range sampleCommands() {
		require.NoError(t, c.Validate(), "%T", c)
		data, err := EncodeCommand(c)
		require.NoError(t, err)
		require.Equal(t, byte(c.Type()), data[0]&^byte(IgnoreUnknownTypeFlag))
		got, err := DecodeCommand(data)
		require.NoError(t, err, "%T", c)
		require.Equal(t, c, got)
	}
}

func TestCommandEncodingIsVersionedJSON(t *testing.T) {
	data, err := EncodeCommand(SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 8, FlushTimeout: 10 * time.Millisecond}})
	require.NoError(t, err)
	require.Equal(t, byte(SetBatchingType), data[0])
	require.JSONEq(t, `{"v":1,"body":{"model":"m","settings":{"max_size":8,"flush_timeout":"10ms"}}}`, string(data[1:]))
}

func TestDecodeCommandRejects(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, nil},
		{"reserved type zero", []byte{0, '{', '}'}, ErrUnknownCommand},
		{"unknown type", append([]byte{99}, `{"v":1,"body":{}}`...), ErrUnknownCommand},
		{"unknown ignorable type", append([]byte{99 | byte(IgnoreUnknownTypeFlag)}, `{"v":1,"body":{}}`...), ErrUnknownCommand},
		{"newer version", append([]byte{byte(SetBatchingType)}, `{"v":2,"body":{}}`...), ErrUnsupportedVersion},
		{"version zero", append([]byte{byte(SetBatchingType)}, `{"body":{}}`...), ErrUnsupportedVersion},
		{"missing body", append([]byte{byte(SetBatchingType)}, `{"v":1}`...), nil},
		{"not json", append([]byte{byte(SetBatchingType)}, `v1`...), nil},
		{"trailing garbage", append([]byte{byte(SetBatchingType)}, `{"v":1,"body":{}}x`...), nil},
		{"body of wrong shape", append([]byte{byte(SetBatchingType)}, `{"v":1,"body":{"settings":{"max_size":"big"}}}`...), nil},
		{"bad duration", append([]byte{byte(SetBatchingType)}, `{"v":1,"body":{"settings":{"flush_timeout":"soon"}}}`...), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeCommand(tt.data)
			require.Error(t, err)
			if tt.want != nil {
				require.ErrorIs(t, err, tt.want)
			}
		})
	}
}

func TestDecodeCommandAcceptsKnownTypeWithIgnoreFlag(t *testing.T) {
	data, err := EncodeCommand(DeleteBatching{Model: "m"})
	require.NoError(t, err)
	data[0] |= byte(IgnoreUnknownTypeFlag)
	got, err := DecodeCommand(data)
	require.NoError(t, err)
	require.Equal(t, DeleteBatching{Model: "m"}, got)
}

func TestDurationJSONAcceptsNanoseconds(t *testing.T) {
	var b BatchingSettings
	require.NoError(t, json.Unmarshal([]byte(`{"max_size":4,"flush_timeout":2000000}`), &b))
	require.Equal(t, BatchingSettings{MaxSize: 4, FlushTimeout: 2 * time.Millisecond}, b)
	var c CacheSettings
	require.NoError(t, json.Unmarshal([]byte(`{"enabled":true,"default_ttl":"1h"}`), &c))
	require.Equal(t, CacheSettings{Enabled: true, DefaultTTL: time.Hour}, c)
	require.Error(t, json.Unmarshal([]byte(`{"default_ttl":true}`), &c))
}

func TestCommandValidateNamesField(t *testing.T) {
	key := HashKey("sk-0123456789abcdef")
	okBreaker := BreakerTransition{Node: "n1", Model: "m", From: BreakerClosed, To: BreakerOpen, At: t0, OpenUntil: t0.Add(time.Second)}
	tests := []struct {
		name  string
		cmd   Command
		field string
	}{
		{"batching max_size zero", SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 0}}, "max_size must be between 1 and 4096"},
		{"batching max_size too big", SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 5000}}, "max_size"},
		{"batching negative flush", SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 1, FlushTimeout: -1}}, "flush_timeout"},
		{"batching long flush", SetBatching{Model: "m", Settings: BatchingSettings{MaxSize: 1, FlushTimeout: time.Hour}}, "flush_timeout"},
		{"batching no model", SetBatching{Settings: BatchingSettings{MaxSize: 1}}, "model must not be empty"},
		{"batching model with space", SetBatching{Model: "a b", Settings: BatchingSettings{MaxSize: 1}}, "model"},
		{"delete batching no model", DeleteBatching{}, "model"},
		{"policy negative default", SetLimitPolicy{Policy: LimitPolicy{DefaultRPM: -1}}, "default_rpm"},
		{"policy bad endpoint path", SetLimitPolicy{Policy: LimitPolicy{Endpoints: map[string]EndpointLimit{"v1": {}}}}, `endpoints["v1"].path must start with '/'`},
		{"policy endpoint rph", SetLimitPolicy{Policy: LimitPolicy{Endpoints: map[string]EndpointLimit{"/a": {RPH: -2}}}}, `endpoints["/a"].rph`},
		{"policy raw key", SetLimitPolicy{Policy: LimitPolicy{Keys: map[string]KeyLimit{"sk-raw": {}}}}, `keys["sk-raw"].key must be a 64-character`},
		{"policy key unknown tenant", SetLimitPolicy{Policy: LimitPolicy{Keys: map[string]KeyLimit{key: {Tenant: "x"}}}}, `keys["` + key + `"].tenant`},
		{"policy tenant tpm", SetLimitPolicy{Policy: LimitPolicy{Tenants: map[string]TenantLimit{"t": {TPM: MaxLimit + 1}}}}, `tenants["t"].tpm`},
		{"endpoint limit rpm", SetEndpointLimit{Path: "/a", Limit: EndpointLimit{RPM: -1}}, "rpm"},
		{"delete endpoint path", DeleteEndpointLimit{Path: ""}, "path"},
		{"put key uppercase hash", PutKey{Hash: strings.ToUpper(key)}, "key"},
		{"put key long prefix", PutKey{Hash: key, Limit: KeyLimit{Prefix: strings.Repeat("x", 17)}}, "prefix"},
		{"put key tpm", PutKey{Hash: key, Limit: KeyLimit{TPM: -1}}, "tpm"},
		{"delete key", DeleteKey{Hash: "zz"}, "key"},
		{"put tenant name", PutTenant{}, "name"},
		{"delete tenant name", DeleteTenant{}, "name"},
		{"breaker node slash", func() Command { c := okBreaker; c.Node = "a/b"; return c }(), "node must not contain '/'"},
		{"breaker no model", func() Command { c := okBreaker; c.Model = ""; return c }(), "model"},
		{"breaker bad to", func() Command { c := okBreaker; c.To = "ajar"; return c }(), "to must be"},
		{"breaker bad from", func() Command { c := okBreaker; c.From = ""; return c }(), "from"},
		{"breaker skips half-open", func() Command {
			c := okBreaker
			c.From, c.To, c.OpenUntil = BreakerOpen, BreakerClosed, time.Time{}
			return c
		}(), "to cannot follow open"},
		{"breaker no time", func() Command { c := okBreaker; c.At = time.Time{}; return c }(), "at must be set"},
		{"breaker open without until", func() Command { c := okBreaker; c.OpenUntil = t0; return c }(), "open_until must be after at"},
		{"breaker until when closing", BreakerTransition{Node: "n", Model: "m", From: BreakerHalfOpen, To: BreakerClosed, At: t0, OpenUntil: t0.Add(time.Second)}, "open_until must be empty"},
		{"breaker negative trips", func() Command { c := okBreaker; c.Trips = -1; return c }(), "trips"},
		{"breaker long reason", func() Command { c := okBreaker; c.Reason = strings.Repeat("r", 300); return c }(), "reason"},
		{"delete breaker node", DeleteBreaker{Node: "a/b"}, "node"},
		{"cache ttl", SetCacheSettings{Settings: CacheSettings{DefaultTTL: -time.Second}}, "default_ttl must be between 0s and 720h0m0s"},
		{"cache scope", SetCacheSettings{Settings: CacheSettings{Scope: "everyone"}}, `scope must be cluster, tenant or key, got "everyone"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cmd.Validate()
			require.ErrorIs(t, err, ErrInvalidCommand)
			var ve *ValidationError
			require.True(t, errors.As(err, &ve))
			require.Contains(t, err.Error(), tt.field)
		})
	}
}

func TestBreakerForceAllowsAnyEdge(t *testing.T) {
	c := BreakerTransition{Node: "n", Model: "m", To: BreakerClosed, At: t0, Force: true}
	require.NoError(t, c.Validate())
}

func TestHashKeyAndPrefix(t *testing.T) {
	h := HashKey("sk-abc")
	require.Len(t, h, 64)
	require.Equal(t, h, HashKey("sk-abc"))
	require.NotEqual(t, h, HashKey("sk-abd"))
	require.Equal(t, "sk-live-", KeyPrefix("sk-live-0123456789abcdefghijklmnop"))
	require.Equal(t, "s", KeyPrefix("sk-abc"), "short keys show at most a quarter")
	require.Equal(t, "", KeyPrefix("abc"))

	pk := NewPutKey("sk-live-0123456789abcdefghijklmnop", KeyLimit{RPM: 1})
	require.Equal(t, HashKey("sk-live-0123456789abcdefghijklmnop"), pk.Hash)
	require.Equal(t, "sk-live-", pk.Limit.Prefix)
	data, err := EncodeCommand(pk)
	require.NoError(t, err)
	require.NotContains(t, string(data), "0123456789abcdefghijkl", "raw key must never reach the log")
}

// FuzzDecodeCommand checks that no input makes the decoder panic, that what
// it accepts survives a re-encode, and that the FSM's apply of any decoded
// command never panics either.
func FuzzDecodeCommand(f *testing.F) {
	for _, c := range sampleCommands() {
		data, err := EncodeCommand(c)
		require.NoError(f, err)
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte{byte(SetBatchingType)})
	f.Add(append([]byte{byte(BreakerTransitionType)}, `{"v":1,"body":{"node":"n","model":"m","from":"closed","to":"open","at":"2025-01-01T00:00:00+02:00","open_until":"2025-01-01T00:00:01Z"}}`...))
	f.Add(append([]byte{byte(SetLimitPolicyType)}, `{"v":1,"body":{"policy":{"keys":null,"endpoints":{"/x":{"rpm":1}}}}}`...))
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd, err := DecodeCommand(data)
		if err != nil {
			require.Nil(t, cmd)
			return
		}
		again, err := EncodeCommand(cmd)
		require.NoError(t, err)
		cmd2, err := DecodeCommand(again)
		require.NoError(t, err)
		require.Equal(t, cmd.Type(), cmd2.Type())
		again2, err := EncodeCommand(cmd2)
		require.NoError(t, err)
		require.Equal(t, string(again), string(again2), "encoding must be stable")

		fsm := newFSM(discardLogger(), func() {})
		for i, c := range sampleCommands() {
			fsm.applyEntry(uint64(i+1), mustEncode(t, c))
		}
		old := fsm.current()
		oldCopy := old.Clone()
		resp := fsm.applyEntry(100, data)
		if resp != nil {
			require.Implements(t, (*error)(nil), resp)
		}
		require.Equal(t, oldCopy, old, "apply must not modify a published state")
		cur := fsm.current()
		require.Equal(t, uint64(100), cur.Index)
		// Whatever a command did, the state must still be snapshot-able.
		_, err = json.Marshal(snapshotFile{Version: snapshotVersion, State: cur})
		require.NoError(t, err)
	})
}

// PurgeCache is marked skippable on the wire (only near caches, which
// older nodes lack, read its generation); the other commands are not.
func TestOnlySkippableCommandsCarryTheIgnoreFlag(t *testing.T) {
	for _, c := range sampleCommands() {
		data, err := EncodeCommand(c)
		require.NoError(t, err)
		_, skip := c.(skippable)
		require.Equal(t, skip, data[0]&byte(IgnoreUnknownTypeFlag) != 0, "%T", c)
		require.Equal(t, c.Type() == PurgeCacheType, skip, "%T", c)
	}
}
