package consensus

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// CommandType is the first byte of every encoded command. Values are part of
// the on-disk log format: new types are appended, never renumbered or reused.
type CommandType uint8

// Command types. 0 is reserved so that a zeroed entry never decodes.
const (
	SetBatchingType         CommandType = 1
	DeleteBatchingType      CommandType = 2
	SetLimitPolicyType      CommandType = 3
	SetEndpointLimitType    CommandType = 4
	DeleteEndpointLimitType CommandType = 5
	PutKeyType              CommandType = 6
	DeleteKeyType           CommandType = 7
	PutTenantType           CommandType = 8
	DeleteTenantType        CommandType = 9
	BreakerTransitionType   CommandType = 10
	DeleteBreakerType       CommandType = 11
	SetCacheSettingsType    CommandType = 12
	OnceType                CommandType = 13
	SetClusterSecretType    CommandType = 14
	PurgeCacheType          CommandType = 15
)

// skippable is a command EncodeCommand marks with IgnoreUnknownTypeFlag:
// one whose loss on a node too old to know it cannot make nodes disagree
// on anything that node uses.
type skippable interface {
	Command
	skippableByOlderNodes()
}

// IgnoreUnknownTypeFlag, set on a command's type byte by a newer proposer,
// tells older FSMs to skip the command when they do not know its type instead
// of halting (Nomad's convention). Only commands whose loss cannot make nodes
// disagree on anything that matters may carry it.
const IgnoreUnknownTypeFlag CommandType = 128

// Validation bounds, exported so the admin API and CLI can quote them.
const (
	// MaxBatchSize is the largest BatchingSettings.MaxSize.
	MaxBatchSize = 4096
	// MaxFlushTimeout is the longest BatchingSettings.FlushTimeout.
	MaxFlushTimeout = time.Minute
	// MaxLimit bounds every RPM, RPH and TPM value.
	MaxLimit = 1_000_000_000
	// MaxCacheTTL is the longest CacheSettings.DefaultTTL.
	MaxCacheTTL = 30 * 24 * time.Hour
	// maxNameLen bounds model, node, tenant and path names.
	maxNameLen = 256
)

// Command is a typed change to the shared state. Only this package's types
// implement it (apply is unexported), so the FSM knows every command.
type Command interface {
	// Type is the command's fixed wire type.
	Type() CommandType
	// Validate reports the first bad field as a *ValidationError (which
	// matches ErrInvalidCommand); Store.Apply calls it before proposing and
	// the FSM again before applying.
	Validate() error
	// apply changes st, a shallow copy of the current state whose maps are
	// shared with published states: a command must clone any map it writes.
	// A returned error is a domain error and st is then discarded.
	apply(st *State) error
}

// envelope is the JSON body after the type byte: a per-type version and the
// command itself. The version changes whenever a type's meaning or encoding
// changes, so an old node halts instead of silently misapplying it.
type envelope struct {
	V    int             `json:"v"`
	Body json.RawMessage `json:"body"`
}

// commandVersion is the version this build writes, and the newest it reads,
// for each type; 0 marks an unknown type.
func commandVersion(t CommandType) int {
	if t >= SetBatchingType && t <= PurgeCacheType {
		return 1
	}
	return 0
}

// EncodeCommand returns the log entry for cmd: its type byte followed by a
// versioned JSON body. It does not validate cmd.
func EncodeCommand(cmd Command) ([]byte, error) {
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode command %d: %w", cmd.Type(), err)
	}
	env, err := json.Marshal(envelope{V: commandVersion(cmd.Type()), Body: body})
	if err != nil {
		return nil, fmt.Errorf("encode command %d: %w", cmd.Type(), err)
	}
	out := make([]byte, 0, 1+len(env))
	typ := cmd.Type()
	if _, ok := cmd.(skippable); ok {
		typ |= IgnoreUnknownTypeFlag
	}
	out = append(out, byte(typ))
	return append(out, env...), nil
}

