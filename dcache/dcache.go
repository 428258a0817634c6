// Package dcache is shoal's response cache and its store of shared counters and short locks.
//
// One Cache fronts one of three backends, chosen by Config.Backend:
//
//   - "olric": an embedded Olric member. Every shoal node runs one; together they form one
//     Olric cluster whose peers come from shoal's own membership (Config.Peers). Values, counters
//     and locks are cluster-wide.
//   - "local": an in-process LRU bounded in bytes, with TTLs, for a single node.
//   - "off": the response cache is disabled (every Get misses, every Set is dropped); counters
//     and locks still work, within this process.
//
// Keys are opaque: the node hashes and normalizes requests; dcache stores bytes under
// (namespace, key). A namespace is typically a model name; Purge drops one namespace or all.
//
// Every call is bounded in time. On the olric backend a Get, Lock or release that gets no answer
// within Config.LookupTimeout returns ErrUnavailable and the cache reports itself degraded, so a
// slow, frozen or unreachable member never stalls a request: the caller serves it uncached.
// SetAsync takes stores off the request path through a bounded queue.
package dcache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Backend names accepted in Config.Backend.
const (
	BackendOlric = "olric"
	BackendLocal = "local"
	BackendOff   = "off"
)

// Health statuses reported by Cache.Health.
const (
	StatusOK       = "ok"
	StatusDegraded = "degraded"
	StatusOff      = "off"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultBindAddr       = "0.0.0.0:3320"
	DefaultPartitionCount = 71
	DefaultReplicaCount   = 1
	DefaultMaxBytes       = 256 << 20
	DefaultMaxValueBytes  = 256 << 10
	DefaultLookupTimeout  = 50 * time.Millisecond
	DefaultOpTimeout      = 250 * time.Millisecond
	DefaultJoinTimeout    = 10 * time.Second
	DefaultStartTimeout   = 30 * time.Second
	DefaultHealthWindow   = 10 * time.Second
	DefaultWriteQueue     = 1024
	DefaultWriters        = 4
	// memberlistPortOffset places Olric's memberlist next to its protocol port (3320 -> 3322),
	// as Olric's own defaults do.
	memberlistPortOffset = 2
	// MaxKeyLen is the longest key accepted; Olric's storage refuses keys of 256 bytes or more.
	MaxKeyLen = 255
	// MaxNamespaceLen is the longest namespace accepted.
	MaxNamespaceLen = 128
)

var (
	// ErrUnavailable means the backend did not answer in time or could not be reached. The
	// caller should carry on without the cache; Health reports degraded meanwhile.
	ErrUnavailable = errors.New("cache unavailable")
	// ErrLocked is returned by Lock when another holder has the lock.
	ErrLocked = errors.New("lock held by another holder")
	// ErrNotLocked is returned by an unlock func when the lease already ran out (or the lock
	// was taken over after it ran out).
	ErrNotLocked = errors.New("lock not held")
	// ErrTooLarge is returned by Set for a value over Config.MaxValueBytes.
	ErrTooLarge = errors.New("value too large")
	// ErrInvalidKey is returned for an empty or over-long namespace or key.
	ErrInvalidKey = errors.New("invalid namespace or key")
	// ErrNotStarted is returned (wrapped in ErrUnavailable) by an olric Cache used before Start.
	ErrNotStarted = errors.New("cache not started")
	// ErrClosed is returned by every call after Close.
	ErrClosed = errors.New("cache closed")
	// ErrQueueFull is returned by SetAsync when WriteQueue writes already wait: the write is
	// dropped (Stats.Dropped), which costs at most a future hit.
	ErrQueueFull = errors.New("cache write queue full")

	// errNoPeersYet makes Olric retry its join: membership has not listed any peer yet.
	errNoPeersYet = errors.New("membership lists no cache peers yet")
)

