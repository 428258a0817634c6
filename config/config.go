// Package config is the node's configuration: its defaults, the HCL file,
// environment variables, the target that command-line flags write into, and
// validation at load time, so a bad setting stops the start instead of
// failing requests later.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/gossip"
	"github.com/shoal-dev/shoal/ratelimit"
	"github.com/shoal-dev/shoal/respcache"
	"github.com/shoal-dev/shoal/router"
	"github.com/shoal-dev/shoal/scheduler"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

// MaxNearTTL bounds cache.near_ttl: a near answer outlives a purge only on
// a node cut off from Raft, and then for at most this long.
const MaxNearTTL = time.Minute

// Config is a node's resolved configuration: defaults, then the HCL file,
// then environment variables, then command-line flags. Every field is a
// plain value; LoadFile and ApplyEnv do the layering.
type Config struct {
	// NodeName identifies the node in gossip, Raft and responses
	// (X-Shoal-Node). Default: the host name.
	NodeName string
	// DataDir holds Raft's log and snapshots and generated models.
	DataDir string
	// Dev runs a complete single-node cluster with every default embedded
	// and data in a temporary directory.
	Dev bool
	// Join lists gossip addresses of existing members to join at start.
	Join []string
	// JoinTimeout bounds the retries of the start-up join.
	JoinTimeout time.Duration

	HTTP           HTTPConfig
	Gossip         GossipConfig
	Raft           RaftConfig
	Cache          CacheConfig
	Batching       BatchingConfig
	RateLimit      RateLimitConfig
	CircuitBreaker BreakerConfig
	Admin          AdminConfig
	Auth           AuthConfig
	Router         RouterConfig
	GPU            GPUConfig
	GC             GCConfig
	Models         []ModelConfig

	// Tuning holds knobs that tests use to speed the cluster up; the zero
	// value is the production behaviour.
	Tuning Tuning

	// Logger receives the node's structured logs; nil discards them.
	Logger *slog.Logger
	// HTTPListener, when set, is used instead of listening on HTTP.Addr
	// (tests hand in 127.0.0.1:0 listeners).
	HTTPListener net.Listener
	// RaftListener, when set, is used instead of listening on Raft.Addr.
	RaftListener net.Listener
}

// Tuning adjusts components beyond what the configuration file exposes.
type Tuning struct {
	// Raft, Gossip, Cache and Limiter may change the component configs just before
	// they start (tests tighten timings).
	Raft    func(*consensus.Config)
	Gossip  func(*gossip.Config)
	Cache   func(*dcache.Config)
	Limiter func(*ratelimit.Config)
	// Scheduler may change the scheduler's config before it is made (tests
	// shorten how long a measured batch cost counts).
	Scheduler func(*scheduler.Config)
	// LoadPublishInterval is how often the node checks its load for changes
	// to gossip (default 50ms).
	LoadPublishInterval time.Duration
	// GPUPollInterval is how often nvidia-smi is queried (default 10s).
	GPUPollInterval time.Duration
	// ReconcileHook, when set, runs before every membership reconcile
	// (tests block it to stand for a slow Raft membership change).
	ReconcileHook func()

	// CacheLockLease is the lease of the cross-node coalescing lock, renewed
	// while a node computes (default respcache.DefaultLockLease).
	CacheLockLease time.Duration
	// Backend, when set, sees each model's backend once it serves (tests
	// slow a sim backend down mid-run).
	Backend func(model string, backend any)
}

// GCConfig tunes the node process's garbage collector.
type GCConfig struct {
	// HeapFloorBytes keeps the collector's heap goal at or above this many
	// bytes while the live heap is small (a gateway node serving hits
	// keeps a few MiB live and would collect dozens of times a second);
	// once GOGC's own goal is larger it applies unchanged. 0 leaves the
	// collector to GOGC alone. GOMEMLIMIT, when set, still bounds the heap.
	HeapFloorBytes int64
}