// DecodeCommand parses a log entry written by EncodeCommand. It returns an
// error, never panics, for any input: ErrUnknownCommand for a type it does
// not know, ErrUnsupportedVersion for a newer body version.
func DecodeCommand(data []byte) (Command, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("decode command: empty entry")
	}
	t := CommandType(data[0]) &^ IgnoreUnknownTypeFlag
	v := commandVersion(t)
	if v == 0 {
		return nil, fmt.Errorf("decode command type %d: %w", data[0], ErrUnknownCommand)
	}
	var env envelope
	if err := json.Unmarshal(data[1:], &env); err != nil {
		return nil, fmt.Errorf("decode command type %d: %w", t, err)
	}
	if env.V < 1 || env.V > v {
		return nil, fmt.Errorf("decode command type %d version %d: %w", t, env.V, ErrUnsupportedVersion)
	}
	if len(env.Body) == 0 {
		return nil, fmt.Errorf("decode command type %d: missing body", t)
	}
	switch t {
	case SetBatchingType:
		return decodeBody[SetBatching](env.Body)
	case DeleteBatchingType:
		return decodeBody[DeleteBatching](env.Body)
	case SetLimitPolicyType:
		return decodeBody[SetLimitPolicy](env.Body)
	case SetEndpointLimitType:
		return decodeBody[SetEndpointLimit](env.Body)
	case DeleteEndpointLimitType:
		return decodeBody[DeleteEndpointLimit](env.Body)
	case PutKeyType:
		return decodeBody[PutKey](env.Body)
	case DeleteKeyType:
		return decodeBody[DeleteKey](env.Body)
	case PutTenantType:
		return decodeBody[PutTenant](env.Body)
	case DeleteTenantType:
		return decodeBody[DeleteTenant](env.Body)
	case BreakerTransitionType:
		return decodeBody[BreakerTransition](env.Body)
	case DeleteBreakerType:
		return decodeBody[DeleteBreaker](env.Body)
	case SetCacheSettingsType:
		return decodeBody[SetCacheSettings](env.Body)
	case OnceType:
		return decodeBody[Once](env.Body)
	case SetClusterSecretType:
		return decodeBody[SetClusterSecret](env.Body)
	case PurgeCacheType:
		return decodeBody[PurgeCache](env.Body)
	}
	// commandVersion and this switch disagree: a programming error, but
	// DecodeCommand still must not panic.
	return nil, fmt.Errorf("decode command type %d: %w", t, ErrUnknownCommand)
}

func decodeBody[T Command](body []byte) (Command, error) {
	var c T
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("decode command type %d: %w", c.Type(), err)
	}
	return c, nil
}

// SetBatching sets the batching settings of one model on every node.
type SetBatching struct {
	// Model is the model name as served by /v1/models.
	Model string `json:"model"`
	// Settings replace the model's current settings.
	Settings BatchingSettings `json:"settings"`
}

// Type returns SetBatchingType.
func (SetBatching) Type() CommandType { return SetBatchingType }

// Validate checks the model name, max_size in 1..MaxBatchSize and
// flush_timeout in 0..MaxFlushTimeout.
func (c SetBatching) Validate() error {
	if err := validName("model", c.Model); err != nil {
		return err
	}
	if c.Settings.MaxSize < 1 || c.Settings.MaxSize > MaxBatchSize {
		return invalid("max_size", "must be between 1 and %d", MaxBatchSize)
	}
	if c.Settings.FlushTimeout < 0 || c.Settings.FlushTimeout > MaxFlushTimeout {
		return invalid("flush_timeout", "must be between 0s and %s", MaxFlushTimeout)
	}
	return nil
}

func (c SetBatching) apply(st *State) error {
	st.Batching = maps.Clone(st.Batching)
	st.Batching[c.Model] = c.Settings
	return nil
}

// DeleteBatching drops a model's cluster-wide batching settings, so nodes
// fall back to their configured ones. Deleting an absent model is a no-op.
type DeleteBatching struct {
	// Model is the model name.
	Model string `json:"model"`
}

// Type returns DeleteBatchingType.
func (DeleteBatching) Type() CommandType { return DeleteBatchingType }

// Validate checks the model name.
func (c DeleteBatching) Validate() error { return validName("model", c.Model) }

func (c DeleteBatching) apply(st *State) error {
	st.Batching = maps.Clone(st.Batching)
	delete(st.Batching, c.Model)
	return nil
}

// SetLimitPolicy replaces the whole rate-limit policy. Keys must already be
// hashed (HashKey); the admin API hashes raw keys before proposing.
type SetLimitPolicy struct {
	// Policy is the new policy.
	Policy LimitPolicy `json:"policy"`
	// KeepKeys keeps the API keys the state holds when the command is
	// applied, ignoring Policy.Keys. The merge happens in the FSM, not on
	// the proposing node, whose copy may not yet hold a key just added.
	KeepKeys bool `json:"keep_keys,omitempty"`
	// IfUnset makes the command a no-op when a policy exists at apply
	// time: it seeds configured defaults without racing a write that an
	// operator made meanwhile.
	IfUnset bool `json:"if_unset,omitempty"`
}

