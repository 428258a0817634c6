// Package node is the shoal daemon: it wires the scheduler, backends,
// cluster membership, consensus, cache and router behind one HTTP port, and
// owns the node's lifecycle (New, Start, Shutdown).
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-dev/shoal/breaker"
	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/engine"
	"github.com/shoal-dev/shoal/gossip"
	"github.com/shoal-dev/shoal/httpapi"
	"github.com/shoal-dev/shoal/ops"
	opsadmin "github.com/shoal-dev/shoal/ops/admin"
	"github.com/shoal-dev/shoal/ops/ui"
	"github.com/shoal-dev/shoal/raftwrite"
	"github.com/shoal-dev/shoal/ratelimit"
	"github.com/shoal-dev/shoal/respcache"
	"github.com/shoal-dev/shoal/router"
	"github.com/shoal-dev/shoal/scheduler"
	"github.com/shoal-dev/shoal/scheduler/openai"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

// Version is the shoal release this node runs; the build sets it with
// -ldflags "-X github.com/shoal-dev/shoal/node.Version=...".
var Version = "0.1.0-dev"

// maxHeaderBytes bounds a request's header; larger ones answer 431.
const maxHeaderBytes = 64 << 10

// Node is one shoal daemon.
type Node struct {
	cfg     Config
	logger  *slog.Logger
	metrics *ops.Metrics
	health  *ops.Health
	sched   *scheduler.Scheduler
	api     *httpapi.API
	admin   *opsadmin.Server

	store   *consensus.Store
	gossip  *gossip.Gossip
	cache   *dcache.Cache
	limiter *ratelimit.Limiter
	router  *router.Router
	fwd     *router.Forwarder
	// prefixes records the prompt prefixes this node served, for its load report.
	prefixes *router.PrefixIndex
	// peer is the peer plane (peerplane.go).
	peer peerPlane
	// writes commits replicated-state writes from this node (raftwrite).
	writes *raftwrite.Writer

	metaMu sync.Mutex
	meta   gossip.Meta
	rateMu sync.Mutex
	rates  map[string]tokenRate

	loadMu   sync.Mutex
	lastLoad gossip.Load

	defaultBatching map[string]consensus.BatchingSettings
	respCache       *respcache.Cache
	breakers        *breaker.Set
	retries         *breaker.RetryBudget
	gpu             atomic.Pointer[ops.GPUCapacity]
	gpuMetrics      *ops.GPUMetrics
	upstreams       []*upstreamProbe
	// fileLimitsChecked is set once warnFileLimits has compared the file's
	// limits with the cluster's (cluster loop only).
	fileLimitsChecked bool
	// filePolicy is the configuration's limit policy, which applies until
	// the leader seeds the replicated one; built once, read only.
	filePolicy *consensus.LimitPolicy

	httpLn  net.Listener
	httpSrv *http.Server

	draining atomic.Bool
	cancel   context.CancelFunc
	bg       sync.WaitGroup

	mu      sync.Mutex
	started bool
	stopped bool
}

// New builds a node from a configuration; it opens no ports until Start.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, &ConfigError{Err: err}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Tuning.LoadPublishInterval == 0 {
		cfg.Tuning.LoadPublishInterval = 50 * time.Millisecond
	}
	if cfg.Tuning.GPUPollInterval == 0 {
		cfg.Tuning.GPUPollInterval = 10 * time.Second
	}
	logger := cfg.Logger.With("node", cfg.NodeName)
	metrics := ops.NewMetrics()
	rt, err := router.New(router.Config{Policy: cfg.Router.Policy, PrefixWeight: &cfg.Router.PrefixWeight})
	if err != nil {
		return nil, &ConfigError{Err: err}
	}
	schedCfg := scheduler.Config{Logger: logger, Observer: metrics}
	if cfg.Tuning.Scheduler != nil {
		cfg.Tuning.Scheduler(&schedCfg)
	}
	n := &Node{
		cfg:             cfg,
		filePolicy:      &consensus.LimitPolicy{DefaultRPM: cfg.RateLimit.RPM, AuthRequired: cfg.Auth.Required},
		logger:          logger,
		metrics:         metrics,
		health:          ops.NewHealth(cfg.NodeName),
		sched:           scheduler.New(schedCfg),
		router:          rt,
		prefixes:        router.NewPrefixIndex(0),
		defaultBatching: map[string]consensus.BatchingSettings{},
	}
	n.fwd = router.NewForwarder(router.ForwarderConfig{Self: cfg.NodeName, Secret: n.forwardSecret, PeerDial: n.dialPeer})
	n.peer.verifier = router.NewVerifier(cfg.NodeName, 0, 0)
	n.retries = breaker.NewRetryBudget()
	n.admin = opsadmin.New(opsadmin.Config{Token: cfg.Admin.Token, Open: cfg.Dev && cfg.Admin.Token == "", Backend: adminBackend{n}, Logger: logger})
	return n, nil
}

