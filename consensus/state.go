package consensus

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// State is the shared cluster state held by the FSM. A *State handed out by
// Store.State is immutable: the FSM never changes it after publishing it
// (copy-on-write), so readers use it without locks and must not modify it
// either; call Clone for a private, mutable copy.
//
// Absent entries mean "not set through the cluster": a model missing from
// Batching, a nil Limits or a nil Cache tells the node to use its own
// configuration for that setting.
type State struct {
	// Index is the Raft log index of the last command applied to this state.
	Index uint64 `json:"index"`
	// Batching holds batching settings per model name.
	Batching map[string]BatchingSettings `json:"batching"`
	// Limits is the cluster-wide rate-limit policy; nil until first set.
	Limits *LimitPolicy `json:"limits"`
	// Breakers holds circuit-breaker states keyed by BreakerKey(node, model).
	// A breaker that is absent is closed with no trips.
	Breakers map[string]BreakerState `json:"breakers"`
	// Cache holds the response-cache settings; nil until first set.
	Cache *CacheSettings `json:"cache"`
	// CacheGeneration counts purges of the shared response cache
	// (PurgeCache). A node's near cache answers only from entries it took
	// in the current generation.
	CacheGeneration uint64 `json:"cache_generation,omitempty"`
	// CacheEpochs counts purges per model name, "" counting purges of
	// every model (PurgeCache); at most MaxCacheEpochs model names. Nodes key
	// answers by CacheEpoch.
	CacheEpochs map[string]uint64 `json:"cache_epochs,omitempty"`
	// Writes remembers the outcome of the last MaxRememberedWrites Once
	// commands, oldest first, so a retried write is answered, not applied
	// again. It is part of snapshots: every server must skip the same
	// duplicates.
	Writes []WriteRecord `json:"writes,omitempty"`
	// ClusterSecret keys node-to-node signatures when the cluster has no
	// gossip key; set once by the first leader (SetClusterSecret). Never
	// shown by any API.
	ClusterSecret []byte `json:"cluster_secret,omitempty"`
}

// newState returns the empty state a fresh FSM starts from.
func newState() *State {
	return &State{
		Batching: map[string]BatchingSettings{},
		Breakers: map[string]BreakerState{},
	}
}

// normalize replaces nil maps by empty ones so that decoded and fresh states
// compare equal and encode the same way.
func (s *State) normalize() {
	if s.Batching == nil {
		s.Batching = map[string]BatchingSettings{}
	}
	if s.Breakers == nil {
		s.Breakers = map[string]BreakerState{}
	}
	if s.Limits != nil {
		s.Limits.normalize()
	}
}

// Clone returns a deep copy that the caller may modify freely.
func (s *State) Clone() *State {
	c := &State{
		Index:           s.Index,
		Batching:        maps.Clone(s.Batching),
		Breakers:        maps.Clone(s.Breakers),
		CacheGeneration: s.CacheGeneration,
		Writes:          slices.Clone(s.Writes),
		ClusterSecret:   slices.Clone(s.ClusterSecret),
	}
	if len(s.CacheEpochs) > 0 {
		c.CacheEpochs = maps.Clone(s.CacheEpochs)
	}
	if s.Limits != nil {
		c.Limits = s.Limits.Clone()
	}
	if s.Cache != nil {
		cs := *s.Cache
		c.Cache = &cs
	}
	c.normalize()
	return c
}

// MaxCacheEpochs bounds State.CacheEpochs (model names come from the admin
// API's purge).
const MaxCacheEpochs = 1024

// CacheEpoch is how many purges apply to model's cached answers: purges of
// every model and of model itself. It only grows; nodes key answers by it,
// so a purge puts every earlier answer out of reach.
func (s *State) CacheEpoch(model string) uint64 {
	e := s.CacheEpochs[""]
	if model != "" {
		e += s.CacheEpochs[model]
	}
	return e
}

// Breaker returns the state of the breaker of model on node; a breaker that
// was never tripped is reported closed.
func (s *State) Breaker(node, model string) BreakerState {
	if b, ok := s.Breakers[BreakerKey(node, model)]; ok {
		return b
	}
	return BreakerState{Node: node, Model: model, State: BreakerClosed}
}