// Type returns SetLimitPolicyType.
func (SetLimitPolicy) Type() CommandType { return SetLimitPolicyType }

// Validate checks every limit, path, key hash and tenant reference.
func (c SetLimitPolicy) Validate() error {
	p := c.Policy
	if err := validLimit("default_rpm", p.DefaultRPM); err != nil {
		return err
	}
	for _, path := range sortedKeys(p.Endpoints) {
		if err := (SetEndpointLimit{Path: path, Limit: p.Endpoints[path]}).validate(fmt.Sprintf("endpoints[%q].", path)); err != nil {
			return err
		}
	}
	for _, name := range sortedKeys(p.Tenants) {
		if err := (PutTenant{Name: name, Limit: p.Tenants[name]}).validate(fmt.Sprintf("tenants[%q].", name)); err != nil {
			return err
		}
	}
	for _, h := range sortedKeys(p.Keys) {
		k := p.Keys[h]
		prefix := fmt.Sprintf("keys[%q].", h)
		if err := (PutKey{Hash: h, Limit: k}).validate(prefix); err != nil {
			return err
		}
		if k.Tenant != "" {
			if _, ok := p.Tenants[k.Tenant]; !ok {
				return invalid(prefix+"tenant", "names unknown tenant %q", k.Tenant)
			}
		}
	}
	return nil
}

func (c SetLimitPolicy) apply(st *State) error {
	if c.IfUnset && st.Limits != nil {
		return nil
	}
	p := c.Policy.Clone()
	if c.KeepKeys {
		p.Keys = map[string]KeyLimit{}
		if st.Limits != nil {
			p.Keys = st.Limits.Clone().Keys
		}
		for _, h := range sortedKeys(p.Keys) {
			if t := p.Keys[h].Tenant; t != "" {
				if _, ok := p.Tenants[t]; !ok {
					return invalid(fmt.Sprintf("keys[%q].tenant", h), "names tenant %q, which the new policy drops", t)
				}
			}
		}
	}
	st.Limits = p
	return nil
}

// SetEndpointLimit sets the limit of one request path, creating an empty
// policy first if none was ever set.
type SetEndpointLimit struct {
	// Path is the request path, e.g. "/v1/infer".
	Path string `json:"path"`
	// Limit replaces the path's current limit.
	Limit EndpointLimit `json:"limit"`
}

// Type returns SetEndpointLimitType.
func (SetEndpointLimit) Type() CommandType { return SetEndpointLimitType }

// Validate checks the path and the rpm and rph limits.
func (c SetEndpointLimit) Validate() error { return c.validate("") }

func (c SetEndpointLimit) validate(prefix string) error {
	if err := validPath(prefix+"path", c.Path); err != nil {
		return err
	}
	if err := validLimit(prefix+"rpm", c.Limit.RPM); err != nil {
		return err
	}
	return validLimit(prefix+"rph", c.Limit.RPH)
}

func (c SetEndpointLimit) apply(st *State) error {
	p := policyCopy(st)
	p.Endpoints[c.Path] = c.Limit
	st.Limits = p
	return nil
}

// DeleteEndpointLimit removes a path's limit; absent paths are a no-op.
type DeleteEndpointLimit struct {
	// Path is the request path.
	Path string `json:"path"`
}

// Type returns DeleteEndpointLimitType.
func (DeleteEndpointLimit) Type() CommandType { return DeleteEndpointLimitType }

// Validate checks the path.
func (c DeleteEndpointLimit) Validate() error { return validPath("path", c.Path) }

func (c DeleteEndpointLimit) apply(st *State) error {
	if st.Limits == nil {
		return nil
	}
	p := policyCopy(st)
	delete(p.Endpoints, c.Path)
	st.Limits = p
	return nil
}

// PutKey adds or replaces an API key. Build it with NewPutKey so that only
// the key's hash and display prefix are ever proposed.
type PutKey struct {
	// Hash is HashKey(raw key).
	Hash string `json:"hash"`
	// Limit is the key's limits, display prefix and tenant.
	Limit KeyLimit `json:"limit"`
}

// NewPutKey returns the PutKey for a raw API key, holding its hash and
// display prefix, never the key.
func NewPutKey(rawKey string, limit KeyLimit) PutKey {
	limit.Prefix = KeyPrefix(rawKey)
	return PutKey{Hash: HashKey(rawKey), Limit: limit}
}

