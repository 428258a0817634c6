package node

import (
	"context"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/scheduler/triton"
)

// upstreamProbe watches a triton model's upstream readiness: it feeds
// /health, and a failed check counts against the model's breaker as a
// failed request would, so a node whose upstream is down stops taking
// traffic before clients pay for finding out.
type upstreamProbe struct {
	model    string
	url      string
	backend  *triton.Backend
	interval time.Duration

	mu     sync.Mutex
	ready  bool
	err    error
	probed bool
}

func (n *Node) newTritonBackend(m ModelConfig) (*triton.Backend, error) {
	tc := m.Triton
	b, err := triton.New(triton.Config{Model: m.Name, URL: tc.URL, UpstreamModel: tc.Model, Version: tc.Version,
		Timeout: tc.Timeout, MaxConns: tc.MaxConns, Logger: n.logger})
	if err != nil {
		return nil, err
	}
	p := &upstreamProbe{model: m.Name, url: tc.URL, backend: b, interval: tc.HealthInterval}
	n.upstreams = append(n.upstreams, p)
	n.health.Register("upstream/"+m.Name, p.component)
	return b, nil
}

// probeUpstreams checks every triton upstream at its interval until ctx
// ends.
func (n *Node) probeUpstreams(ctx context.Context) {
	var wg sync.WaitGroup
	for _, p := range n.upstreams {
		wg.Go(func() {
			for {
				n.probeOnce(ctx, p)
				select {
				case <-ctx.Done():
					return
				case <-time.After(p.interval):
				}
			}
		})
	}
	wg.Wait()
}

func (n *Node) probeOnce(ctx context.Context, p *upstreamProbe) {
	err := p.backend.Probe(ctx)
	if ctx.Err() != nil {
		return
	}
	p.mu.Lock()
	was, first := p.ready, !p.probed
	p.ready, p.err, p.probed = err == nil, err, true
	p.mu.Unlock()
	switch {
	case err != nil && (was || first):
		n.logger.Warn("triton upstream not ready", "model", p.model, "err", err)
	case err == nil && !was && !first:
		n.logger.Info("triton upstream ready again", "model", p.model)
	}
	// Only a closed breaker counts outcomes; an open one waits for its
	// timeout and probes with a request, as for any backend.
	if err != nil && n.store != nil && n.store.State().Breaker(n.cfg.NodeName, p.model).State == consensus.BreakerClosed {
		n.breakers.Observe(p.model, err)
	}
}

func (p *upstreamProbe) component() ops.Component {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := ops.Component{Status: ops.StatusOK, Data: map[string]any{"backend": "triton", "url": p.url, "ready": p.ready}}
	switch {
	case !p.probed:
		c.Detail = "not checked yet"
	case !p.ready:
		c.Status, c.Detail = ops.StatusDegraded, p.err.Error()
	}
	return c
}