// BreakerKey is the key of a breaker in State.Breakers: "node/model". Node
// names cannot contain '/', so the first '/' separates the two even when the
// model name has slashes ("n1/meta-llama/Llama-3").
func BreakerKey(node, model string) string { return node + "/" + model }

// BatchingSettings tunes one model's dynamic batcher. In JSON FlushTimeout is
// a Go duration string such as "10ms" (a number is read as nanoseconds).
type BatchingSettings struct {
	// MaxSize is the largest batch the batcher forms, 1..MaxBatchSize.
	MaxSize int
	// FlushTimeout is how long a partial batch waits for more requests.
	FlushTimeout time.Duration
}

type batchingJSON struct {
	MaxSize      int          `json:"max_size"`
	FlushTimeout jsonDuration `json:"flush_timeout"`
}

// MarshalJSON encodes {"max_size": N, "flush_timeout": "10ms"}.
func (b BatchingSettings) MarshalJSON() ([]byte, error) {
	return json.Marshal(batchingJSON{MaxSize: b.MaxSize, FlushTimeout: jsonDuration(b.FlushTimeout)})
}

// UnmarshalJSON accepts what MarshalJSON writes; flush_timeout may also be a
// number of nanoseconds.
func (b *BatchingSettings) UnmarshalJSON(data []byte) error {
	var v batchingJSON
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*b = BatchingSettings{MaxSize: v.MaxSize, FlushTimeout: time.Duration(v.FlushTimeout)}
	return nil
}

// CacheSettings are the cluster-wide response-cache settings. In JSON
// DefaultTTL is a duration string such as "5m".
type CacheSettings struct {
	// Enabled turns the shared response cache on.
	Enabled bool
	// DefaultTTL is how long a cached response lives; 0 means no expiry.
	DefaultTTL time.Duration
	// Lowercase makes prompt normalization fold case.
	Lowercase bool
	// Scope says who may share a cached answer: "cluster", "tenant" or
	// "key"; empty leaves each node's configured scope in force.
	Scope string
}

// Cache scopes a CacheSettings.Scope may name.
const (
	CacheScopeCluster = "cluster"
	CacheScopeTenant  = "tenant"
	CacheScopeKey     = "key"
)

type cacheJSON struct {
	Enabled    bool         `json:"enabled"`
	DefaultTTL jsonDuration `json:"default_ttl"`
	Lowercase  bool         `json:"lowercase"`
	Scope      string       `json:"scope,omitempty"`
}

// MarshalJSON encodes {"enabled": b, "default_ttl": "5m0s", "lowercase": b}.
func (c CacheSettings) MarshalJSON() ([]byte, error) {
	return json.Marshal(cacheJSON{Enabled: c.Enabled, DefaultTTL: jsonDuration(c.DefaultTTL), Lowercase: c.Lowercase, Scope: c.Scope})
}

// UnmarshalJSON accepts what MarshalJSON writes; default_ttl may also be a
// number of nanoseconds.
func (c *CacheSettings) UnmarshalJSON(data []byte) error {
	var v cacheJSON
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*c = CacheSettings{Enabled: v.Enabled, DefaultTTL: time.Duration(v.DefaultTTL), Lowercase: v.Lowercase, Scope: v.Scope}
	return nil
}

// LimitPolicy is the cluster-wide rate-limit policy. Every limit of 0 means
// "no limit at this level".
type LimitPolicy struct {
	// DefaultRPM limits each client (API key, else IP) in requests per minute.
	DefaultRPM int `json:"default_rpm"`
	// Endpoints limits each request path, e.g. "/v1/infer".
	Endpoints map[string]EndpointLimit `json:"endpoints"`
	// Keys holds API keys by HashKey(key): the raw key is never stored in
	// Raft, its log or snapshots. A node hashes the bearer token of a request
	// and looks the hash up here.
	Keys map[string]KeyLimit `json:"keys"`
	// Tenants holds per-tenant limits shared by the tenant's keys.
	Tenants map[string]TenantLimit `json:"tenants"`
	// AuthRequired rejects requests whose key is not in Keys (401).
	AuthRequired bool `json:"auth_required"`
}