// MinHeapFloor is the smallest gc.heap_floor_bytes: the runtime's own
// minimum heap goal.
const MinHeapFloor = 4 << 20

// MaxHeapFloor bounds gc.heap_floor_bytes.
const MaxHeapFloor = 1 << 40

// HTTPConfig is the client-facing server.
type HTTPConfig struct {
	Addr string
	// MaxBodyBytes bounds a request body, after decompression.
	MaxBodyBytes int64
	// ReadHeaderTimeout, ReadTimeout and IdleTimeout protect the server
	// from slow or idle clients.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration
	// RequestTimeout is the longest a request may take, queueing and
	// running; a client may ask for less with X-Shoal-Timeout.
	RequestTimeout time.Duration
	// DrainTimeout bounds how long SIGTERM waits for queued work.
	DrainTimeout time.Duration
}

// GossipConfig is memberlist's.
type GossipConfig struct {
	Addr      string
	Advertise string
	// EncryptKey is a base64 AES key (16, 24 or 32 bytes) as `consul
	// keygen` makes; empty disables gossip encryption.
	EncryptKey string
}

// RaftConfig is the consensus layer's.
type RaftConfig struct {
	Addr      string
	Advertise string
	// BootstrapExpect is how many servers must see each other before the
	// cluster bootstraps, once; 0 joins an existing cluster only.
	BootstrapExpect int
	// MaxVoters caps Raft voters; further nodes join as non-voters.
	MaxVoters int
	// DeadServerTimeout removes a failed node from Raft after this long.
	DeadServerTimeout time.Duration
}

// CacheConfig is the response cache's.
type CacheConfig struct {
	Addr string
	// MemberlistAddr is Olric's own gossip address (default: cache port+2).
	MemberlistAddr string
	// Backend is "olric", "local" or "off".
	Backend    string
	DefaultTTL time.Duration
	// MaxBytes bounds the local backend.
	MaxBytes int64
	// Lowercase folds prompts to lower case before keying; off by default
	// because it changes meaning for most models.
	Lowercase bool
	// LookupTimeout bounds a cache lookup so a slow cache never stalls a
	// request.
	LookupTimeout time.Duration
	// NearTTL is how long a node answers a hit it got from the shared
	// (olric) cache again from its own memory, without asking the key's
	// owner; never past the answer's own TTL, and a purge ends it on
	// every node. 0 turns the near cache off.
	NearTTL time.Duration

	// Scope partitions cached answers: "cluster" (everyone shares),
	// "tenant" (a key's tenant, or the key itself when it has none) or
	// "key"; "" means tenant while auth is required, else cluster.
	Scope string
}

// BatchingConfig is the default for every model; models may override.
type BatchingConfig struct {
	MaxSize      int
	FlushTimeout time.Duration
	MaxQueue     int
	// MaxConcurrentBatches is the number of batches a model runs at once;
	// 0 means the GPU count, or 1 on a CPU-only node.
	MaxConcurrentBatches int
}

// RateLimitConfig is the default per-client limit.
type RateLimitConfig struct {
	RPM int
}

// BreakerConfig is the circuit breakers'.
type BreakerConfig struct {
	FailureThreshold int
	Timeout          time.Duration
}

// AdminConfig protects /admin/v1.
type AdminConfig struct {
	Token string
}

// AuthConfig controls client API keys.
type AuthConfig struct {
	// Required rejects requests whose API key is unknown.
	Required bool
}

// RouterConfig picks the node that runs a request.
type RouterConfig struct {
	// Policy is "least-expected", "least-queued", "round-robin" or
	// "random".
	Policy string
	// PrefixWeight (0..1) is how much a full prompt-prefix hit discounts a
	// node's expected completion; 0 turns prefix-aware routing off.
	PrefixWeight float64
}

// GPUConfig declares capacity when nvidia-smi is absent.
type GPUConfig struct {
	Count    int
	MemoryMB int
}

