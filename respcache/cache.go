// Package respcache is the response cache of the request path: the keys of
// deterministic requests (normalized prompt and every output-changing
// parameter), lookup and store over the shared cache with a bounded time,
// and coalescing, so identical misses run the model once per node and, on
// an Olric cache, once per cluster.
package respcache

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/internal/workers"
	"github.com/shoal-dev/shoal/scheduler"
)

// Store is the shared cache: namespaced get/set and a renewable lock.
// Implemented by *dcache.Cache; safe for concurrent use.
type Store interface {
	Backend() string
	Get(ctx context.Context, ns, key string) ([]byte, bool, error)
	// SetAsync queues a write off the caller's path (bounded queue and
	// time); done runs after a queued write, not when it returns an error.
	SetAsync(ns, key string, val []byte, ttl time.Duration, done func(error)) error
	// Hold takes a lock without waiting (dcache.ErrLocked when another
	// holder has it); its lease can be renewed.
	Hold(ctx context.Context, ns, key string, lease time.Duration) (*dcache.Held, error)
	// Alone reports whether no other node shares the store now, so that
	// a lock would coordinate nobody.
	Alone() bool
}

// Observer records lookups for metrics; called concurrently.
type Observer interface {
	CacheLookup(model string, took time.Duration, hit bool)
}

// Settings are the cache settings in force now (replicated ones win over
// the config); called on every request.
type Settings func() (ttl time.Duration, lower bool)

// Config is what a Cache needs.
type Config struct {
	// Node names the node in stored answers.
	Node     string
	Store    Store
	Settings Settings
	Observer Observer
	// LockLease is the lease of the cross-node coalescing lock, renewed
	// while the holder computes (default DefaultLockLease).
	LockLease time.Duration
	Logger    *slog.Logger
	// Near, when positive, lets this node answer a hit it got from the
	// store again from memory for up to Near, without asking the store
	// (never past the answer's own expiry). For a shared store: a hot key
	// then costs its owner one get per node per Near instead of one per
	// request, and a hit here no round trip. Generation must then say
	// which purge the cluster is at (see Generation).
	Near time.Duration
	// Generation returns the cluster's count of cache purges, which every
	// node learns when it applies the purge from Raft; near answers are
	// kept only within the generation they were taken in. nil: always 0.
	Generation func() uint64
	// Epoch returns how many purges apply to a model's answers
	// (consensus.State.CacheEpoch); keys carry it, so a purge puts every
	// earlier answer out of reach even where the store's own purge missed
	// one. nil: always 0.
	Epoch func(model string) uint64
}

// Cache looks answers up, stores them and coalesces identical misses.
type Cache struct {
	cfg     Config
	flights flightGroup
	memo    *memo
	// nearHits counts lookups answered from memory (Near).
	nearHits atomic.Int64
	// stored is logStore bound once: a method value made per store
	// would be an allocation.
	stored func(error)
}

// answer is what the cache stores for a request.
type answer struct {
	Results []scheduler.Result `json:"results"`
	Node    string             `json:"node"`
	// Expires is when the store drops the answer (Unix ns; -1 never), so a
	// near cache never answers with it longer. Absent (0) in answers
	// stored by nodes older than the near cache: those are never near.
	Expires int64 `json:"expires"`
}

// answerRoom is an answer with room for one result, so decoding the
// usual answer (one result) allocates it and its result slice at once.
type answerRoom struct {
	answer
	one [1]scheduler.Result
}

func decodeInto() *answerRoom {
	a := &answerRoom{}
	a.Results = a.one[:0:1]
	return a
}

// decode unmarshals data as json.Unmarshal into a zero answer would.
func (a *answerRoom) decode(data []byte) error {
	if err := json.Unmarshal(data, &a.answer); err != nil {
		return err
	}
	if len(a.Results) == 0 && cap(a.Results) == 1 {
		// No "results" at all: a zero answer's is nil.
		a.Results = nil
	}
	return nil
}

// workerIdle is how long a flight's worker waits for the next flight. A
// node with steady misses reuses its workers long before; an idle node's
// exit within seconds.
const workerIdle = 2 * time.Second

// New returns a Cache over cfg.Store.
func New(cfg Config) *Cache {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Generation == nil {
		cfg.Generation = func() uint64 { return 0 }
	}
	c := &Cache{cfg: cfg, memo: newMemo(), flights: flightGroup{runs: workers.New(workers.Config{Idle: workerIdle})}}
	c.stored = c.logStore
	return c
}

