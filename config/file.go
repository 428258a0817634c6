package config

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// The file* types mirror cluster.hcl. Pointers tell "set" from "unset", so
// the file overrides defaults only where it says something.
type fileConfig struct {
	NodeName       *string       `hcl:"node_name,optional"`
	DataDir        *string       `hcl:"data_dir,optional"`
	Join           *[]string     `hcl:"join,optional"`
	JoinTimeout    *string       `hcl:"join_timeout,optional"`
	HTTP           *fileHTTP     `hcl:"http,block"`
	Gossip         *fileGossip   `hcl:"gossip,block"`
	Raft           *fileRaft     `hcl:"raft,block"`
	Cache          *fileCache    `hcl:"cache,block"`
	Batching       *fileBatching `hcl:"batching,block"`
	RateLimit      *fileRate     `hcl:"rate_limit,block"`
	CircuitBreaker *fileBreaker  `hcl:"circuit_breaker,block"`
	Admin          *fileAdmin    `hcl:"admin,block"`
	Auth           *fileAuth     `hcl:"auth,block"`
	Router         *fileRouter   `hcl:"router,block"`
	GPU            *fileGPU      `hcl:"gpu,block"`
	GC             *fileGC       `hcl:"gc,block"`
	Models         []fileModel   `hcl:"model,block"`
}

type fileHTTP struct {
	Addr              *string `hcl:"addr,optional"`
	MaxBodyBytes      *int64  `hcl:"max_body_bytes,optional"`
	ReadHeaderTimeout *string `hcl:"read_header_timeout,optional"`
	ReadTimeout       *string `hcl:"read_timeout,optional"`
	IdleTimeout       *string `hcl:"idle_timeout,optional"`
	RequestTimeout    *string `hcl:"request_timeout,optional"`
	DrainTimeout      *string `hcl:"drain_timeout,optional"`
}

type fileGossip struct {
	Addr       *string `hcl:"addr,optional"`
	Advertise  *string `hcl:"advertise,optional"`
	EncryptKey *string `hcl:"encrypt_key,optional"`
}

type fileRaft struct {
	Addr              *string `hcl:"addr,optional"`
	Advertise         *string `hcl:"advertise,optional"`
	BootstrapExpect   *int    `hcl:"bootstrap_expect,optional"`
	MaxVoters         *int    `hcl:"max_voters,optional"`
	DeadServerTimeout *string `hcl:"dead_server_timeout,optional"`
}

type fileCache struct {
	Addr           *string `hcl:"addr,optional"`
	MemberlistAddr *string `hcl:"memberlist_addr,optional"`
	Backend        *string `hcl:"backend,optional"`
	DefaultTTL     *string `hcl:"default_ttl,optional"`
	MaxBytes       *int64  `hcl:"max_bytes,optional"`
	Lowercase      *bool   `hcl:"lowercase,optional"`
	LookupTimeout  *string `hcl:"lookup_timeout,optional"`
	NearTTL        *string `hcl:"near_ttl,optional"`

	Scope *string `hcl:"scope,optional"`
}

type fileBatching struct {
	MaxSize              *int    `hcl:"max_size,optional"`
	FlushTimeout         *string `hcl:"flush_timeout,optional"`
	MaxQueue             *int    `hcl:"max_queue,optional"`
	MaxConcurrentBatches *int    `hcl:"max_concurrent_batches,optional"`
}

type fileRate struct {
	RPM *int `hcl:"rpm,optional"`
}

type fileBreaker struct {
	FailureThreshold *int    `hcl:"failure_threshold,optional"`
	Timeout          *string `hcl:"timeout,optional"`
}

type fileAdmin struct {
	Token *string `hcl:"token,optional"`
}

type fileAuth struct {
	Required *bool `hcl:"required,optional"`
}

type fileRouter struct {
	Policy       *string  `hcl:"policy,optional"`
	PrefixWeight *float64 `hcl:"prefix_weight,optional"`
}