// Type returns PutKeyType.
func (PutKey) Type() CommandType { return PutKeyType }

// Validate checks the hash, prefix, limits and tenant name; whether the
// tenant exists is checked when the command is applied (ErrUnknownTenant).
func (c PutKey) Validate() error { return c.validate("") }

func (c PutKey) validate(prefix string) error {
	if err := validHash(prefix+"key", c.Hash); err != nil {
		return err
	}
	if len(c.Limit.Prefix) > 16 {
		return invalid(prefix+"prefix", "must be at most 16 bytes")
	}
	if err := validLimit(prefix+"rpm", c.Limit.RPM); err != nil {
		return err
	}
	if err := validLimit(prefix+"tpm", c.Limit.TPM); err != nil {
		return err
	}
	if c.Limit.Tenant != "" {
		return validName(prefix+"tenant", c.Limit.Tenant)
	}
	return nil
}

func (c PutKey) apply(st *State) error {
	p := policyCopy(st)
	if c.Limit.Tenant != "" {
		if _, ok := p.Tenants[c.Limit.Tenant]; !ok {
			return fmt.Errorf("put key %s: tenant %q: %w", c.Limit.Prefix, c.Limit.Tenant, ErrUnknownTenant)
		}
	}
	p.Keys[c.Hash] = c.Limit
	st.Limits = p
	return nil
}

// DeleteKey removes an API key by hash; absent keys are a no-op.
type DeleteKey struct {
	// Hash is HashKey(raw key), as listed in LimitPolicy.Keys.
	Hash string `json:"hash"`
}

// Type returns DeleteKeyType.
func (DeleteKey) Type() CommandType { return DeleteKeyType }

// Validate checks the hash.
func (c DeleteKey) Validate() error { return validHash("key", c.Hash) }

func (c DeleteKey) apply(st *State) error {
	if st.Limits == nil {
		return nil
	}
	p := policyCopy(st)
	delete(p.Keys, c.Hash)
	st.Limits = p
	return nil
}

// PutTenant adds or replaces a tenant's limits.
type PutTenant struct {
	// Name is the tenant.
	Name string `json:"name"`
	// Limit replaces the tenant's limits.
	Limit TenantLimit `json:"limit"`
}

// Type returns PutTenantType.
func (PutTenant) Type() CommandType { return PutTenantType }

// Validate checks the name and the rpm and tpm limits.
func (c PutTenant) Validate() error { return c.validate("") }

func (c PutTenant) validate(prefix string) error {
	if err := validName(prefix+"name", c.Name); err != nil {
		return err
	}
	if err := validLimit(prefix+"rpm", c.Limit.RPM); err != nil {
		return err
	}
	return validLimit(prefix+"tpm", c.Limit.TPM)
}

func (c PutTenant) apply(st *State) error {
	p := policyCopy(st)
	p.Tenants[c.Name] = c.Limit
	st.Limits = p
	return nil
}

// DeleteTenant removes a tenant; it fails with ErrTenantInUse while keys
// belong to it. Absent tenants are a no-op.
type DeleteTenant struct {
	// Name is the tenant.
	Name string `json:"name"`
}

// Type returns DeleteTenantType.
func (DeleteTenant) Type() CommandType { return DeleteTenantType }

// Validate checks the name.
func (c DeleteTenant) Validate() error { return validName("name", c.Name) }

func (c DeleteTenant) apply(st *State) error {
	if st.Limits == nil {
		return nil
	}
	for _, k := range st.Limits.Keys {
		if k.Tenant == c.Name {
			return fmt.Errorf("delete tenant %q: %w", c.Name, ErrTenantInUse)
		}
	}
	p := policyCopy(st)
	delete(p.Tenants, c.Name)
	st.Limits = p
	return nil
}

// BreakerTransition moves the breaker of (Node, Model) from From to To. The
// proposer supplies every time, so applying it is deterministic. Unless Force
// is set, it applies only if the breaker is in From; otherwise the FSM
// answers a *BreakerConflictError, so of two nodes racing to make the same
// transition exactly one wins.
type BreakerTransition struct {
	// Node is the node whose backend the breaker guards; it has no '/'.
	Node string `json:"node"`
	// Model is the model backend.
	Model string `json:"model"`
	// From is the state the proposer observed; ignored when Force is set.
	From BreakerStatus `json:"from"`
	// To is the new state.
	To BreakerStatus `json:"to"`
	// At is when the transition happened on the proposer's clock.
	At time.Time `json:"at"`
	// OpenUntil is when an open breaker may try half-open; required when To
	// is open, zero otherwise.
	OpenUntil time.Time `json:"open_until,omitzero"`
	// Trips is the consecutive-open count after this transition.
	Trips int `json:"trips"`
	// Reason briefly says why, e.g. "3 consecutive failures".
	Reason string `json:"reason,omitempty"`
	// Force applies the transition whatever the current state (admin
	// open/close/reset).
	Force bool `json:"force,omitempty"`
}