// Config configures a Cache. Zero fields take the defaults above.
type Config struct {
	// Backend is "olric", "local" or "off". Empty means "local".
	Backend string

	// BindAddr is the Olric protocol address (cache.addr), host:port. Default 0.0.0.0:3320.
	// Olric advertises the address it binds, so a wildcard host resolves to this machine's
	// private IP. Port 0 picks a free port; read it back with Addr.
	BindAddr string

	// MemberlistAddr is where Olric's own memberlist listens, host:port. Default: BindAddr's
	// host with BindAddr's port + 2 (3322), or port 0 when BindAddr's port is 0. Port 0 picks a
	// free port; read it back with MemberlistAddr, and publish it in shoal's membership so other
	// nodes' Peers return it.
	MemberlistAddr string

	// Peers returns the Olric memberlist addresses of the other nodes, from shoal's membership.
	// It is Olric's peer discovery: called on each join attempt (and by Health, to compare
	// membership with Olric's view), so it may change between calls; it must be cheap and safe
	// for concurrent use. Entries equal to this node's own address are ignored. Nil: no peers.
	Peers func() []string

	// WaitForPeers makes Start treat an empty Peers list as "membership not converged yet" and
	// keep asking for up to JoinTimeout before forming a cluster alone. Set it on nodes that
	// were given seed addresses; leave it off on the first (or only) node.
	WaitForPeers bool

	// JoinTimeout bounds how long Start retries joining the peers before it forms a new cluster
	// alone. Default 10s.
	JoinTimeout time.Duration

	// StartTimeout bounds Start as a whole: join, bootstrap and retries of a failed start.
	// Default 30s.
	StartTimeout time.Duration

	// Network picks memberlist timing presets: "lan" (default), "wan", or "local" (loopback:
	// fast probes and join retries, for tests and single-host clusters).
	Network string

	// ReplicaCount is how many members hold each entry (1 = no backup). Default 1: an entry or
	// counter owned by a member that dies is lost, which a cache tolerates.
	ReplicaCount int

	// PartitionCount is Olric's partition count (a prime). Default 71, plenty for tens of
	// nodes: Olric allocates a storage table per (DMap, partition) a member owns, and probes
	// owners partition by partition when the routing table changes, so fewer is cheaper.
	PartitionCount uint64

	// MinMembers is Olric's member-count quorum: with fewer members visible, this member
	// refuses all operations (ErrUnavailable) rather than serve a split-off fraction of the
	// cluster. Default 1 (always serve). Set a majority to stop a partitioned minority from
	// counting rate limits on its own.
	MinMembers int

	// MaxBytes bounds the local backend's memory (keys, values and bookkeeping). On olric it is
	// each namespace's bound on each member (Olric's MaxInuse with approximate LRU eviction).
	// Default 256 MiB.
	MaxBytes int64

	// MaxValueBytes is the largest value Set accepts; larger responses are not cached
	// (ErrTooLarge). On olric it also sizes Olric's storage tables, which are allocated whole, per
	// namespace and partition. Default 256 KiB.
	MaxValueBytes int

	// LookupTimeout bounds every call made on a request's path: Get, Lock and unlock.
	// Default 50ms.
	LookupTimeout time.Duration

	// OpTimeout bounds Set (also when queued by SetAsync), Delete and Incr. Default 250ms.
	OpTimeout time.Duration

	// WriteQueue bounds the writes SetAsync may hold waiting; beyond it they are dropped.
	// Default 1024.
	WriteQueue int

	// Writers is how many goroutines run queued writes. Default 4.
	Writers int

	// HealthWindow is how long Health stays degraded after the last unavailable answer.
	// Default 10s.
	HealthWindow time.Duration

	// EncryptKey, when set, is an AES key (16, 24 or 32 bytes) that encrypts and authenticates
	// Olric's memberlist traffic, as shoal's gossip key does for its own: a member with another
	// key cannot join.
	EncryptKey []byte

	// Password, when set, is required of every connection to the Olric protocol port (Olric's
	// AUTH): members, this node's clients, and anyone else who can reach the port. Without it
	// anyone on the network can read and write the cache and the rate-limit counters.
	Password string

	// Namespaces, when set, says which namespaces responses and locks may use (the node passes
	// "is this model served anywhere"). Namespaces come from clients (model names), and every
	// distinct one costs state that Olric keeps until it is purged: a DMap on each member it
	// touches, and storage tables on the first write. A call naming another namespace never
	// reaches the backend: Get misses, Set and Delete do nothing, Lock returns ErrInvalidKey.
	// Counters (Incr) and Purge are not filtered: counter namespaces are the caller's own, and
	// an operator must be able to purge a model that is no longer served. It is called on every
	// such call, concurrently: it must be cheap and must not block. Nil: every namespace.
	Namespaces func(ns string) bool

	// Logger receives the cache's logs, Olric's and memberlist's included (their warnings and
	// errors at Warn, the rest at Debug). Nil discards.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults with the olric backend, the cluster default.
func DefaultConfig() Config {
	return Config{
		Backend:        BackendOlric,
		BindAddr:       DefaultBindAddr,
		JoinTimeout:    DefaultJoinTimeout,
		StartTimeout:   DefaultStartTimeout,
		Network:        "lan",
		ReplicaCount:   DefaultReplicaCount,
		PartitionCount: DefaultPartitionCount,
		MinMembers:     1,
		MaxBytes:       DefaultMaxBytes,
		MaxValueBytes:  DefaultMaxValueBytes,
		LookupTimeout:  DefaultLookupTimeout,
		OpTimeout:      DefaultOpTimeout,
		HealthWindow:   DefaultHealthWindow,
		WriteQueue:     DefaultWriteQueue,
		Writers:        DefaultWriters,
	}
}

// resolve fills defaults and validates.
func (c Config) resolve() (Config, error) {
	d := DefaultConfig()
	if c.Backend == "" {
		c.Backend = BackendLocal
	}
	switch c.Backend {
	case BackendOlric, BackendLocal, BackendOff:
	default:
		return c, fmt.Errorf("backend %q: want olric, local or off", c.Backend)
	}
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = d.JoinTimeout
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = d.StartTimeout
	}
	if c.Network == "" {
		c.Network = d.Network
	}
	if c.ReplicaCount == 0 {
		c.ReplicaCount = d.ReplicaCount
	}
	if c.PartitionCount == 0 {
		c.PartitionCount = d.PartitionCount
	}
	if c.MinMembers == 0 {
		c.MinMembers = d.MinMembers
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = d.MaxBytes
	}
	if c.MaxValueBytes == 0 {
		c.MaxValueBytes = d.MaxValueBytes
	}
	if c.LookupTimeout == 0 {
		c.LookupTimeout = d.LookupTimeout
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = d.OpTimeout
	}
	if c.HealthWindow == 0 {
		c.HealthWindow = d.HealthWindow
	}
	if c.WriteQueue == 0 {
		c.WriteQueue = d.WriteQueue
	}
	if c.Writers == 0 {
		c.Writers = d.Writers
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}

	switch {
	case c.JoinTimeout < 0, c.StartTimeout < 0, c.LookupTimeout < 0, c.OpTimeout < 0, c.HealthWindow < 0:
		return c, errors.New("timeouts must not be negative")
	case c.WriteQueue < 0, c.Writers < 0:
		return c, fmt.Errorf("write queue %d and writers %d must not be negative", c.WriteQueue, c.Writers)
	case c.ReplicaCount < 1:
		return c, fmt.Errorf("replica count %d: must be at least 1", c.ReplicaCount)
	case c.MinMembers < 1:
		return c, fmt.Errorf("min members %d: must be at least 1", c.MinMembers)
	case c.MaxBytes < 0:
		return c, fmt.Errorf("max bytes %d: must not be negative", c.MaxBytes)
	case c.MaxValueBytes < 0:
		return c, fmt.Errorf("max value bytes %d: must not be negative", c.MaxValueBytes)
	case int64(c.MaxValueBytes) > c.MaxBytes:
		return c, fmt.Errorf("max value bytes %d exceeds max bytes %d", c.MaxValueBytes, c.MaxBytes)
	case len(c.EncryptKey) != 0 && len(c.EncryptKey) != 16 && len(c.EncryptKey) != 24 && len(c.EncryptKey) != 32:
		return c, fmt.Errorf("encrypt key of %d bytes: want 16, 24 or 32", len(c.EncryptKey))
	case c.Password != strings.TrimSpace(c.Password):
		// Olric trims the members' copy but not its clients'.
		return c, errors.New("password must not start or end with white space")
	}
	switch c.Network {
	case "lan", "wan", "local":
	default:
		return c, fmt.Errorf("network %q: want lan, wan or local", c.Network)
	}
	host, port, err := splitHostPort(c.BindAddr)
	if err != nil {
		return c, fmt.Errorf("bind addr: %w", err)
	}
	if c.MemberlistAddr == "" {
		mport := 0
		if port != 0 {
			mport = port + memberlistPortOffset
		}
		c.MemberlistAddr = net.JoinHostPort(host, strconv.Itoa(mport))
	}
	if _, _, err := splitHostPort(c.MemberlistAddr); err != nil {
		return c, fmt.Errorf("memberlist addr: %w", err)
	}
	return c, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	if host == "" {
		host = "0.0.0.0"
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%q: host must be an IP address", addr)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535-memberlistPortOffset {
		return "", 0, fmt.Errorf("%q: bad port", addr)
	}
	return host, port, nil
}