type fileGPU struct {
	Count    *int `hcl:"count,optional"`
	MemoryMB *int `hcl:"memory_mb,optional"`
}

type fileGC struct {
	HeapFloorBytes *int64 `hcl:"heap_floor_bytes,optional"`
}

type fileModel struct {
	Name                 string      `hcl:"name,label"`
	Backend              string      `hcl:"backend"`
	MaxSize              *int        `hcl:"max_size,optional"`
	FlushTimeout         *string     `hcl:"flush_timeout,optional"`
	MaxConcurrentBatches *int        `hcl:"max_concurrent_batches,optional"`
	Sim                  *fileSim    `hcl:"sim,block"`
	OpenAI               *fileOpenAI `hcl:"openai,block"`
	Engine               *fileEngine `hcl:"engine,block"`
	// --- triton backend (issue 14) ---
	Triton *fileTriton `hcl:"triton,block"`
	// --- end triton backend ---
}

// --- triton backend (issue 14) ---

type fileTriton struct {
	URL            *string `hcl:"url,optional"`
	Model          *string `hcl:"model,optional"`
	Version        *string `hcl:"version,optional"`
	Timeout        *string `hcl:"timeout,optional"`
	MaxConns       *int    `hcl:"max_conns,optional"`
	HealthInterval *string `hcl:"health_interval,optional"`
}

// --- end triton backend ---

type fileSim struct {
	Base             *string  `hcl:"base,optional"`
	PerItem          *string  `hcl:"per_item,optional"`
	Exponent         *float64 `hcl:"exponent,optional"`
	TokenInterval    *string  `hcl:"token_interval,optional"`
	DefaultMaxTokens *int     `hcl:"default_max_tokens,optional"`
	Jitter           *float64 `hcl:"jitter,optional"`
	Seed             *int64   `hcl:"seed,optional"`
}

type fileOpenAI struct {
	URL       *string `hcl:"url,optional"`
	Model     *string `hcl:"model,optional"`
	APIKeyEnv *string `hcl:"api_key_env,optional"`
	Timeout   *string `hcl:"timeout,optional"`
	MaxConns  *int    `hcl:"max_conns,optional"`
}

type fileEngine struct {
	Checkpoint   *string `hcl:"checkpoint,optional"`
	Tokenizer    *string `hcl:"tokenizer,optional"`
	Quantize     *string `hcl:"quantize,optional"`
	MaxSequences *int    `hcl:"max_sequences,optional"`
	Threads      *int    `hcl:"threads,optional"`
	KVCacheMB    *int    `hcl:"kv_cache_mb,optional"`
	PrefixCache  *bool   `hcl:"prefix_cache,optional"`
}

// ConfigError is a configuration mistake; main exits with status 2 on it.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// LoadFile merges an HCL file into c. Unknown keys, wrong types and bad
// durations are errors that name the key and the file line.
func (c *Config) LoadFile(path string) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return &ConfigError{fmt.Errorf("read config: %w", err)}
	}
	return c.loadHCL(src, path)
}

func (c *Config) loadHCL(src []byte, filename string) error {
	f, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return &ConfigError{diags}
	}
	var fc fileConfig
	if diags := gohcl.DecodeBody(f.Body, nil, &fc); diags.HasErrors() {
		return &ConfigError{nameAttributes(diags, f.Body.(*hclsyntax.Body))}
	}
	d := durations{body: f.Body.(*hclsyntax.Body), file: filename}
	if err := c.merge(&fc, &d); err != nil {
		return err
	}
	if len(d.errs) > 0 {
		return &ConfigError{fmt.Errorf("%s", strings.Join(d.errs, "; "))}
	}
	return nil
}

// nameAttributes puts the dotted key in front of each diagnostic that
// points into an attribute, because gohcl's type errors say only "a number
// is required" with a line.
func nameAttributes(diags hcl.Diagnostics, body *hclsyntax.Body) hcl.Diagnostics {
	for _, d := range diags {
		if d.Subject == nil {
			continue
		}
		if key := attributeAt(body, *d.Subject, ""); key != "" && !strings.Contains(d.Detail, key) {
			d.Detail = key + ": " + d.Detail
		}
	}
	return diags
}