// ModelConfig is one served model.
type ModelConfig struct {
	Name    string
	Backend string
	// MaxSize, FlushTimeout and MaxConcurrentBatches override the batching
	// block for this model when set (non-zero).
	MaxSize              int
	FlushTimeout         time.Duration
	MaxConcurrentBatches int

	Sim    sim.Config
	OpenAI OpenAIConfig
	Engine EngineConfig
	// --- triton backend (issue 14) ---
	Triton TritonConfig
	// --- end triton backend ---
}

// --- triton backend (issue 14) ---

// TritonConfig points at a model on a Triton Inference Server or another
// KServe v2 (Open Inference Protocol) server.
type TritonConfig struct {
	// URL is the server's base, e.g. http://127.0.0.1:8000.
	URL string
	// Model is the model name upstream (default: the block's label).
	Model string
	// Version is the upstream model version; empty lets the server choose.
	Version string
	// Timeout bounds one upstream call (for a stream, each event).
	Timeout time.Duration
	// MaxConns bounds pooled connections to the upstream.
	MaxConns int
	// HealthInterval is how often the upstream's /v2/health/ready and the
	// model's ready endpoint are checked.
	HealthInterval time.Duration
}

// --- end triton backend ---

// OpenAIConfig points at an OpenAI-compatible upstream server.
type OpenAIConfig struct {
	URL       string
	Model     string
	APIKeyEnv string
	Timeout   time.Duration
	// MaxConns bounds pooled connections to the upstream.
	MaxConns int
}

// EngineConfig is the embedded transformer runtime's.
type EngineConfig struct {
	Checkpoint   string
	Tokenizer    string
	Quantize     string
	MaxSequences int
	Threads      int
	KVCacheMB    int
	// PrefixCache keeps the KV cache of recent prompt prefixes for reuse.
	PrefixCache bool
}

// DefaultConfig is the configuration with nothing set.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "shoal"
	}
	return Config{
		NodeName:    host,
		DataDir:     "/var/lib/shoal",
		JoinTimeout: 2 * time.Minute,
		HTTP: HTTPConfig{
			Addr:              "0.0.0.0:8080",
			MaxBodyBytes:      1 << 20,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			RequestTimeout:    60 * time.Second,
			DrainTimeout:      30 * time.Second,
		},
		Gossip:         GossipConfig{Addr: "0.0.0.0:7946"},
		Raft:           RaftConfig{Addr: "0.0.0.0:7947", MaxVoters: 5, DeadServerTimeout: 5 * time.Minute},
		Cache:          CacheConfig{Addr: "0.0.0.0:3320", Backend: "olric", DefaultTTL: 2 * time.Hour, MaxBytes: 256 << 20, LookupTimeout: 50 * time.Millisecond, NearTTL: time.Second},
		GC:             GCConfig{HeapFloorBytes: 64 << 20},
		Batching:       BatchingConfig{MaxSize: 64, FlushTimeout: 10 * time.Millisecond, MaxQueue: 1000},
		RateLimit:      RateLimitConfig{RPM: 1000},
		CircuitBreaker: BreakerConfig{FailureThreshold: 3, Timeout: 30 * time.Second},
		Router:         RouterConfig{Policy: "least-expected", PrefixWeight: router.DefaultPrefixWeight},
	}
}

// DevModels are what --dev serves when no model is configured: the
// embedded engine's built-in model and a sim model.
func DevModels() []ModelConfig {
	return []ModelConfig{DefaultModelConfig("tiny", "engine"), DefaultModelConfig("sim-fast", "sim")}
}

// DevRPM is the default per-client limit of a dev node: high enough that
// the README's `shoal bench` runs (1000 requests, twice a minute) pass,
// low enough that the limiter still runs.
const DevRPM = 100_000