// store is what a backend provides. Implementations bound their own blocking and wrap
// ErrUnavailable around failures of the underlying system.
type store interface {
	start(ctx context.Context) error
	get(ctx context.Context, ns, key string) ([]byte, bool, error)
	set(ctx context.Context, ns, key string, val []byte, ttl time.Duration) error
	del(ctx context.Context, ns, key string) error
	purge(ctx context.Context, ns string) error
	incr(ctx context.Context, ns, key string, delta int, ttl time.Duration) (int, error)
	lock(ctx context.Context, ns, key string, lease time.Duration) (held, error)
	members() int
	// shared reports whether this member saw a peer at its last look (cheap: no call).
	shared() bool
	// expected is how many members the cluster should have by shoal's membership (0: unknown).
	expected() int
	usage() (entries, bytes int64)
	close(ctx context.Context) error
}

// Stats are the cache's counters since New. Entries and Bytes are known on the local backend
// only (zero otherwise).
type Stats struct {
	Backend  string
	Hits     int64
	Misses   int64
	Sets     int64
	Deletes  int64
	Purges   int64
	Incrs    int64
	Errors   int64 // failed calls, timeouts included (ErrLocked is not a failure)
	Timeouts int64 // calls that got no answer within their bound
	Entries  int64
	Bytes    int64
	Members  int
	// Queued is how many SetAsync writes wait now; Dropped counts those refused because the
	// queue was full.
	Queued  int
	Dropped int64
	// FastFails counts olric calls refused at once because their key's owner left a call
	// unanswered moments before (a frozen or overloaded peer).
	FastFails int64
	// Restarts counts olric members replaced by fresh ones after they had started.
	Restarts int64
}

