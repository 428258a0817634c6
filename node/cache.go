package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/ops"
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
	st := n.cache.Stats()
	if total := st.Hits + st.Misses; total > 0 {
		c.Data["hit_ratio"] = float64(st.Hits) / float64(total)
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
	h := n.cache.Health()
	ratio := 0.0
	if total := st.Hits + st.Misses; total > 0 {
		ratio = float64(st.Hits) / float64(total)
	}
	return map[string]any{"node": n.cfg.NodeName, "stats": st, "health": h, "hit_ratio": ratio}, nil
}

func (n *Node) purgeCache(ctx context.Context, model string) error {
	if err := n.cache.Purge(ctx, model); err != nil {
		return fmt.Errorf("purge cache %q: %w", model, err)
	}
	return nil
}