// ApplyDev turns cfg into a dev node: temporary data, every port on
// loopback (HTTP too: the dev admin API is open, as consul agent -dev binds
// 127.0.0.1), one-node bootstrap, the local cache, a per-client limit of
// DevRPM, and the dev models unless models are configured. A config file,
// the environment or flags applied after it still win.
func (c *Config) ApplyDev() error {
	c.Dev = true
	c.HTTP.Addr = "127.0.0.1:8080"
	c.RateLimit.RPM = DevRPM
	dir, err := os.MkdirTemp("", "shoal-dev-")
	if err != nil {
		return fmt.Errorf("dev data dir: %w", err)
	}
	c.DataDir = dir
	c.Raft.BootstrapExpect = 1
	c.Gossip.Addr = "127.0.0.1:7946"
	c.Raft.Addr = "127.0.0.1:7947"
	c.Cache.Addr = "127.0.0.1:3320"
	c.Cache.Backend = "local"
	if len(c.Models) == 0 {
		c.Models = DevModels()
	}
	return nil
}

// Validate checks everything at load time, so a bad setting stops the start
// instead of failing requests later. Errors name the setting.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.NodeName == "" || strings.ContainsAny(c.NodeName, " /\t\n") || len(c.NodeName) > 64 {
		bad("node_name", "must be 1-64 characters without spaces or slashes, got %q", c.NodeName)
	}
	if c.DataDir == "" {
		bad("data_dir", "must be set")
	}
	for key, addr := range map[string]string{"http.addr": c.HTTP.Addr, "gossip.addr": c.Gossip.Addr, "raft.addr": c.Raft.Addr, "cache.addr": c.Cache.Addr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "must be host:port, got %q", addr)
		}
	}
	if f := c.GC.HeapFloorBytes; f != 0 && (f < MinHeapFloor || f > MaxHeapFloor) {
		bad("gc.heap_floor_bytes", "must be 0 (off) or between %d and %d, got %d", MinHeapFloor, int64(MaxHeapFloor), f)
	}
	if c.Cache.NearTTL < 0 || c.Cache.NearTTL > MaxNearTTL {
		bad("cache.near_ttl", "must be between 0s and %s, got %s", MaxNearTTL, c.Cache.NearTTL)
	}
	if c.HTTP.MaxBodyBytes < 1024 || c.HTTP.MaxBodyBytes > 1<<30 {
		bad("http.max_body_bytes", "must be between 1024 and 1073741824, got %d", c.HTTP.MaxBodyBytes)
	}
	for key, d := range map[string]time.Duration{
		"http.read_header_timeout": c.HTTP.ReadHeaderTimeout, "http.read_timeout": c.HTTP.ReadTimeout,
		"http.idle_timeout": c.HTTP.IdleTimeout, "http.request_timeout": c.HTTP.RequestTimeout,
		"http.drain_timeout": c.HTTP.DrainTimeout, "circuit_breaker.timeout": c.CircuitBreaker.Timeout,
		"cache.lookup_timeout": c.Cache.LookupTimeout, "raft.dead_server_timeout": c.Raft.DeadServerTimeout,
	} {
		if d <= 0 {
			bad(key, "must be a positive duration, got %s", d)
		}
	}
	if c.Gossip.EncryptKey != "" {
		if k, err := c.ClusterKey(); err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
			bad("gossip.encrypt_key", "must be a base64 AES key of 16, 24 or 32 bytes")
		}
	}
	if c.Raft.BootstrapExpect < 0 || c.Raft.BootstrapExpect > 9 {
		bad("raft.bootstrap_expect", "must be between 0 and 9, got %d", c.Raft.BootstrapExpect)
	}
	if c.Raft.MaxVoters < 1 || c.Raft.MaxVoters > 9 {
		bad("raft.max_voters", "must be between 1 and 9, got %d", c.Raft.MaxVoters)
	}
	switch c.Cache.Backend {
	case "olric", "local", "off":
	default:
		bad("cache.backend", `must be "olric", "local" or "off", got %q`, c.Cache.Backend)
	}
	switch c.Cache.Scope {
	case "", respcache.ScopeCluster, respcache.ScopeTenant, respcache.ScopeKey:
	default:
		bad("cache.scope", `must be "cluster", "tenant" or "key" (or empty for tenant when auth is required, else cluster), got %q`, c.Cache.Scope)
	}
	if c.Cache.DefaultTTL < time.Second {
		bad("cache.default_ttl", "must be at least 1s, got %s", c.Cache.DefaultTTL)
	}
	if c.Cache.MaxBytes < 1<<20 {
		bad("cache.max_bytes", "must be at least 1048576, got %d", c.Cache.MaxBytes)
	}
	if c.Batching.MaxSize < 1 || c.Batching.MaxSize > 4096 {
		bad("batching.max_size", "must be between 1 and 4096, got %d", c.Batching.MaxSize)
	}
	if c.Batching.FlushTimeout < 0 || c.Batching.FlushTimeout > time.Minute {
		bad("batching.flush_timeout", "must be between 0s and 1m, got %s", c.Batching.FlushTimeout)
	}
	if c.Batching.MaxQueue < 1 || c.Batching.MaxQueue > 1_000_000 {
		bad("batching.max_queue", "must be between 1 and 1000000, got %d", c.Batching.MaxQueue)
	}
	if c.Batching.MaxConcurrentBatches < 0 || c.Batching.MaxConcurrentBatches > 1024 {
		bad("batching.max_concurrent_batches", "must be between 0 and 1024, got %d", c.Batching.MaxConcurrentBatches)
	}
	if c.RateLimit.RPM < 0 {
		bad("rate_limit.rpm", "must not be negative, got %d", c.RateLimit.RPM)
	}
	if c.CircuitBreaker.FailureThreshold < 1 || c.CircuitBreaker.FailureThreshold > 1000 {
		bad("circuit_breaker.failure_threshold", "must be between 1 and 1000, got %d", c.CircuitBreaker.FailureThreshold)
	}
	switch c.Router.Policy {
	case router.PolicyLeastExpected, router.PolicyLeastQueued, router.PolicyRoundRobin, router.PolicyRandom:
	default:
		bad("router.policy", `must be "least-expected", "least-queued", "round-robin" or "random", got %q`, c.Router.Policy)
	}
	if c.Router.PrefixWeight < 0 || c.Router.PrefixWeight > 1 {
		bad("router.prefix_weight", "must be between 0 and 1, got %g", c.Router.PrefixWeight)
	}
	if c.GPU.Count < 0 || c.GPU.MemoryMB < 0 {
		bad("gpu", "count and memory_mb must not be negative")
	}
	if len(c.Models) == 0 {
		bad("model", "at least one model block is required (or run with --dev)")
	}
	seen := map[string]bool{}
	for _, m := range c.Models {
		key := fmt.Sprintf("model %q", m.Name)
		if m.Name == "" || len(m.Name) > 128 || strings.ContainsAny(m.Name, " /\t\n") {
			bad(key, "name must be 1-128 characters without spaces or slashes")
		}
		if seen[m.Name] {
			bad(key, "defined twice")
		}
		seen[m.Name] = true
		if m.MaxSize < 0 || m.MaxSize > 4096 {
			bad(key+".max_size", "must be between 1 and 4096, got %d", m.MaxSize)
		}
		if m.FlushTimeout < 0 || m.FlushTimeout > time.Minute {
			bad(key+".flush_timeout", "must be between 0s and 1m, got %s", m.FlushTimeout)
		}
		if m.MaxConcurrentBatches < 0 || m.MaxConcurrentBatches > 1024 {
			bad(key+".max_concurrent_batches", "must be between 0 and 1024, got %d", m.MaxConcurrentBatches)
		}
		switch m.Backend {
		case "sim":
			if err := m.Sim.Validate(); err != nil {
				bad(key+".sim", "%v", err)
			}
		case "openai":
			if !strings.HasPrefix(m.OpenAI.URL, "http://") && !strings.HasPrefix(m.OpenAI.URL, "https://") {
				bad(key+".openai.url", "must be an http(s) URL, got %q", m.OpenAI.URL)
			}
			if m.OpenAI.Timeout <= 0 {
				bad(key+".openai.timeout", "must be a positive duration")
			}
			if m.OpenAI.MaxConns < 1 {
				bad(key+".openai.max_conns", "must be at least 1")
			}
		// --- triton backend (issue 14) ---
		case "triton":
			tc := m.Triton
			if !strings.HasPrefix(tc.URL, "http://") && !strings.HasPrefix(tc.URL, "https://") {
				bad(key+".triton.url", "must be an http(s) URL, got %q", tc.URL)
			}
			if strings.Contains(tc.Version, "/") {
				bad(key+".triton.version", "must not contain '/', got %q", tc.Version)
			}
			if tc.Timeout <= 0 {
				bad(key+".triton.timeout", "must be a positive duration")
			}
			if tc.MaxConns < 1 {
				bad(key+".triton.max_conns", "must be at least 1")
			}
			if tc.HealthInterval < 100*time.Millisecond {
				bad(key+".triton.health_interval", "must be at least 100ms, got %s", tc.HealthInterval)
			}
		// --- end triton backend ---
		case "engine":
			e := m.Engine
			if e.Quantize != "none" && e.Quantize != "int8" {
				bad(key+".engine.quantize", `must be "none" or "int8", got %q`, e.Quantize)
			}
			gguf := strings.HasSuffix(strings.ToLower(e.Checkpoint), ".gguf")
			if (e.Checkpoint == "" && e.Tokenizer != "") || (e.Checkpoint != "" && e.Tokenizer == "" && !gguf) {
				bad(key+".engine", "checkpoint and tokenizer must be set together (a .gguf checkpoint carries its own vocabulary; neither means the built-in model)")
			}
			if e.MaxSequences < 1 || e.MaxSequences > 1024 {
				bad(key+".engine.max_sequences", "must be between 1 and 1024, got %d", e.MaxSequences)
			}
			if e.Threads < 0 || e.KVCacheMB < 0 {
				bad(key+".engine", "threads and kv_cache_mb must not be negative")
			}
		default:
			bad(key+".backend", `must be "sim", "openai", "triton" or "engine", got %q`, m.Backend)
		}
	}
	return errors.Join(errs...)
}