// Health is the cache's state for /health.
type Health struct {
	// Status is "ok", "degraded" (recent failures, not started, closed, or fewer Olric members
	// than shoal's membership lists) or "off".
	Status  string
	Detail  string
	Members int
	// Since is when the current degradation began; zero when ok or off.
	Since time.Time
	// Restarts counts olric members replaced by fresh ones after they had started.
	Restarts int64
}

// Cache is the response cache and shared-counter store. Its methods are safe for concurrent use.
type Cache struct {
	cfg     Config
	log     *slog.Logger
	st      store
	started atomic.Bool
	closed  atomic.Bool

	hits, misses, sets, deletes, purges, incrs, errs, timeouts, dropped atomic.Int64

	// writes feeds the SetAsync writers; stopWrites ends them on Close.
	writes     chan asyncWrite
	stopWrites chan struct{}
	writers    sync.WaitGroup

	// lastFail is the UnixNano of the last unavailable answer; 0 when none. failSince is when
	// the current run of failures began.
	lastFail  atomic.Int64
	failSince atomic.Int64
	created   time.Time
	failMu    sync.Mutex
	failMsg   string
}

// New validates cfg and prepares the backend. For olric it binds the memberlist listeners and
// reserves the protocol port, so MemberlistAddr can be published in shoal's membership before
// Start joins the cluster; local and off are ready at once.
func New(cfg Config) (*Cache, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, fmt.Errorf("dcache config: %w", err)
	}
	c := &Cache{cfg: cfg, log: cfg.Logger.With("component", "dcache", "backend", cfg.Backend), created: time.Now()}
	switch cfg.Backend {
	case BackendOlric:
		o, err := newOlricStore(cfg, c.log)
		if err != nil {
			return nil, err
		}
		c.st = o
	case BackendLocal:
		c.st = newLocalStore(cfg.MaxBytes, true)
		c.started.Store(true)
	case BackendOff:
		c.st = newLocalStore(0, false)
		c.started.Store(true)
	}
	c.writes = make(chan asyncWrite, cfg.WriteQueue)
	c.stopWrites = make(chan struct{})
	for range max(cfg.Writers, 1) {
		c.writers.Add(1)
		go c.runWrites()
	}
	return c, nil
}