func attributeAt(body *hclsyntax.Body, r hcl.Range, prefix string) string {
	for name, a := range body.Attributes {
		if a.SrcRange.ContainsOffset(r.Start.Byte) {
			return prefix + name
		}
	}
	for _, b := range body.Blocks {
		if b.Body.SrcRange.ContainsOffset(r.Start.Byte) {
			p := prefix + b.Type + "."
			if len(b.Labels) > 0 {
				p += b.Labels[0] + "."
			}
			return attributeAt(b.Body, r, p)
		}
	}
	return ""
}

// durations parses duration strings and, on failure, finds the line of the
// offending attribute for the message.
type durations struct {
	body *hclsyntax.Body
	file string
	errs []string
}

func (d *durations) set(dst *time.Duration, v *string, path ...string) {
	if v == nil {
		return
	}
	dur, err := time.ParseDuration(*v)
	if err != nil || dur < 0 {
		d.errs = append(d.errs, fmt.Sprintf("%s: %s: invalid duration %q (use e.g. \"10ms\", \"30s\", \"2h\")", d.locate(path), strings.Join(path, "."), *v))
		return
	}
	*dst = dur
}

func (d *durations) locate(path []string) string {
	body := d.body
	for i, name := range path {
		if i == len(path)-1 {
			if a, ok := body.Attributes[name]; ok {
				return fmt.Sprintf("%s:%d", d.file, a.SrcRange.Start.Line)
			}
			break
		}
		var next *hclsyntax.Body
		for _, b := range body.Blocks {
			label := ""
			if len(b.Labels) > 0 {
				label = b.Labels[0]
			}
			if b.Type == name || (b.Type == "model" && "model."+label == name) {
				next = b.Body
				break
			}
		}
		if next == nil {
			break
		}
		body = next
	}
	return d.file
}

func setS(dst *string, v *string) {
	if v != nil {
		*dst = *v
	}
}