// ModelBatching resolves a model's batching settings from the defaults and
// its overrides.
func (c *Config) ModelBatching(m ModelConfig, gpus int) (maxSize int, flush time.Duration, slots int) {
	maxSize, flush, slots = c.Batching.MaxSize, c.Batching.FlushTimeout, c.Batching.MaxConcurrentBatches
	if m.MaxSize > 0 {
		maxSize = m.MaxSize
	}
	if m.FlushTimeout > 0 {
		flush = m.FlushTimeout
	}
	if m.MaxConcurrentBatches > 0 {
		slots = m.MaxConcurrentBatches
	}
	if slots == 0 {
		slots = max(1, gpus)
	}
	return maxSize, flush, slots
}

// DefaultSimConfig is the sim backend's defaults.
func DefaultSimConfig() sim.Config { return sim.DefaultConfig() }

// ClusterKey is gossip.encrypt_key decoded: the cluster's shared secret,
// which also keys Raft's TLS and the cache's encryption and password. Nil
// when none is configured.
func (c *Config) ClusterKey() ([]byte, error) {
	if c.Gossip.EncryptKey == "" {
		return nil, nil
	}
	k, err := base64.StdEncoding.DecodeString(c.Gossip.EncryptKey)
	if err != nil {
		return nil, &ConfigError{fmt.Errorf("gossip.encrypt_key: %w", err)}
	}
	return k, nil
}
