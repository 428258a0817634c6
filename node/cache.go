package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/gossip"
	"github.com/shoal-dev/shoal/ops"
	opsadmin "github.com/shoal-dev/shoal/ops/admin"
	"github.com/shoal-dev/shoal/peer"
)

// newCache builds the response cache; its Olric member starts later, in
// the background, because it joins peers that gossip finds.
func (n *Node) newCache() error {
	cc := dcache.DefaultConfig()
	cc.Backend = n.cfg.Cache.Backend
	cc.BindAddr = n.cfg.Cache.Addr
	cc.MemberlistAddr = n.cfg.Cache.MemberlistAddr
	cc.MaxBytes = n.cfg.Cache.MaxBytes
	cc.LookupTimeout = n.cfg.Cache.LookupTimeout
	// Counter leases for the rate limiter run in the background; a timed-out
	// lease that lands anyway strands its tokens, so give writes time.
	cc.OpTimeout = time.Second
	cc.WaitForPeers = len(n.cfg.Join) > 0
	cc.Peers = n.cachePeers
	// Model names come from clients: only served ones may become namespaces.
	cc.Namespaces = n.servedAnywhere
	cc.Logger = n.logger
	key, err := n.cfg.ClusterKey()
	if err != nil {
		return err
	}
	if key != nil {
		// The cluster key encrypts the cache's memberlist too, and the
		// cache's password derives from it, so nobody without it can read
		// or write cached answers or the rate-limit counters.
		cc.EncryptKey = key
		sum := sha256.Sum256(append([]byte("shoal-cache\x00"), key...))
		cc.Password = hex.EncodeToString(sum[:])
	}
	if n.cfg.Tuning.Cache != nil {
		n.cfg.Tuning.Cache(&cc)
	}
	c, err := dcache.New(cc)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	n.cache = c
	// inference_cache_members, _degraded, _degraded_since_seconds, ...
	if err := n.metrics.Registry.Register(c.Collector()); err != nil {
		return fmt.Errorf("cache metrics: %w", err)
	}
	return nil
}

// cachePeers feeds Olric the cache addresses of shoal's live members, so
// the cache has no seed list of its own to keep in step.
func (n *Node) cachePeers() []string {
	if n.gossip == nil {
		return nil
	}
	var out []string
	for _, m := range n.gossip.Alive() {
		if m.Name != n.cfg.NodeName && m.Meta.CacheGossipAddr != "" {
			out = append(out, m.Meta.CacheGossipAddr)
		}
	}
	return out
}

// startCache starts the cache member; until it has, requests run
// uncached.
func (n *Node) startCache(ctx context.Context) {
	// The cache keeps trying by itself after Start gives up waiting; /health
	// and inference_cache_degraded say when it is up.
	if err := n.cache.Start(ctx); err != nil && ctx.Err() == nil {
		n.logger.Warn("cache not up yet; requests run uncached while it keeps trying", "backend", n.cache.Backend(), "err", err)
	}
}

func (n *Node) cacheHealth() ops.Component {
	h := n.cache.Health()
	c := ops.Component{Status: ops.StatusOK, Detail: h.Detail, Data: map[string]any{"backend": n.cache.Backend(), "members": h.Members}}
	if ratio, ok := n.cacheHitRatio(n.cache.Stats()); ok {
		c.Data["hit_ratio"] = ratio
	}
	switch h.Status {
	case dcache.StatusOK, dcache.StatusOff:
	default:
		c.Status = ops.StatusDegraded
		if !h.Since.IsZero() {
			c.Data["degraded_since"] = h.Since.UTC().Format(time.RFC3339)
		}
	}
	if h.Restarts > 0 {
		c.Data["member_restarts"] = h.Restarts
	}
	return c
}

func (n *Node) cacheStats(_ context.Context) (any, error) {
	st := n.cache.Stats()
	ratio, _ := n.cacheHitRatio(st)
	return map[string]any{"node": n.cfg.NodeName, "stats": st, "near_hits": n.respCache.NearHits(), "health": n.cache.Health(), "hit_ratio": ratio}, nil
}

// cacheHitRatio is the share of lookups that hit, near hits included (they
// never reach the shared cache's counters); ok is false before any lookup.
func (n *Node) cacheHitRatio(st dcache.Stats) (ratio float64, ok bool) {
	near := n.respCache.NearHits()
	total := st.Hits + near + st.Misses
	if total == 0 {
		return 0, false
	}
	return float64(st.Hits+near) / float64(total), true
}