func setI[T int | int64 | float64 | bool](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

func (c *Config) merge(fc *fileConfig, d *durations) error {
	setS(&c.NodeName, fc.NodeName)
	setS(&c.DataDir, fc.DataDir)
	if fc.Join != nil {
		c.Join = *fc.Join
	}
	d.set(&c.JoinTimeout, fc.JoinTimeout, "join_timeout")
	if h := fc.HTTP; h != nil {
		setS(&c.HTTP.Addr, h.Addr)
		setI(&c.HTTP.MaxBodyBytes, h.MaxBodyBytes)
		d.set(&c.HTTP.ReadHeaderTimeout, h.ReadHeaderTimeout, "http", "read_header_timeout")
		d.set(&c.HTTP.ReadTimeout, h.ReadTimeout, "http", "read_timeout")
		d.set(&c.HTTP.IdleTimeout, h.IdleTimeout, "http", "idle_timeout")
		d.set(&c.HTTP.RequestTimeout, h.RequestTimeout, "http", "request_timeout")
		d.set(&c.HTTP.DrainTimeout, h.DrainTimeout, "http", "drain_timeout")
	}
	if g := fc.Gossip; g != nil {
		setS(&c.Gossip.Addr, g.Addr)
		setS(&c.Gossip.Advertise, g.Advertise)
		setS(&c.Gossip.EncryptKey, g.EncryptKey)
	}
	if r := fc.Raft; r != nil {
		setS(&c.Raft.Addr, r.Addr)
		setS(&c.Raft.Advertise, r.Advertise)
		setI(&c.Raft.BootstrapExpect, r.BootstrapExpect)
		setI(&c.Raft.MaxVoters, r.MaxVoters)
		d.set(&c.Raft.DeadServerTimeout, r.DeadServerTimeout, "raft", "dead_server_timeout")
	}
	if k := fc.Cache; k != nil {
		setS(&c.Cache.Addr, k.Addr)
		setS(&c.Cache.MemberlistAddr, k.MemberlistAddr)
		setS(&c.Cache.Backend, k.Backend)
		d.set(&c.Cache.DefaultTTL, k.DefaultTTL, "cache", "default_ttl")
		setI(&c.Cache.MaxBytes, k.MaxBytes)
		setI(&c.Cache.Lowercase, k.Lowercase)
		d.set(&c.Cache.LookupTimeout, k.LookupTimeout, "cache", "lookup_timeout")
		d.set(&c.Cache.NearTTL, k.NearTTL, "cache", "near_ttl")
		setS(&c.Cache.Scope, k.Scope)
	}
	if g := fc.GC; g != nil {
		setI(&c.GC.HeapFloorBytes, g.HeapFloorBytes)
	}
	if b := fc.Batching; b != nil {
		setI(&c.Batching.MaxSize, b.MaxSize)
		d.set(&c.Batching.FlushTimeout, b.FlushTimeout, "batching", "flush_timeout")
		setI(&c.Batching.MaxQueue, b.MaxQueue)
		setI(&c.Batching.MaxConcurrentBatches, b.MaxConcurrentBatches)
	}
	if r := fc.RateLimit; r != nil {
		setI(&c.RateLimit.RPM, r.RPM)
	}
	if b := fc.CircuitBreaker; b != nil {
		setI(&c.CircuitBreaker.FailureThreshold, b.FailureThreshold)
		d.set(&c.CircuitBreaker.Timeout, b.Timeout, "circuit_breaker", "timeout")
	}
	if a := fc.Admin; a != nil {
		setS(&c.Admin.Token, a.Token)
	}
	if a := fc.Auth; a != nil {
		setI(&c.Auth.Required, a.Required)
	}
	if r := fc.Router; r != nil {
		setS(&c.Router.Policy, r.Policy)
		setI(&c.Router.PrefixWeight, r.PrefixWeight)
	}
	if g := fc.GPU; g != nil {
		setI(&c.GPU.Count, g.Count)
		setI(&c.GPU.MemoryMB, g.MemoryMB)
	}
	if len(fc.Models) > 0 {
		c.Models = nil
	}
	for _, fm := range fc.Models {
		c.Models = append(c.Models, fm.resolve(d))
	}
	return nil
}

func (fm fileModel) resolve(d *durations) ModelConfig {
	m := DefaultModelConfig(fm.Name, fm.Backend)
	at := "model." + fm.Name
	setI(&m.MaxSize, fm.MaxSize)
	d.set(&m.FlushTimeout, fm.FlushTimeout, at, "flush_timeout")
	setI(&m.MaxConcurrentBatches, fm.MaxConcurrentBatches)
	if s := fm.Sim; s != nil {
		d.set(&m.Sim.Base, s.Base, at, "sim", "base")
		d.set(&m.Sim.PerItem, s.PerItem, at, "sim", "per_item")
		setI(&m.Sim.Exponent, s.Exponent)
		d.set(&m.Sim.TokenInterval, s.TokenInterval, at, "sim", "token_interval")
		setI(&m.Sim.DefaultMaxTokens, s.DefaultMaxTokens)
		setI(&m.Sim.Jitter, s.Jitter)
		if s.Seed != nil {
			m.Sim.Seed = uint64(*s.Seed)
		}
	}
	if o := fm.OpenAI; o != nil {
		setS(&m.OpenAI.URL, o.URL)
		setS(&m.OpenAI.Model, o.Model)
		setS(&m.OpenAI.APIKeyEnv, o.APIKeyEnv)
		d.set(&m.OpenAI.Timeout, o.Timeout, at, "openai", "timeout")
		setI(&m.OpenAI.MaxConns, o.MaxConns)
	}
	// --- triton backend (issue 14) ---
	if tc := fm.Triton; tc != nil {
		setS(&m.Triton.URL, tc.URL)
		setS(&m.Triton.Model, tc.Model)
		setS(&m.Triton.Version, tc.Version)
		d.set(&m.Triton.Timeout, tc.Timeout, at, "triton", "timeout")
		setI(&m.Triton.MaxConns, tc.MaxConns)
		d.set(&m.Triton.HealthInterval, tc.HealthInterval, at, "triton", "health_interval")
	}
	// --- end triton backend ---
	if e := fm.Engine; e != nil {
		setS(&m.Engine.Checkpoint, e.Checkpoint)
		setS(&m.Engine.Tokenizer, e.Tokenizer)
		setS(&m.Engine.Quantize, e.Quantize)
		setI(&m.Engine.MaxSequences, e.MaxSequences)
		setI(&m.Engine.Threads, e.Threads)
		setI(&m.Engine.KVCacheMB, e.KVCacheMB)
		setI(&m.Engine.PrefixCache, e.PrefixCache)
	}
	return m
}

// DefaultModelConfig is a model block with nothing but its name and backend
// set.
func DefaultModelConfig(name, backend string) ModelConfig {
	s := DefaultSimConfig()
	s.Model = name
	return ModelConfig{
		Name:    name,
		Backend: backend,
		Sim:     s,
		OpenAI:  OpenAIConfig{Timeout: 60 * time.Second, MaxConns: 64},
		Engine:  EngineConfig{Quantize: "none", MaxSequences: 32, KVCacheMB: 256, PrefixCache: true},
		// --- triton backend (issue 14) ---
		Triton: TritonConfig{Timeout: 60 * time.Second, MaxConns: 64, HealthInterval: 5 * time.Second},
		// --- end triton backend ---
	}
}

// Env is how the node reads environment variables; tests pass a map.
type Env func(key string) (string, bool)

// ApplyEnv applies the seed guide's environment variables (and
// SHOAL_ADMIN_TOKEN, SHOAL_GOSSIP_KEY) over c. A malformed value is an error naming the
// variable.
func (c *Config) ApplyEnv(getenv Env) error {
	var errs []string
	intVar := func(key string, dst *int) {
		if v, ok := getenv(key); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: not an integer: %q", key, v))
				return
			}
			*dst = n
		}
	}
	durVar := func(key string, unit time.Duration, dst *time.Duration) {
		if v, ok := getenv(key); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			// NaN, Inf and values past ~292 years would convert to
			// garbage durations.
			if err != nil || !(n >= 0) || n*float64(unit) > math.MaxInt64 {
				errs = append(errs, fmt.Sprintf("%s: not a non-negative number: %q", key, v))
				return
			}
			*dst = time.Duration(n * float64(unit))
		}
	}
	intVar("BATCH_MAX_SIZE", &c.Batching.MaxSize)
	durVar("BATCH_FLUSH_TIMEOUT_MS", time.Millisecond, &c.Batching.FlushTimeout)
	if v, ok := getenv("CACHE_BACKEND"); ok {
		c.Cache.Backend = strings.ToLower(strings.TrimSpace(v))
		if c.Cache.Backend == "redis" {
			// The seed guide's Redis is replaced by the embedded Olric
			// cache: same sharing across nodes, nothing to run beside.
			c.Cache.Backend = "olric"
		}
	}
	durVar("CACHE_DEFAULT_TTL", time.Second, &c.Cache.DefaultTTL)
	intVar("RATE_LIMIT_RPM", &c.RateLimit.RPM)
	intVar("CIRCUIT_BREAKER_FAILURE_THRESHOLD", &c.CircuitBreaker.FailureThreshold)
	durVar("CIRCUIT_BREAKER_TIMEOUT_SEC", time.Second, &c.CircuitBreaker.Timeout)
	if v, ok := getenv("SHOAL_ADMIN_TOKEN"); ok {
		c.Admin.Token = v
	}
	if v, ok := getenv("SHOAL_GOSSIP_KEY"); ok {
		c.Gossip.EncryptKey = strings.TrimSpace(v)
	}
	if len(errs) > 0 {
		return &ConfigError{fmt.Errorf("environment: %s", strings.Join(errs, "; "))}
	}
	return nil
}