// asyncWrite is one queued SetAsync.
type asyncWrite struct {
	ns, key string
	val     []byte
	ttl     time.Duration
	done    func(error)
}

// SetAsync queues Set(ns, key, val, ttl) to run off the caller's path, bounded by OpTimeout,
// and returns at once: a request never waits on a cache write, however slow the member that
// owns the key. The cache takes val as is: the caller must not modify it afterwards. When
// WriteQueue writes already wait, the write is dropped and SetAsync returns ErrQueueFull
// (counted in Stats.Dropped). done, when not nil, runs after a queued write with its result,
// on a writer goroutine, and is not called when SetAsync returns an error.
func (c *Cache) SetAsync(ns, key string, val []byte, ttl time.Duration, done func(error)) error {
	if err := c.check(ns, key); err != nil {
		return err
	}
	if len(val) > c.cfg.MaxValueBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(val), c.cfg.MaxValueBytes)
	}
	select {
	case c.writes <- asyncWrite{ns: ns, key: key, val: val, ttl: ttl, done: done}:
		return nil
	default:
		if c.dropped.Add(1) == 1 {
			c.log.Warn("cache write queue full; dropping writes", "queue", c.cfg.WriteQueue)
		}
		return fmt.Errorf("set %s/%s: %w (%d waiting)", ns, key, ErrQueueFull, c.cfg.WriteQueue)
	}
}

// runWrites runs queued writes until Close; writes still queued then are dropped.
func (c *Cache) runWrites() {
	defer c.writers.Done()
	for {
		select {
		case <-c.stopWrites:
			return
		case w := <-c.writes:
			// No deadline of its own: every store bounds its set by
			// OpTimeout already (the olric call leaves at it whatever
			// Olric does; the local store never blocks), and a second
			// timer per stored answer was a tenth of the write's
			// allocations.
			err := c.Set(context.Background(), w.ns, w.key, w.val, w.ttl)
			if w.done != nil {
				w.done(err)
			}
		}
	}
}

// Start brings the backend up. For olric it starts a supervisor that runs the embedded member:
// it joins the peers that Config.Peers returns, starts a fresh member (backoff, same ports)
// whenever Olric fails a start whatever the error, and replaces a member that stops or stays
// split off from the members shoal lists, until Close. Start waits (bounded by ctx and
// StartTimeout) for the first member; if none is up by then it returns an error wrapping
// ErrUnavailable while the supervisor keeps trying, and Health says degraded meanwhile.
// For local and off it does nothing. Start may be called once.
func (c *Cache) Start(ctx context.Context) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if c.started.Load() {
		return nil
	}
	if err := c.st.start(ctx); err != nil {
		if errors.Is(err, ErrUnavailable) {
			// The olric member keeps trying in the background; Health tells how it goes.
			c.started.Store(true)
		}
		return err
	}
	c.started.Store(true)
	return nil
}