// Start opens the node's ports, starts its models, joins the cluster and
// serves until Shutdown. It returns once the node accepts requests; joining
// and the cache's start continue in the background.
func (n *Node) Start(ctx context.Context) (err error) {
	n.mu.Lock()
	if n.started {
		n.mu.Unlock()
		return errors.New("node already started")
	}
	n.started = true
	n.mu.Unlock()
	defer func() {
		if err != nil {
			n.closePartial()
		}
	}()

	n.detectGPU(ctx)
	for _, m := range n.cfg.Models {
		if err := n.startModel(ctx, m); err != nil {
			return err
		}
	}
	ln := n.cfg.HTTPListener
	if ln == nil {
		if ln, err = net.Listen("tcp", n.cfg.HTTP.Addr); err != nil {
			return fmt.Errorf("listen http %s: %w", n.cfg.HTTP.Addr, err)
		}
	}
	n.httpLn = ln
	host := advertiseHost(n.cfg.Gossip.Advertise, n.cfg.Gossip.Addr)
	if err := n.startConsensus(host); err != nil {
		return err
	}
	if err := n.newCache(); err != nil {
		return err
	}
	n.wireRequestPath()
	if err := n.metrics.Registry.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "inference_cache_near_hits_total",
		Help: "Cache hits answered from this node's near cache (cache.near_ttl), without a shared-cache get; also counted in inference_cache_hits_total.",
	}, func() float64 { return float64(n.respCache.NearHits()) })); err != nil {
		return fmt.Errorf("cache metrics: %w", err)
	}
	if err := n.newLimiter(); err != nil {
		return err
	}
	if err := n.startGossip(host); err != nil {
		return err
	}
	// Model names come from clients: only served ones become label values.
	n.metrics.SetServedModels(n.servedAnywhere)
	n.health.Register("scheduler", n.schedulerHealth)
	n.health.Register("raft", n.raftHealth)
	n.health.Register("gossip", n.gossipHealth)
	n.health.Register("cache", n.cacheHealth)
	n.health.Register("breakers", n.breakerHealth)
	n.health.Register("ratelimit", n.limiterHealth)

	n.httpSrv = &http.Server{
		Handler:           n.routes(),
		ReadHeaderTimeout: n.cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       n.cfg.HTTP.ReadTimeout,
		IdleTimeout:       n.cfg.HTTP.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(n.logger.Handler(), slog.LevelWarn),
	}
	bctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.goBackground(func() {
		if err := n.httpSrv.Serve(httpapi.Listener(ln, n.cfg.NodeName, maxHeaderBytes)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("http server stopped", "err", err)
		}
	})
	n.goBackground(func() { n.runCluster(bctx) })
	n.goBackground(func() { n.startCache(bctx) })
	n.goBackground(func() { n.pollGPU(bctx) })
	n.goBackground(func() { n.probeUpstreams(bctx) })
	if len(n.cfg.Join) > 0 {
		n.goBackground(func() { n.joinAtStart(bctx) })
	}
	if n.cfg.Raft.BootstrapExpect == 0 && len(n.cfg.Join) == 0 && !n.store.HasExistingState() {
		n.logger.Warn("no raft.bootstrap_expect and nothing to join: this node waits to be joined (shoal node join) before admin writes work")
	}
	n.logger.Info("node started", "http", ln.Addr().String(), "gossip", n.gossip.LocalAddr(), "raft", n.store.Addr(),
		"models", n.sched.Models(), "version", Version)
	return nil
}