// purgeCache purges the shared cache, then moves the cluster's cache
// generation on through Raft, which ends every node's near answers, and
// waits until every live node has applied it: when the purge answers, no
// node answers from before it. In that order: a near answer a node takes
// after it applied the new generation was read after the purge.
func (n *Node) purgeCache(ctx context.Context, model string) error {
	if err := n.cache.Purge(ctx, model); err != nil {
		if errors.Is(err, dcache.ErrUnavailable) && ctx.Err() == nil {
			// Olric purges on every member; one that does not answer (a
			// frozen or cut-off node) fails the whole purge with an error
			// of Olric's own that names nobody.
			return &opsadmin.StatusError{Status: http.StatusServiceUnavailable, Code: "cache_unavailable",
				Msg: fmt.Sprintf("purge cache %q: not every cache member answered%s, so answers may remain; retry once the cluster is healthy: %v",
					model, n.unwellMembers(), err)}
		}
		return fmt.Errorf("purge cache %q: %w", model, err)
	}
	if err := n.applyCommand(ctx, consensus.PurgeCache{Model: model}); err != nil {
		return fmt.Errorf("purge cache %q: the shared cache is purged, but the nodes' near caches could not be told "+
			"and may answer from it for up to cache.near_ttl (%s): %w", model, n.cfg.Cache.NearTTL, err)
	}
	// The write returns once this node applied it.
	if late := n.awaitGeneration(ctx, n.cacheGeneration()); len(late) > 0 {
		return fmt.Errorf("purge cache %q: the shared cache is purged, but the purge was not confirmed in time by %s, "+
			"which may answer from a near cache for up to cache.near_ttl (%s): %w", model, strings.Join(late, ", "), n.cfg.Cache.NearTTL, context.DeadlineExceeded)
	}
	return nil
}

// unwellMembers names the members that may have failed a purge: those
// gossip holds suspect, and those it declared dead within recentlyDead.
// Gossip keeps dead and departed members listed for days (RetainGone), and
// naming a node that left long ago would send the operator after the wrong
// one; a graceful leaver also left Olric, so it is never named.
func (n *Node) unwellMembers() string {
	if n.gossip == nil {
		return ""
	}
	return unwell(n.gossip.Members(), n.cfg.NodeName, time.Now())
}

// recentlyDead is how long after gossip declared a member dead a failed
// purge still names it: Olric drops a dead member on its own within
// seconds, after which it no longer fails a purge.
const recentlyDead = time.Minute

// unwell is unwellMembers over members, as " (not alive in gossip: n2
// suspect, n3 dead)", or "" when none is named.
func unwell(members []gossip.Member, self string, now time.Time) string {
	var names []string
	for _, m := range members {
		if m.Name == self {
			continue
		}
		if m.State == gossip.StateSuspect || m.State == gossip.StateDead && now.Sub(m.StateChanged) < recentlyDead {
			names = append(names, m.Name+" "+m.State.String())
		}
	}
	if len(names) == 0 {
		return ""
	}
	slices.Sort(names)
	return " (not alive in gossip: " + strings.Join(names, ", ") + ")"
}

// cacheGenerationPath is where a node answers, on the peer plane, once it
// has applied a cache generation.
const cacheGenerationPath = "/peer/v1/cache-generation"

// maxGenerationWait bounds how long a node holds a generation call, and how
// long a purge waits for the slowest node.
const maxGenerationWait = 3 * time.Second

// generationWait asks a node for its cache generation once it is at least
// AtLeast, waiting up to WaitMS for it.
type generationWait struct {
	AtLeast uint64 `json:"at_least"`
	WaitMS  int64  `json:"wait_ms"`
}

// generationAnswer is a node's cache generation.
type generationAnswer struct {
	Generation uint64 `json:"generation"`
}

// serveCacheGeneration answers a generationWait on the peer plane.
func (n *Node) serveCacheGeneration(w http.ResponseWriter, r *http.Request) {
	var req generationWait
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10)).Decode(&req); err != nil {
		peer.Error(w, http.StatusBadRequest, "invalid_json", "invalid request body: "+err.Error())
		return
	}
	wait := min(max(time.Duration(req.WaitMS)*time.Millisecond, 0), maxGenerationWait)
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	changes, unsubscribe := n.store.Subscribe()
	defer unsubscribe()
	for n.cacheGeneration() < req.AtLeast && ctx.Err() == nil {
		select {
		case <-changes:
		case <-ctx.Done():
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(generationAnswer{Generation: n.cacheGeneration()})
}

// awaitGeneration waits until every other live or suspect node has applied cache
// generation gen, at most maxGenerationWait or until ctx ends, and returns
// the names of those that did not confirm it. A node that does not know
// the call (older than the near cache) has no near answers: it confirms.
func (n *Node) awaitGeneration(ctx context.Context, gen uint64) []string {
	if n.gossip == nil || n.peer.client == nil || n.cfg.Cache.NearTTL == 0 || n.cache.Backend() != dcache.BackendOlric {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, maxGenerationWait)
	defer cancel()
	body, _ := json.Marshal(generationWait{AtLeast: gen, WaitMS: (maxGenerationWait - 500*time.Millisecond).Milliseconds()})
	var (
		mu   sync.Mutex
		late []string
		wg   sync.WaitGroup
	)
	for _, m := range n.gossip.Members() {
		// A suspect member may be alive and answering (a loaded box
		// misses probes): it is asked too, and named if it does not
		// confirm. Only members gossip has seen leave or die are not.
		if m.Name == n.cfg.NodeName || m.Meta.RaftAddr == "" || !m.State.Listed() {
			continue
		}
		wg.Add(1)
		go func(name, addr string) {
			defer wg.Done()
			resp, err := n.peer.client.Post(ctx, addr, cacheGenerationPath, body)
			var a generationAnswer
			ok := err == nil && (resp.Status == http.StatusNotFound ||
				resp.Status == http.StatusOK && resp.Decode(&a) == nil && a.Generation >= gen)
			if !ok {
				mu.Lock()
				late = append(late, name)
				mu.Unlock()
			}
		}(m.Name, m.Meta.RaftAddr)
	}
	wg.Wait()
	slices.Sort(late)
	return late
}
