package node

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/scheduler"
)

// Values of the X-Shoal-Cache response header.
const (
	cacheHit    = "hit"
	cacheMiss   = "miss"
	cacheBypass = "bypass"
)

// cachePolicy is what the client's Cache-Control allows.
type cachePolicy struct {
	lookup bool // no-cache skips the lookup
	store  bool // no-store skips storing the answer
}

func parseCacheControl(h string) cachePolicy {
	p := cachePolicy{lookup: true, store: true}
	for _, d := range strings.Split(strings.ToLower(h), ",") {
		switch strings.TrimSpace(d) {
		case "no-cache":
			p.lookup = false
		case "no-store":
			p.lookup, p.store = false, false
		}
	}
	return p
}

// cachedAnswer is what the response cache stores for a request.
type cachedAnswer struct {
	Results []scheduler.Result `json:"results"`
	Node    string             `json:"node"`
}

// normalizeText trims and collapses whitespace, so prompts that differ only
// in spacing share an entry; lowercasing is opt-in because it changes
// meaning for most models.
func normalizeText(s string, lower bool) string {
	s = strings.Join(strings.Fields(s), " ")
	if lower {
		s = strings.ToLower(s)
	}
	return s
}

// cacheKey returns the key of a deterministic request (temperature 0 or a
// fixed seed), over the model, the normalized prompt or messages and every
// parameter that changes the output; ok is false when the answer must not
// be cached.
func cacheKey(req *apiRequest, lower bool) (key string, ok bool) {
	p := req.Params
	if p.Temperature != 0 && p.Seed == nil {
		return "", false
	}
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	num := func(f float64) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], math.Float64bits(f))
		h.Write(n[:])
	}
	field("v1")
	field(req.Model)
	field(string(req.Endpoint))
	for _, m := range req.Messages {
		field(m.Role)
		field(normalizeText(m.Content, lower))
	}
	field("|")
	for _, pr := range req.Prompts {
		field(normalizeText(pr, lower))
	}
	num(float64(p.MaxTokens))
	num(p.Temperature)
	num(p.TopP)
	if p.Seed != nil {
		num(float64(*p.Seed))
	} else {
		field("noseed")
	}
	for _, s := range p.Stop {
		field(s)
	}
	return hex.EncodeToString(h.Sum(nil)), true
}

// requestCacheKey is cacheKey with this node's settings; ok is false when
// the cache is off.
func (n *Node) requestCacheKey(req *apiRequest) (string, bool) {
	if n.cache.Backend() == dcache.BackendOff {
		return "", false
	}
	_, lower := n.cacheSettings()
	return cacheKey(req, lower)
}

// cacheSettings are the replicated settings when set, else the config's.
func (n *Node) cacheSettings() (ttl time.Duration, lower bool) {
	if cs := n.store.State().Cache; cs != nil {
		return cs.DefaultTTL, cs.Lowercase
	}
	return n.cfg.Cache.DefaultTTL, n.cfg.Cache.Lowercase
}

// cacheLookup returns a stored answer; any cache error is a miss, so a
// slow or broken cache never fails a request.
func (n *Node) cacheLookup(ctx context.Context, model, key string) (*cachedAnswer, bool) {
	if n.cache.Backend() == dcache.BackendOff {
		return nil, false
	}
	start := time.Now()
	data, found, err := n.cache.Get(ctx, model, key)
	n.metrics.CacheLookupMs.WithLabelValues(model).Observe(float64(time.Since(start)) / float64(time.Millisecond))
	if err != nil || !found {
		if err != nil && !errors.Is(err, dcache.ErrUnavailable) {
			n.logger.Debug("cache lookup", "err", err)
		}
		n.metrics.CacheMisses.WithLabelValues(model).Inc()
		return nil, false
	}
	var a cachedAnswer
	if err := json.Unmarshal(data, &a); err != nil {
		n.metrics.CacheMisses.WithLabelValues(model).Inc()
		return nil, false
	}
	n.metrics.CacheHits.WithLabelValues(model).Inc()
	return &a, true
}

// cacheStore saves an answer in the background: the client does not wait
// for the cache.
func (n *Node) cacheStore(model, key string, results []scheduler.Result) {
	if n.cache.Backend() == dcache.BackendOff {
		return
	}
	n.cacheStoreAsync(model, key, results, nil)
}

// cacheStoreAsync queues an answer's store off the request path (dcache
// bounds the queue and each write; a full queue drops the write, which
// only costs a future hit). then, when not nil, runs once the write is
// done or dropped.
func (n *Node) cacheStoreAsync(model, key string, results []scheduler.Result, then func()) {
	data, err := json.Marshal(cachedAnswer{Results: results, Node: n.cfg.NodeName})
	if err == nil {
		ttl, _ := n.cacheSettings()
		err = n.cache.SetAsync(model, key, data, ttl, func(err error) {
			if err != nil {
				n.logger.Debug("cache store", "err", err)
			}
			if then != nil {
				then()
			}
		})
	}
	if err != nil {
		n.logger.Debug("cache store", "err", err)
		if then != nil {
			then()
		}
	}
}

// lockLease bounds how long a node holds the cluster-wide lock that makes
// one node compute an answer other nodes are also missing.
const lockLease = 5 * time.Second

// coalesce runs compute once per key on this node and, on an Olric cache,
// once per key across the cluster: the node holding the key's short-lease
// lock computes; the others wait for its answer to appear in the cache, and
// compute themselves if it does not within the lease.
func (n *Node) coalesce(ctx context.Context, model, key string, store bool, compute func(context.Context) ([]scheduler.Result, error)) ([]scheduler.Result, error) {
	return n.flights.do(ctx, key, func(fctx context.Context) ([]scheduler.Result, error) {
		if n.cache.Backend() != dcache.BackendOlric {
			res, err := compute(fctx)
			if err == nil && store {
				n.cacheStore(model, key, res)
			}
			return res, err
		}
		// Lock and release are bounded by the cache's lookup timeout and
		// fail open: without the lock this node computes.
		unlock, lerr := n.cache.Lock(fctx, model, "lock:"+key, lockLease)
		release := func() {}
		switch {
		case lerr == nil:
			release = func() { _ = unlock(context.WithoutCancel(fctx)) }
			// The previous holder may have stored the answer between our
			// miss and our lock.
			if a, ok := n.cacheLookup(fctx, model, key); ok {
				release()
				return a.Results, nil
			}
		case errors.Is(lerr, dcache.ErrLocked):
			if a, ok := n.waitForAnswer(fctx, model, key); ok {
				return a.Results, nil
			}
		}
		res, err := compute(fctx)
		if err == nil && store {
			// The store runs off the request path; the lock is released
			// after it, so a node that takes the lock next finds the answer
			// instead of computing it again.
			n.cacheStoreAsync(model, key, res, release)
		} else {
			release()
		}
		return res, err
	})
}

// waitForAnswer polls the cache while another node computes the answer.
func (n *Node) waitForAnswer(ctx context.Context, model, key string) (*cachedAnswer, bool) {
	deadline := time.Now().Add(lockLease)
	backoff := 5 * time.Millisecond
	for time.Now().Before(deadline) {
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, false
		case <-t.C:
		}
		data, found, err := n.cache.Get(ctx, model, key)
		if err == nil && found {
			var a cachedAnswer
			if json.Unmarshal(data, &a) == nil {
				return &a, true
			}
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
	return nil, false
}

// setCacheHeader records the cache outcome for the client.
func setCacheHeader(w http.ResponseWriter, v string) {
	w.Header().Set("X-Shoal-Cache", v)
}