func (c *Cache) off() bool { return c.cfg.Store.Backend() == dcache.BackendOff }

// Key is the package's Key with the settings in force, and the KeyStamp
// it was computed under (read once, so the two agree); ok is false when
// the cache is off or the request is not deterministic.
func (c *Cache) Key(in KeyInput) (key string, stamp uint64, ok bool) {
	if c.off() {
		return "", 0, false
	}
	lower, epoch := c.keyContext(in.Model)
	in.Epoch = epoch
	key, ok = Key(in, lower)
	return key, keyStamp(lower, epoch), ok
}

// KeyStamp changes whenever Key may give another key for an input of
// model it was given before: a purge of model's answers (its epoch), the
// lowercasing setting, or the cache going off. Callers may keep a key
// for as long as the stamp is unchanged.
func (c *Cache) KeyStamp(model string) uint64 {
	if c.off() {
		return 0
	}
	return keyStamp(c.keyContext(model))
}

// keyContext is what besides its input decides a key of model.
func (c *Cache) keyContext(model string) (lower bool, epoch uint64) {
	_, lower = c.cfg.Settings()
	if c.cfg.Epoch != nil {
		epoch = c.cfg.Epoch(model)
	}
	return lower, epoch
}

// keyStamp is never 0, the stamp of a cache that is off.
func keyStamp(lower bool, epoch uint64) uint64 {
	s := epoch<<2 | 2
	if lower {
		s |= 1
	}
	return s
}

// Lookup returns a stored answer; any cache error is a miss, so a slow or
// broken cache never fails a request. The results may be shared with other
// requests: callers must not modify them.
func (c *Cache) Lookup(ctx context.Context, model, key string) ([]scheduler.Result, bool) {
	if c.off() {
		return nil, false
	}
	start := time.Now()
	near := c.nearStamp(start)
	if near.until != 0 {
		if results, ok := c.memo.fresh(model, key, start.UnixNano(), near.gen); ok {
			c.nearHits.Add(1)
			if c.cfg.Observer != nil {
				c.cfg.Observer.CacheLookup(model, time.Since(start), true)
			}
			return results, true
		}
	}
	data, found, err := c.cfg.Store.Get(ctx, model, key)
	took := time.Since(start)
	if err != nil && !errors.Is(err, dcache.ErrUnavailable) {
		c.cfg.Logger.Debug("cache lookup", "err", err)
	}
	var results []scheduler.Result
	hit := err == nil && found
	if hit {
		results, hit = c.memo.decode(model, key, data, near)
	}
	if c.cfg.Observer != nil {
		c.cfg.Observer.CacheLookup(model, took, hit)
	}
	if !hit {
		return nil, false
	}
	return results, true
}

// nearStamp is what a store answer got now may be kept for. The generation
// is read before the store is asked: an answer read before a purge is then
// kept under the old generation, which the purge's commit retires, and one
// read after the commit was applied here is read after the purge itself.
func (c *Cache) nearStamp(now time.Time) nearStamp {
	if c.cfg.Near <= 0 {
		return nearStamp{}
	}
	return nearStamp{until: now.Add(c.cfg.Near).UnixNano(), gen: c.cfg.Generation()}
}

// NearHits counts lookups answered from memory without the store.
func (c *Cache) NearHits() int64 { return c.nearHits.Load() }

// Store saves an answer off the request path: the client never waits for
// the cache, and a full write queue drops the write (only a future hit is
// lost).
func (c *Cache) Store(model, key string, results []scheduler.Result) {
	if c.off() {
		return
	}
	c.storeAsync(model, key, results, nil)
}

// logStore is a store's completion when nothing else waits for it.
func (c *Cache) logStore(err error) {
	if err != nil {
		c.cfg.Logger.Debug("cache store", "err", err)
	}
}

// storeAsync queues an answer's store; then, when not nil, runs once the
// write is done or dropped.
func (c *Cache) storeAsync(model, key string, results []scheduler.Result, then func()) {
	ttl, _ := c.cfg.Settings()
	expires := int64(-1)
	if ttl > 0 {
		expires = time.Now().Add(ttl).UnixNano()
	}
	data, err := json.Marshal(answer{Results: results, Node: c.cfg.Node, Expires: expires})
	if err == nil {
		done := c.stored
		if then != nil {
			done = func(err error) {
				c.logStore(err)
				then()
			}
		}
		err = c.cfg.Store.SetAsync(model, key, data, ttl, done)
	}
	if err != nil {
		c.cfg.Logger.Debug("cache store", "err", err)
		if then != nil {
			then()
		}
	}
}