// Addr is the Olric protocol address this member advertises (empty for local and off).
func (c *Cache) Addr() string {
	if o, ok := c.st.(*olricStore); ok {
		return o.addr()
	}
	return ""
}

// MemberlistAddr is the Olric memberlist address other nodes must list in their Peers (empty
// for local and off). It is known from New on.
func (c *Cache) MemberlistAddr() string {
	if o, ok := c.st.(*olricStore); ok {
		return o.mlAddr
	}
	return ""
}

// Backend is the configured backend name.
func (c *Cache) Backend() string { return c.cfg.Backend }

// Shared reports whether other nodes see this cache's counters, locks and entries: true for
// olric only. Rate limits counted in a cache that is not shared are per node.
func (c *Cache) Shared() bool { return c.cfg.Backend == BackendOlric }

func (c *Cache) check(ns, key string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if ns == "" || len(ns) > MaxNamespaceLen || key == "" || len(key) > MaxKeyLen {
		return fmt.Errorf("%w: namespace %d bytes, key %d bytes", ErrInvalidKey, len(ns), len(key))
	}
	return nil
}

// allowed reports whether Config.Namespaces admits the response or lock namespace ns.
func (c *Cache) allowed(ns string) bool {
	return c.cfg.Namespaces == nil || c.cfg.Namespaces(ns)
}

// Get returns the value stored under (ns, key) and whether there was one. It answers within
// LookupTimeout: a backend that does not answer in time yields ErrUnavailable, which the caller
// treats as a miss. The returned slice belongs to the caller.
func (c *Cache) Get(ctx context.Context, ns, key string) ([]byte, bool, error) {
	if err := c.check(ns, key); err != nil {
		return nil, false, err
	}
	if !c.allowed(ns) {
		c.misses.Add(1)
		return nil, false, nil
	}
	v, ok, err := c.st.get(ctx, ns, key)
	if err != nil {
		c.fail(err)
		return nil, false, err
	}
	c.ok()
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return v, ok, nil
}

// Set stores val under (ns, key) for ttl (ttl <= 0: until evicted). The cache keeps its own
// copy of val. On the off backend the write is dropped.
func (c *Cache) Set(ctx context.Context, ns, key string, val []byte, ttl time.Duration) error {
	if err := c.check(ns, key); err != nil {
		return err
	}
	if len(val) > c.cfg.MaxValueBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(val), c.cfg.MaxValueBytes)
	}
	if !c.allowed(ns) {
		return nil
	}
	if err := c.st.set(ctx, ns, key, val, ttl); err != nil {
		c.fail(err)
		return err
	}
	c.ok()
	c.sets.Add(1)
	return nil
}

// Delete removes (ns, key); deleting a missing key is not an error.
func (c *Cache) Delete(ctx context.Context, ns, key string) error {
	if err := c.check(ns, key); err != nil {
		return err
	}
	if !c.allowed(ns) {
		return nil
	}
	if err := c.st.del(ctx, ns, key); err != nil {
		c.fail(err)
		return err
	}
	c.ok()
	c.deletes.Add(1)
	return nil
}

// Purge drops every cached response in namespace ns, or in every namespace when ns is "".
// Counters and locks are not touched. On olric it reaches every member.
func (c *Cache) Purge(ctx context.Context, ns string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if len(ns) > MaxNamespaceLen {
		return fmt.Errorf("%w: namespace %d bytes", ErrInvalidKey, len(ns))
	}
	if err := c.st.purge(ctx, ns); err != nil {
		c.fail(err)
		return err
	}
	c.ok()
	c.purges.Add(1)
	return nil
}