func (n *Node) goBackground(f func()) {
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		f()
	}()
}

func (n *Node) startModel(ctx context.Context, m ModelConfig) error {
	maxSize, flush, slots := n.cfg.ModelBatching(m, n.gpuCapacity().Count)
	st := scheduler.Settings{MaxSize: maxSize, FlushTimeout: flush, MaxQueue: n.cfg.Batching.MaxQueue, Slots: slots}
	backend, err := n.newBackend(ctx, m)
	if err != nil {
		return fmt.Errorf("model %q: %w", m.Name, err)
	}
	if err := n.sched.AddModel(m.Name, backend, st); err != nil {
		return fmt.Errorf("start model %q: %w", m.Name, err)
	}
	n.watchBackend(m.Name, backend)
	n.defaultBatching[m.Name] = consensus.BatchingSettings{MaxSize: maxSize, FlushTimeout: flush}
	n.health.Register("model/"+m.Name, func() ops.Component {
		l := n.sched.Load()[m.Name]
		return ops.Component{Status: ops.StatusOK, Data: map[string]any{
			"backend": m.Backend, "queue_depth": l.QueueDepth, "active_batches": l.ActiveBatches, "running": l.Running, "slots": l.Slots,
		}}
	})
	return nil
}

func (n *Node) newBackend(ctx context.Context, m ModelConfig) (any, error) {
	switch m.Backend {
	case "engine":
		e := m.Engine
		return engine.New(ctx, engine.Config{Checkpoint: e.Checkpoint, Tokenizer: e.Tokenizer, DataDir: n.cfg.DataDir,
			Quantize: e.Quantize, MaxSequences: e.MaxSequences, Threads: e.Threads, KVCacheBytes: int64(e.KVCacheMB) << 20,
			NoPrefixCache: !e.PrefixCache, Logger: n.logger})
	case "sim":
		sc := m.Sim
		sc.Model = m.Name
		return sim.New(sc)
	case "openai":
		key := ""
		if m.OpenAI.APIKeyEnv != "" {
			key = os.Getenv(m.OpenAI.APIKeyEnv)
		}
		return openai.New(openai.Config{Model: m.Name, URL: m.OpenAI.URL, UpstreamModel: m.OpenAI.Model, APIKey: key,
			Timeout: m.OpenAI.Timeout, MaxConns: m.OpenAI.MaxConns, Logger: n.logger})
	case "triton":
		return n.newTritonBackend(m)
	}
	return nil, fmt.Errorf("backend %q is not available in this build", m.Backend)
}

func (n *Node) setDraining()     { n.draining.Store(true) }
func (n *Node) isDraining() bool { return n.draining.Load() }

func (n *Node) schedulerHealth() ops.Component {
	if n.isDraining() {
		return ops.Component{Status: ops.StatusUnavailable, Critical: true, Detail: "draining"}
	}
	depth := 0
	for _, l := range n.sched.Load() {
		depth += l.QueueDepth
	}
	c := ops.Component{Status: ops.StatusOK, Critical: true, Data: map[string]any{"queue_depth": depth, "models": len(n.sched.Models())}}
	if depth > 100 {
		// The seed guide's critical queue depth.
		c.Status, c.Detail = ops.StatusDegraded, "queue depth above 100"
	}
	return c
}

