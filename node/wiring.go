package node

import (
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/breaker"
	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/httpapi"
	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/respcache"
	"github.com/shoal-dev/shoal/router"
)

// wireRequestPath builds the breakers, the response cache and the HTTP API
// over this node's concrete parts. The cache must exist (newCache).
func (n *Node) wireRequestPath() {
	n.breakers = breaker.New(breaker.Config{
		Node: n.cfg.NodeName, FailureThreshold: n.cfg.CircuitBreaker.FailureThreshold, Timeout: n.cfg.CircuitBreaker.Timeout,
		IsFailure: httpapi.IsBackendFailure, State: breakerGlue{n}, Proposer: breakerGlue{n},
		Go: n.goBackground, Logger: n.logger,
	})
	rc := respcache.Config{
		Node: n.cfg.NodeName, Store: n.cache, Settings: n.cacheSettings, Observer: metricsGlue{n.metrics}, LockLease: n.cfg.Tuning.CacheLockLease,
		Logger: n.logger, Generation: n.cacheGeneration, Epoch: n.cacheEpoch,
	}
	if n.cache.Backend() == dcache.BackendOlric {
		// A local store is in this process already; only a shared one
		// is worth keeping answers near.
		rc.Near = n.cfg.Cache.NearTTL
	}
	n.respCache = respcache.New(rc)
	n.api = httpapi.New(httpapi.Config{
		Node: n.cfg.NodeName, MaxBodyBytes: n.cfg.HTTP.MaxBodyBytes, RequestTimeout: n.cfg.HTTP.RequestTimeout,
		// dcache bounds each shared-cache get by cache.lookup_timeout
		// itself (newCache), and a local get does not wait.
		CacheLookupTimeout: 0, CacheBound: n.cfg.Cache.LookupTimeout,
		Limiter: admitter{n}, Cache: n.respCache, Scoper: scopeGlue{n}, Cluster: clusterGlue{n}, Picker: n.router, Prefixes: n.prefixes, Forwarder: n.fwd,
		Scheduler: n.sched, Breakers: n.breakers, Retries: n.retries, Metrics: metricsGlue{n.metrics},
		Logger: n.logger.With("component", "api"),
	})
}

// cacheSettings are the replicated settings when set, else the config's.
func (n *Node) cacheSettings() (ttl time.Duration, lower bool) {
	if cs := n.store.State().Cache; cs != nil {
		return cs.DefaultTTL, cs.Lowercase
	}
	return n.cfg.Cache.DefaultTTL, n.cfg.Cache.Lowercase
}

// cacheGeneration is the cluster's count of cache purges as this node has
// applied them; near answers live within one generation.
func (n *Node) cacheGeneration() uint64 { return n.store.State().CacheGeneration }

// cacheEpoch is how many purges apply to model's cached answers.
func (n *Node) cacheEpoch(model string) uint64 { return n.store.State().CacheEpoch(model) }

// scopeGlue partitions the response cache per cache.scope.
type scopeGlue struct{ n *Node }

func (g scopeGlue) CacheScope(r *http.Request, req *httpapi.Request) string {
	p := g.n.limitPolicy()
	hash := req.KeyHash
	if !req.KeyHashed {
		// A forwarded request, which the Limiter did not see.
		if key := bearerKey(r); key != "" {
			hash = consensus.HashKey(key)
		}
	}
	scope := g.n.cfg.Cache.Scope
	// Replicated cache settings (shoal admin cache settings set) win over
	// the file, so every node partitions the cache the same way.
	if cs := g.n.store.State().Cache; cs != nil && cs.Scope != "" {
		scope = cs.Scope
	}
	return respcache.ScopeOf(scope, p.AuthRequired, hash, p.Keys[hash].Tenant)
}

// clusterGlue is the API's view of the cluster.
type clusterGlue struct{ n *Node }

func (c clusterGlue) Candidates(model string) []router.Candidate { return c.n.candidates(model) }
func (c clusterGlue) ServedAnywhere(model string) bool           { return c.n.servedAnywhere(model) }
func (c clusterGlue) Models() []string                           { return c.n.clusterModels() }
func (c clusterGlue) TrustedForward(r *http.Request, body []byte) bool {
	return c.n.trustedForward(r, body)
}

// metricsGlue records the request path in the node's registry.
type metricsGlue struct{ m *ops.Metrics }

func (g metricsGlue) InFlight(delta int) { g.m.InFlight.Add(float64(delta)) }

func (g metricsGlue) ObserveRequest(model, endpoint string, status int, took time.Duration) {
	g.m.ObserveRequest(model, endpoint, status, took)
}

func (g metricsGlue) ObserveTokens(model string, prompt, completion int, took time.Duration) {
	g.m.ObserveTokens(model, prompt, completion, took)
}

func (g metricsGlue) Retry(reason string) { g.m.Retries.WithLabelValues(reason).Inc() }

func (g metricsGlue) RouteDecision(took time.Duration) {
	g.m.RouteDecisionUs.Observe(float64(took) / float64(time.Microsecond))
}

func (g metricsGlue) Routed(node, how string)   { g.m.Routed.WithLabelValues(node, how).Inc() }
func (g metricsGlue) RouteReason(reason string) { g.m.RouteReason.WithLabelValues(reason).Inc() }
func (g metricsGlue) ForwardError(node string)  { g.m.ForwardErrors.WithLabelValues(node).Inc() }

func (g metricsGlue) CacheLookup(model string, took time.Duration, hit bool) {
	g.m.ObserveCacheLookup(model, took, hit)
}