// Incr atomically adds delta to the counter (ns, key) and returns the new value. A counter
// that does not exist starts at 0 and, when ttl > 0, expires ttl after its creation (later
// increments do not extend it). On olric the counter is cluster-wide: every member's
// increments are applied by the counter's owner, one at a time.
func (c *Cache) Incr(ctx context.Context, ns, key string, delta int, ttl time.Duration) (int, error) {
	if err := c.check(ns, key); err != nil {
		return 0, err
	}
	v, err := c.st.incr(ctx, ns, key, delta, ttl)
	if err != nil {
		c.fail(err)
		return 0, err
	}
	c.ok()
	c.incrs.Add(1)
	return v, nil
}

// held is a lock this member holds: unlock releases it, renew extends its
// lease to the given duration from now. Both return ErrNotLocked once the
// lease has run out (or another holder took the lock since).
type held struct {
	unlock func(context.Context) error
	renew  func(context.Context, time.Duration) error
}

// Held is a cluster-wide lock taken with Hold.
type Held struct {
	c *Cache
	h held
}

// Renew extends the lock's lease to lease from now, so a holder whose work
// outlasts the first lease keeps the lock; ErrNotLocked means it was lost.
func (h *Held) Renew(ctx context.Context, lease time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("renew lock: lease %s must be positive", lease)
	}
	err := h.h.renew(ctx, lease)
	if err != nil && !errors.Is(err, ErrNotLocked) {
		h.c.fail(err)
	}
	return err
}

// Unlock releases the lock; ErrNotLocked means its lease had run out.
func (h *Held) Unlock(ctx context.Context) error {
	err := h.h.unlock(ctx)
	if err != nil && !errors.Is(err, ErrNotLocked) {
		h.c.fail(err)
	}
	return err
}

// Hold is Lock returning a lock whose lease can be renewed.
func (c *Cache) Hold(ctx context.Context, ns, key string, lease time.Duration) (*Held, error) {
	if err := c.check(ns, key); err != nil {
		return nil, err
	}
	if lease <= 0 {
		return nil, fmt.Errorf("lock %s/%s: lease %s must be positive", ns, key, lease)
	}
	if !c.allowed(ns) {
		return nil, fmt.Errorf("%w: lock namespace %q is not admitted", ErrInvalidKey, ns)
	}
	h, err := c.st.lock(ctx, ns, key, lease)
	if err != nil {
		if !errors.Is(err, ErrLocked) {
			c.fail(err)
		}
		return nil, err
	}
	c.ok()
	return &Held{c: c, h: h}, nil
}

// Lock takes the lock (ns, key) for at most lease, without waiting: if another holder has it,
// Lock returns ErrLocked. The returned func releases it; it returns ErrNotLocked when the lease
// had already run out. Lock and the release are on a request's path, so both are bounded by
// LookupTimeout; a lock that gets no answer is ErrUnavailable and the caller should carry on
// without it (fail open). On olric the lock is cluster-wide (Olric's locks are advisory: a
// member that loses its view of the partition owner can, briefly, let two holders in).
func (c *Cache) Lock(ctx context.Context, ns, key string, lease time.Duration) (func(context.Context) error, error) {
	h, err := c.Hold(ctx, ns, key, lease)
	if err != nil {
		return nil, err
	}
	return h.Unlock, nil
}

// Members is the number of cache members this node sees (1 for local and off, 0 before an
// olric Start).
func (c *Cache) Members() int {
	if c.closed.Load() {
		return 0
	}
	return c.st.members()
}

// Alone reports whether no other node's member shares this cache now, as of the member's
// last look (at most a second old): true on the local and off backends and for an Olric
// member that sees no peer. A lock then coordinates nobody, and callers may skip it.
func (c *Cache) Alone() bool {
	return c.closed.Load() || !c.st.shared()
}