// Clone returns a deep copy.
func (p *LimitPolicy) Clone() *LimitPolicy {
	c := *p
	c.Endpoints = maps.Clone(p.Endpoints)
	c.Keys = maps.Clone(p.Keys)
	c.Tenants = maps.Clone(p.Tenants)
	c.normalize()
	return &c
}

func (p *LimitPolicy) normalize() {
	if p.Endpoints == nil {
		p.Endpoints = map[string]EndpointLimit{}
	}
	if p.Keys == nil {
		p.Keys = map[string]KeyLimit{}
	}
	if p.Tenants == nil {
		p.Tenants = map[string]TenantLimit{}
	}
}

// EndpointLimit limits one request path across the cluster.
type EndpointLimit struct {
	// RPM is requests per minute; 0 is unlimited.
	RPM int `json:"rpm"`
	// RPH is requests per hour; 0 is unlimited.
	RPH int `json:"rph"`
}

// KeyLimit limits one API key.
type KeyLimit struct {
	// Prefix is the start of the raw key (KeyPrefix), kept so operators can
	// tell keys apart when listing them; it is too short to be a secret.
	Prefix string `json:"prefix"`
	// RPM is requests per minute; 0 is unlimited.
	RPM int `json:"rpm"`
	// TPM is tokens per minute on the LLM endpoints; 0 is unlimited.
	TPM int `json:"tpm"`
	// Tenant, when set, names an entry of LimitPolicy.Tenants.
	Tenant string `json:"tenant,omitempty"`
}

// TenantLimit limits all keys of one tenant together.
type TenantLimit struct {
	// RPM is requests per minute; 0 is unlimited.
	RPM int `json:"rpm"`
	// TPM is tokens per minute; 0 is unlimited.
	TPM int `json:"tpm"`
}

// HashKey returns the identifier under which an API key is stored: the
// lowercase hex SHA-256 of the raw key. API keys are long random strings, so
// an unsalted fast hash is enough to keep them out of logs and snapshots
// while letting every node look a key up with one hash per request.
func HashKey(rawKey string) string {
	sum := sha256.Sum256([]byte(rawKey))
	return hex.EncodeToString(sum[:])
}

// KeyPrefix returns the displayable start of a raw key: at most 8 bytes and
// never more than a quarter of the key, so short keys reveal little.
func KeyPrefix(rawKey string) string {
	n := min(8, len(rawKey)/4)
	return rawKey[:n]
}

// BreakerStatus is the state of a circuit breaker.
type BreakerStatus string

// Breaker states.
const (
	// BreakerClosed lets requests through.
	BreakerClosed BreakerStatus = "closed"
	// BreakerOpen sends no requests to the backend until OpenUntil.
	BreakerOpen BreakerStatus = "open"
	// BreakerHalfOpen admits probe requests one at a time.
	BreakerHalfOpen BreakerStatus = "half_open"
)

func (b BreakerStatus) valid() bool {
	return b == BreakerClosed || b == BreakerOpen || b == BreakerHalfOpen
}

// BreakerState is the replicated state of the breaker of one (node, model).
type BreakerState struct {
	// Node is the node whose backend the breaker guards.
	Node string `json:"node"`
	// Model is the model backend on that node.
	Model string `json:"model"`
	// State is closed, open or half_open.
	State BreakerStatus `json:"state"`
	// Since is when the breaker entered State (the proposer's clock).
	Since time.Time `json:"since,omitzero"`
	// OpenUntil is when an open breaker may go half-open; zero otherwise.
	OpenUntil time.Time `json:"open_until,omitzero"`
	// Trips counts consecutive opens without a close in between; proposers
	// grow the open timeout with it.
	Trips int `json:"trips"`
	// Reason is the proposer's short explanation of the last transition.
	Reason string `json:"reason,omitempty"`
}

// jsonDuration encodes a time.Duration as its String form.
type jsonDuration time.Duration

func (d jsonDuration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *jsonDuration) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = jsonDuration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("duration must be a string like \"10ms\" or integer nanoseconds: %w", err)
	}
	*d = jsonDuration(n)
	return nil
}