// Type returns BreakerTransitionType.
func (BreakerTransition) Type() CommandType { return BreakerTransitionType }

// Validate checks the names, states, edge, times, trips and reason.
func (c BreakerTransition) Validate() error {
	if err := validName("node", c.Node); err != nil {
		return err
	}
	if strings.Contains(c.Node, "/") {
		return invalid("node", "must not contain '/'")
	}
	if err := validName("model", c.Model); err != nil {
		return err
	}
	if !c.To.valid() {
		return invalid("to", "must be closed, open or half_open")
	}
	if !c.Force {
		if !c.From.valid() {
			return invalid("from", "must be closed, open or half_open")
		}
		if !breakerEdge(c.From, c.To) {
			return invalid("to", "cannot follow %s (allowed: closed->open->half_open->closed|open)", c.From)
		}
	}
	if c.At.IsZero() {
		return invalid("at", "must be set")
	}
	// Times must stay encodable in UTC, or snapshots would fail to persist.
	if !encodableTime(c.At) {
		return invalid("at", "must be a time between years 1 and 9999")
	}
	if !c.OpenUntil.IsZero() && !encodableTime(c.OpenUntil) {
		return invalid("open_until", "must be a time between years 1 and 9999")
	}
	if c.To == BreakerOpen && !c.OpenUntil.After(c.At) {
		return invalid("open_until", "must be after at when opening")
	}
	if c.To != BreakerOpen && !c.OpenUntil.IsZero() {
		return invalid("open_until", "must be empty unless opening")
	}
	if c.Trips < 0 || c.Trips > 1_000_000 {
		return invalid("trips", "must be between 0 and 1000000")
	}
	if len(c.Reason) > maxNameLen {
		return invalid("reason", "must be at most %d bytes", maxNameLen)
	}
	return nil
}

func encodableTime(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 1 && y <= 9999
}

// breakerEdge reports whether from->to is a transition of the breaker state
// machine; other moves need Force.
func breakerEdge(from, to BreakerStatus) bool {
	switch from {
	case BreakerClosed:
		return to == BreakerOpen
	case BreakerOpen:
		return to == BreakerHalfOpen
	case BreakerHalfOpen:
		return to == BreakerClosed || to == BreakerOpen
	}
	return false
}

func (c BreakerTransition) apply(st *State) error {
	cur := st.Breaker(c.Node, c.Model)
	key := BreakerKey(c.Node, c.Model)
	if !c.Force && cur.State != c.From {
		return &BreakerConflictError{Key: key, Want: c.From, Have: cur.State}
	}
	st.Breakers = maps.Clone(st.Breakers)
	st.Breakers[key] = BreakerState{
		Node:      c.Node,
		Model:     c.Model,
		State:     c.To,
		Since:     c.At.UTC(),
		OpenUntil: c.OpenUntil.UTC(),
		Trips:     c.Trips,
		Reason:    c.Reason,
	}
	return nil
}

// DeleteBreaker forgets breakers: one (Node, Model), or every breaker of
// Node when Model is empty (a node removed from the cluster).
type DeleteBreaker struct {
	// Node is the node.
	Node string `json:"node"`
	// Model is the model, or empty for all of Node's breakers.
	Model string `json:"model,omitempty"`
}

// Type returns DeleteBreakerType.
func (DeleteBreaker) Type() CommandType { return DeleteBreakerType }

// Validate checks the names.
func (c DeleteBreaker) Validate() error {
	if err := validName("node", c.Node); err != nil {
		return err
	}
	if strings.Contains(c.Node, "/") {
		return invalid("node", "must not contain '/'")
	}
	if c.Model != "" {
		return validName("model", c.Model)
	}
	return nil
}

func (c DeleteBreaker) apply(st *State) error {
	st.Breakers = maps.Clone(st.Breakers)
	if c.Model != "" {
		delete(st.Breakers, BreakerKey(c.Node, c.Model))
		return nil
	}
	for k, b := range st.Breakers {
		if b.Node == c.Node {
			delete(st.Breakers, k)
		}
	}
	return nil
}