// Stats returns the counters; it never blocks on the network.
func (c *Cache) Stats() Stats {
	entries, bytes := c.st.usage()
	st := Stats{
		Backend:  c.cfg.Backend,
		Hits:     c.hits.Load(),
		Misses:   c.misses.Load(),
		Sets:     c.sets.Load(),
		Deletes:  c.deletes.Load(),
		Purges:   c.purges.Load(),
		Incrs:    c.incrs.Load(),
		Errors:   c.errs.Load(),
		Timeouts: c.timeouts.Load(),
		Entries:  entries,
		Bytes:    bytes,
		Members:  c.Members(),
		Queued:   len(c.writes),
		Dropped:  c.dropped.Load(),
	}
	if o, ok := c.st.(*olricStore); ok {
		st.FastFails = o.fastFails.Load()
		_, _, st.Restarts = o.state()
	}
	return st
}

// Health reports whether the cache is serving, and since when it is not. It never blocks on
// the network.
func (c *Cache) Health() Health {
	members := c.Members()
	o, _ := c.st.(*olricStore)
	var restarts int64
	var down time.Time
	var last string
	if o != nil {
		down, last, restarts = o.state()
	}
	degraded := func(detail string, since time.Time) Health {
		return Health{Status: StatusDegraded, Detail: detail, Members: members, Since: since, Restarts: restarts}
	}
	switch {
	case c.cfg.Backend == BackendOff:
		return Health{Status: StatusOff, Detail: "response cache disabled", Members: members}
	case c.closed.Load():
		return degraded("closed", time.Time{})
	case !c.started.Load():
		return degraded("not started", c.created)
	case o != nil && o.cur.Load() == nil:
		if last == "" {
			last = "starting"
		}
		return degraded("no cache member running; retrying in the background: "+last, down)
	}
	if lastFail := c.lastFail.Load(); lastFail != 0 && time.Since(time.Unix(0, lastFail)) < c.cfg.HealthWindow {
		c.failMu.Lock()
		msg := c.failMsg
		c.failMu.Unlock()
		return degraded(msg, time.Unix(0, c.failSince.Load()))
	}
	if want := c.st.expected(); want > members {
		return degraded(fmt.Sprintf("cache cluster has %d of the %d members shoal lists (joining or split)", members, want), down)
	}
	return Health{Status: StatusOK, Members: members, Restarts: restarts}
}

// Close stops the backend: an olric member leaves its cluster. Calls after Close return
// ErrClosed. Close is idempotent.
func (c *Cache) Close(ctx context.Context) error {
	if c.closed.Swap(true) {
		return nil
	}
	close(c.stopWrites)
	c.writers.Wait()
	if err := c.st.close(ctx); err != nil {
		return fmt.Errorf("close %s cache: %w", c.cfg.Backend, err)
	}
	return nil
}

// fail records a failed call; unavailability marks the cache degraded for HealthWindow.
func (c *Cache) fail(err error) {
	switch {
	case errors.Is(err, ErrUnavailable):
	case errors.Is(err, ErrInvalidKey), errors.Is(err, ErrClosed), errors.Is(err, ErrLocked),
		errors.Is(err, context.Canceled):
		// The caller's doing (or a normal answer), not a failure of the cache.
		return
	}
	c.errs.Add(1)
	if !errors.Is(err, ErrUnavailable) {
		return
	}
	if errors.Is(err, context.DeadlineExceeded) {
		c.timeouts.Add(1)
	}
	now := time.Now()
	last := c.lastFail.Load()
	first := last == 0
	if first || now.Sub(time.Unix(0, last)) >= c.cfg.HealthWindow {
		c.failSince.Store(now.UnixNano())
	}
	c.failMu.Lock()
	c.failMsg = err.Error()
	c.failMu.Unlock()
	c.lastFail.Store(now.UnixNano())
	if first {
		c.log.Warn("cache degraded", "err", err)
	}
}

// ok records a successful call. Degradation lapses on its own after HealthWindow; a success
// only re-arms the one-time warning.
func (c *Cache) ok() {
	if last := c.lastFail.Load(); last != 0 && time.Since(time.Unix(0, last)) >= c.cfg.HealthWindow {
		if c.lastFail.CompareAndSwap(last, 0) {
			c.log.Info("cache recovered")
		}
	}
}
