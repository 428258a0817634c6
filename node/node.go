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
	"sync"
	"time"

	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/scheduler"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

// Version is the shoal release this node runs; main overrides it at build
// time.
var Version = "0.1.0-dev"

// Node is one shoal daemon.
type Node struct {
	cfg     Config
	logger  *slog.Logger
	metrics *ops.Metrics
	health  *ops.Health
	sched   *scheduler.Scheduler
	api     *api

	httpLn  net.Listener
	httpSrv *http.Server

	mu      sync.Mutex
	started bool
	stopped bool
	serveWG sync.WaitGroup
}

// New builds a node from a validated configuration; it opens no ports until
// Start.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, &ConfigError{err}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	logger := cfg.Logger.With("node", cfg.NodeName)
	metrics := ops.NewMetrics()
	n := &Node{
		cfg:     cfg,
		logger:  logger,
		metrics: metrics,
		health:  ops.NewHealth(cfg.NodeName),
		sched:   scheduler.New(scheduler.Config{Logger: logger, Observer: metrics}),
	}
	n.api = &api{node: cfg.NodeName, cfg: cfg.HTTP, sched: n.sched, metrics: metrics, logger: logger.With("component", "api")}
	return n, nil
}

// Start opens the node's ports, starts its models and serves until
// Shutdown. It returns once the node accepts requests.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	if n.started {
		n.mu.Unlock()
		return errors.New("node already started")
	}
	n.started = true
	n.mu.Unlock()

	for _, m := range n.cfg.Models {
		if err := n.startModel(ctx, m); err != nil {
			n.closePartial()
			return err
		}
	}
	n.health.Register("scheduler", n.schedulerHealth)

	ln := n.cfg.HTTPListener
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", n.cfg.HTTP.Addr)
		if err != nil {
			n.closePartial()
			return fmt.Errorf("listen http %s: %w", n.cfg.HTTP.Addr, err)
		}
	}
	n.httpLn = ln
	n.httpSrv = &http.Server{
		Handler:           n.routes(),
		ReadHeaderTimeout: n.cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       n.cfg.HTTP.ReadTimeout,
		IdleTimeout:       n.cfg.HTTP.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(n.logger.Handler(), slog.LevelWarn),
	}
	n.serveWG.Add(1)
	go func() {
		defer n.serveWG.Done()
		if err := n.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("http server stopped", "err", err)
		}
	}()
	n.logger.Info("node started", "http", ln.Addr().String(), "models", n.sched.Models(), "version", Version)
	return nil
}

func (n *Node) startModel(ctx context.Context, m ModelConfig) error {
	maxSize, flush, slots := n.cfg.ModelBatching(m, n.cfg.GPU.Count)
	st := scheduler.Settings{MaxSize: maxSize, FlushTimeout: flush, MaxQueue: n.cfg.Batching.MaxQueue, Slots: slots}
	var backend any
	switch m.Backend {
	case "sim":
		sc := m.Sim
		sc.Model = m.Name
		b, err := sim.New(sc)
		if err != nil {
			return fmt.Errorf("model %q: %w", m.Name, err)
		}
		backend = b
	default:
		return fmt.Errorf("model %q: backend %q is not available in this build", m.Name, m.Backend)
	}
	if err := n.sched.AddModel(m.Name, backend, st); err != nil {
		return fmt.Errorf("start model %q: %w", m.Name, err)
	}
	n.health.Register("model/"+m.Name, func() ops.Component {
		l := n.sched.Load()[m.Name]
		return ops.Component{Status: ops.StatusOK, Critical: false, Data: map[string]any{
			"backend": m.Backend, "queue_depth": l.QueueDepth, "active_batches": l.ActiveBatches, "slots": l.Slots,
		}}
	})
	return nil
}

func (n *Node) schedulerHealth() ops.Component {
	n.mu.Lock()
	stopped := n.stopped
	n.mu.Unlock()
	if stopped {
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
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/chat/completions", methods(n.api.handler(scheduler.EndpointChat, decodeChat), http.MethodPost))
	mux.HandleFunc("/v1/completions", methods(n.api.handler(scheduler.EndpointCompletion, decodeCompletion), http.MethodPost))
	mux.HandleFunc("/v1/infer", methods(n.api.handler(scheduler.EndpointInfer, decodeInfer), http.MethodPost))
	mux.HandleFunc("/v1/models", methods(n.api.models, http.MethodGet, http.MethodHead))
	mux.HandleFunc("/health", methods(n.health.ServeHTTP, http.MethodGet, http.MethodHead))
	mux.HandleFunc("/metrics", methods(n.metrics.Handler().ServeHTTP, http.MethodGet))
	mux.HandleFunc("/", notFound)
	return middleware(n.cfg.NodeName, newCodec(), n.logger, mux)
}

// HTTPAddr is the address the HTTP server listens on.
func (n *Node) HTTPAddr() string {
	if n.httpLn == nil {
		return ""
	}
	return n.httpLn.Addr().String()
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.NodeName }

// Scheduler exposes the local batcher (for the admin API and tests).
func (n *Node) Scheduler() *scheduler.Scheduler { return n.sched }

// Shutdown drains the node: it stops accepting connections and new work,
// lets queued and running requests finish until ctx ends, then releases
// everything. It is safe to call more than once.
func (n *Node) Shutdown(ctx context.Context) error {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return nil
	}
	n.stopped = true
	n.mu.Unlock()
	n.logger.Info("draining")
	var errs []error
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
	errs = append(errs, httpErr)
	n.serveWG.Wait()
	n.logger.Info("stopped")
	return errors.Join(errs...)
}

func (n *Node) closePartial() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = n.sched.Drain(ctx)
}