func (n *Node) routes() http.Handler {
	mux := httpapi.NewRouter()
	n.api.Register(mux)
	v2 := newKServe(n)
	mux.Handle("/v2", v2)
	mux.Handle("/v2/", v2)
	mux.HandleFunc("/health", httpapi.Methods(n.health.ServeHTTP, http.MethodGet, http.MethodHead))
	mux.HandleFunc("/metrics", httpapi.Methods(n.metrics.Handler().ServeHTTP, http.MethodGet))
	mux.Handle("/admin/v1/", n.admin)
	webUI := ui.New(ui.Config{Node: n.cfg.NodeName, Token: n.cfg.Admin.Token, Open: n.cfg.Dev && n.cfg.Admin.Token == "", Metrics: n.metrics.Registry, Logger: n.logger})
	mux.Handle("/ui/", webUI)
	mux.Handle("/ui", webUI)
	mux.Handle("/debug/pprof/", n.pprofHandler())
	mux.HandleFunc("/", httpapi.NotFound)
	return httpapi.Middleware(n.cfg.NodeName, n.logger, mux)
}

// HTTPAddr is the address the HTTP server listens on.
func (n *Node) HTTPAddr() string {
	if n.httpLn == nil {
		return ""
	}
	return n.httpLn.Addr().String()
}

// GossipAddr is the gossip address other nodes join.
func (n *Node) GossipAddr() string {
	if n.gossip == nil {
		return ""
	}
	return n.gossip.LocalAddr()
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.NodeName }

// Scheduler exposes the local batcher (for tests).
func (n *Node) Scheduler() *scheduler.Scheduler { return n.sched }

// Store exposes the Raft store (for tests).
func (n *Node) Store() *consensus.Store { return n.store }

// Gossip exposes the membership (for tests).
func (n *Node) Gossip() *gossip.Gossip { return n.gossip }

// Shutdown drains the node: peers stop routing here, it stops accepting
// connections and new work, lets queued and running requests finish until
// ctx ends, then releases everything. The node stays a Raft member (a
// restart rejoins); Leave removes it for good. Safe to call more than once.
func (n *Node) Shutdown(ctx context.Context) error {
	n.mu.Lock()
	if n.stopped || !n.started {
		n.mu.Unlock()
		return nil
	}
	n.stopped = true
	n.mu.Unlock()
	n.logger.Info("draining")
	n.setDraining()
	if n.gossip != nil {
		n.publishLoad()
	}
	var httpErr error
	var wg sync.WaitGroup
	if n.httpSrv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.httpSrv.Shutdown(ctx); err != nil {
				httpErr = fmt.Errorf("http shutdown: %w", err)
				_ = n.httpSrv.Close()
			}
		}()
	}
	if err := n.sched.Drain(ctx); err != nil {
		n.logger.Warn("drain incomplete", "err", err)
	}
	wg.Wait()
	n.closePartial()
	n.logger.Info("stopped")
	return httpErr
}

// cacheCloseTimeout bounds the cache member's shutdown at node shutdown.
const cacheCloseTimeout = 2 * time.Second

// closePartial releases whatever Start opened.
func (n *Node) closePartial() {
	if n.cancel != nil {
		n.cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if n.httpSrv == nil && n.httpLn != nil && n.cfg.HTTPListener == nil {
		_ = n.httpLn.Close()
	}
	if n.httpSrv != nil {
		_ = n.httpSrv.Close()
	}
	_ = n.sched.Drain(ctx)
	if n.gossip != nil {
		if err := n.gossip.Shutdown(); err != nil {
			n.logger.Warn("gossip shutdown", "err", err)
		}
	}
	if n.limiter != nil {
		if err := n.limiter.Close(ctx); err != nil {
			n.logger.Warn("rate limiter close", "err", err)
		}
	}
	if n.cache != nil {
		// Olric's graceful leave waits for peers that, when the whole
		// cluster stops together, are leaving too; the cache holds nothing
		// that must outlive the node, so it gets 2 s, not the full bound.
		cctx, ccancel := context.WithTimeout(ctx, cacheCloseTimeout)
		if err := n.cache.Close(cctx); err != nil {
			n.logger.Warn("cache close", "err", err)
		}
		ccancel()
	}
	if n.store != nil {
		if err := n.store.Shutdown(); err != nil {
			n.logger.Warn("raft shutdown", "err", err)
		}
	}
	n.closePeer()
	n.fwd.Close()
	n.bg.Wait()
}