// SetCacheSettings replaces the cluster-wide cache settings.
type SetCacheSettings struct {
	// Settings are the new settings.
	Settings CacheSettings `json:"settings"`
}

// Type returns SetCacheSettingsType.
func (SetCacheSettings) Type() CommandType { return SetCacheSettingsType }

// Validate checks default_ttl in 0..MaxCacheTTL and the scope's name.
func (c SetCacheSettings) Validate() error {
	if c.Settings.DefaultTTL < 0 || c.Settings.DefaultTTL > MaxCacheTTL {
		return invalid("default_ttl", "must be between 0s and %s", MaxCacheTTL)
	}
	switch c.Settings.Scope {
	case "", CacheScopeCluster, CacheScopeTenant, CacheScopeKey:
		return nil
	}
	return invalid("scope", "must be cluster, tenant or key, got %q", c.Settings.Scope)
}

func (c SetCacheSettings) apply(st *State) error {
	cs := c.Settings
	st.Cache = &cs
	return nil
}

// PurgeCache records that the shared response cache was purged, of every
// model's answers or of one model's: it moves State.CacheGeneration on, so
// every node stops answering from the answers its near cache took from the
// shared cache before the purge, and the purged model's epoch
// (State.CacheEpoch), which nodes key answers by, so an answer stored under
// the old epoch is out of reach even if it outlives the shared cache's own
// purge (a store queued before the purge and landing after it, or one a
// partition move carried past it). The purge of the shared cache itself is
// done first, by the node that proposes this, and then only frees memory.
type PurgeCache struct {
	// Model is the purged model; empty for all of them.
	Model string `json:"model,omitempty"`
}

// Type returns PurgeCacheType.
func (PurgeCache) Type() CommandType { return PurgeCacheType }

// Only near caches and cache keys read the generation and the epochs, and
// a node too old to know the command has neither.
func (PurgeCache) skippableByOlderNodes() {}

// Validate checks the model name, if any.
func (c PurgeCache) Validate() error {
	if c.Model == "" {
		return nil
	}
	return validName("model", c.Model)
}

// apply moves the generation on for any purge (near caches are
// short-lived, so dropping every model's near answers costs a few
// shared-cache gets) and the purged model's epoch. Epochs are kept for at
// most MaxCacheEpochs model names; a purge of another model past that
// moves every model's epoch instead, which purges more than asked but
// never less.
func (c PurgeCache) apply(st *State) error {
	st.CacheGeneration++
	model := c.Model
	if _, ok := st.CacheEpochs[model]; !ok && len(st.CacheEpochs) >= MaxCacheEpochs {
		model = ""
	}
	st.CacheEpochs = maps.Clone(st.CacheEpochs)
	if st.CacheEpochs == nil {
		st.CacheEpochs = map[string]uint64{}
	}
	st.CacheEpochs[model]++
	return nil
}

// policyCopy returns a deep copy of st's policy, or an empty one.
func policyCopy(st *State) *LimitPolicy {
	if st.Limits == nil {
		p := &LimitPolicy{}
		p.normalize()
		return p
	}
	return st.Limits.Clone()
}

func validName(field, s string) error {
	if s == "" {
		return invalid(field, "must not be empty")
	}
	if len(s) > maxNameLen {
		return invalid(field, "must be at most %d bytes", maxNameLen)
	}
	if !utf8.ValidString(s) {
		return invalid(field, "must be valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return invalid(field, "must not contain spaces or control characters")
		}
	}
	return nil
}

func validPath(field, s string) error {
	if err := validName(field, s); err != nil {
		return err
	}
	if !strings.HasPrefix(s, "/") {
		return invalid(field, "must start with '/'")
	}
	return nil
}

func validLimit(field string, n int) error {
	if n < 0 || n > MaxLimit {
		return invalid(field, "must be between 0 and %d", MaxLimit)
	}
	return nil
}

func validHash(field, s string) error {
	if len(s) != 64 || strings.ToLower(s) != s {
		return invalid(field, "must be a 64-character lowercase hex SHA-256 (see HashKey)")
	}
	if _, err := hex.DecodeString(s); err != nil {
		return invalid(field, "must be a 64-character lowercase hex SHA-256 (see HashKey)")
	}
	return nil
}

// sortedKeys orders map keys so that Validate names the same bad field every
// time.
func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
