package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/engine"
	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/scheduler"
)

// Breaker tuning beyond the configured threshold and timeout.
const (
	// breakerMaxOpen caps the growing open time of a flapping backend.
	breakerMaxOpen = 10 * time.Minute
	// breakerFlapWindow: a breaker that opens again this soon after closing
	// keeps its trip count, so each re-open lasts twice as long.
	breakerFlapWindow = time.Minute
	// breakerTransitionsPerMinute bounds the transitions one breaker
	// proposes to Raft; past it the breaker stays open longer.
	breakerTransitionsPerMinute = 6
	// breakerRateWindow and breakerRateMin set the error-rate trip: at least
	// breakerRateMin requests in the window, half of them failed.
	breakerRateWindow = 30 * time.Second
	breakerRateMin    = 20
)

// errBreakerOpen answers a request for a model whose breaker on this node
// is open (or half-open with its probe in flight); the routing node retries
// it elsewhere.
var errBreakerOpen = errors.New("circuit breaker open")

// breakers tracks this node's own backends. Each (node, model) breaker is
// driven by the node that runs the model: it counts failures and proposes
// transitions through Raft; every node reads the replicated state to route.
type breakers struct {
	n  *Node
	mu sync.Mutex
	m  map[string]*breakerTracker
}

type breakerTracker struct {
	consecutive int
	window      []outcome
	probing     bool
	closedAt    time.Time
	proposals   []time.Time
	proposing   bool
}

type outcome struct {
	at     time.Time
	failed bool
}

func (b *breakers) tracker(model string) *breakerTracker {
	if b.m == nil {
		b.m = map[string]*breakerTracker{}
	}
	t, ok := b.m[model]
	if !ok {
		t = &breakerTracker{}
		b.m[model] = t
	}
	return t
}

// isBackendFailure says whether err counts against the backend: client
// cancellations, deadlines, full queues and upstream 4xx do not.
func isBackendFailure(err error) bool {
	if err == nil {
		return false
	}
	var ae *apiError
	var us UpstreamStatus
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, scheduler.ErrQueueFull), errors.Is(err, scheduler.ErrDraining),
		errors.Is(err, scheduler.ErrUnknownModel), errors.Is(err, errBreakerOpen), errors.As(err, &ae),
		errors.Is(err, engine.ErrPromptTooLong):
		return false
	case errors.As(err, &us):
		return us.HTTPStatus() >= 500
	}
	return true
}

// admit decides whether a request may run on model here: always when
// closed, never when open, and one probe at a time when half-open. done
// must be called with the outcome when admitted.
func (b *breakers) admit(model string) (done func(error), ok bool) {
	st := b.n.store.State().Breaker(b.n.cfg.NodeName, model)
	switch st.State {
	case consensus.BreakerOpen:
		b.maybeHalfOpen(model, st)
		return nil, false
	case consensus.BreakerHalfOpen:
		b.mu.Lock()
		t := b.tracker(model)
		if t.probing {
			b.mu.Unlock()
			return nil, false
		}
		t.probing = true
		b.mu.Unlock()
		return func(err error) {
			b.mu.Lock()
			b.tracker(model).probing = false
			b.mu.Unlock()
			b.probeResult(model, err)
		}, true
	}
	return func(err error) { b.observe(model, err) }, true
}

// observe records an outcome of a closed breaker and opens it when the
// consecutive failures or the error rate cross their thresholds.
func (b *breakers) observe(model string, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	failed := isBackendFailure(err)
	now := time.Now()
	b.mu.Lock()
	t := b.tracker(model)
	if failed {
		t.consecutive++
	} else {
		t.consecutive = 0
	}
	t.window = append(t.window, outcome{at: now, failed: failed})
	for len(t.window) > 0 && now.Sub(t.window[0].at) > breakerRateWindow {
		t.window = t.window[1:]
	}
	fails := 0
	for _, o := range t.window {
		if o.failed {
			fails++
		}
	}
	trip := failed && (t.consecutive >= b.n.cfg.CircuitBreaker.FailureThreshold ||
		(len(t.window) >= breakerRateMin && fails*2 >= len(t.window)))
	b.mu.Unlock()
	if trip {
		b.open(model, consensus.BreakerClosed, fmt.Sprintf("%d consecutive failures, %d/%d in %s: %v", t.consecutive, fails, len(t.window), breakerRateWindow, err))
	}
}

// open proposes from → open with a timeout that doubles for a flapping
// backend.
func (b *breakers) open(model string, from consensus.BreakerStatus, reason string) {
	now := time.Now()
	cur := b.n.store.State().Breaker(b.n.cfg.NodeName, model)
	b.mu.Lock()
	t := b.tracker(model)
	trips := 1
	if from == consensus.BreakerHalfOpen || (!t.closedAt.IsZero() && now.Sub(t.closedAt) < breakerFlapWindow) {
		trips = cur.Trips + 1
	}
	t.consecutive, t.window = 0, nil
	b.mu.Unlock()
	d := b.n.cfg.CircuitBreaker.Timeout << min(trips-1, 8)
	d = min(d, breakerMaxOpen)
	b.propose(model, consensus.BreakerTransition{Node: b.n.cfg.NodeName, Model: model, From: from, To: consensus.BreakerOpen,
		At: now, OpenUntil: now.Add(d), Trips: trips, Reason: reason})
}

// maybeHalfOpen moves an open breaker whose time is up to half-open, unless
// the breaker already changed state too often this minute.
func (b *breakers) maybeHalfOpen(model string, st consensus.BreakerState) {
	now := time.Now()
	if now.Before(st.OpenUntil) {
		return
	}
	b.propose(model, consensus.BreakerTransition{Node: b.n.cfg.NodeName, Model: model, From: consensus.BreakerOpen,
		To: consensus.BreakerHalfOpen, At: now, Trips: st.Trips, Reason: "open timeout passed; probing"})
}

// tick moves this node's open breakers whose time is up to half-open, so
// probing starts even though no router sends work to an open target.
func (b *breakers) tick() {
	st := b.n.store.State()
	for _, m := range b.n.sched.Models() {
		if cur := st.Breaker(b.n.cfg.NodeName, m); cur.State == consensus.BreakerOpen {
			b.maybeHalfOpen(m, cur)
		}
	}
}

func (b *breakers) probeResult(model string, err error) {
	if isBackendFailure(err) {
		b.open(model, consensus.BreakerHalfOpen, fmt.Sprintf("probe failed: %v", err))
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	cur := b.n.store.State().Breaker(b.n.cfg.NodeName, model)
	b.mu.Lock()
	b.tracker(model).closedAt = time.Now()
	b.mu.Unlock()
	b.propose(model, consensus.BreakerTransition{Node: b.n.cfg.NodeName, Model: model, From: consensus.BreakerHalfOpen,
		To: consensus.BreakerClosed, At: time.Now(), Trips: cur.Trips, Reason: "probe succeeded"})
}

// propose commits a transition in the background, at most
// breakerTransitionsPerMinute per breaker (an open breaker stays open when
// the budget is spent), one proposal at a time.
func (b *breakers) propose(model string, tr consensus.BreakerTransition) {
	now := time.Now()
	b.mu.Lock()
	t := b.tracker(model)
	for len(t.proposals) > 0 && now.Sub(t.proposals[0]) > time.Minute {
		t.proposals = t.proposals[1:]
	}
	if t.proposing || (len(t.proposals) >= breakerTransitionsPerMinute && tr.To != consensus.BreakerOpen) {
		b.mu.Unlock()
		return
	}
	t.proposing = true
	t.proposals = append(t.proposals, now)
	b.mu.Unlock()
	b.n.goBackground(func() {
		defer func() {
			b.mu.Lock()
			b.tracker(model).proposing = false
			b.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := b.n.applyCommand(ctx, tr)
		switch {
		case err == nil:
			b.n.logger.Warn("circuit breaker", "model", model, "from", tr.From, "to", tr.To, "trips", tr.Trips, "reason", tr.Reason)
		case errors.Is(err, consensus.ErrBreakerConflict):
		default:
			b.n.logger.Warn("propose breaker transition", "model", model, "to", tr.To, "err", err)
		}
	})
}

// breakerAction forces a breaker: open (for the configured timeout), close
// or reset (forget its trips). Both close and reset delete the replicated
// entry, since an absent breaker is closed with no trips.
func (n *Node) breakerAction(ctx context.Context, node, model, action string) error {
	cur := n.store.State().Breaker(node, model)
	switch action {
	case "open":
		if cur.State == consensus.BreakerOpen {
			return nil
		}
		now := time.Now()
		return n.applyCommand(ctx, consensus.BreakerTransition{Node: node, Model: model, From: cur.State, To: consensus.BreakerOpen,
			At: now, OpenUntil: now.Add(n.cfg.CircuitBreaker.Timeout), Trips: cur.Trips + 1, Reason: "opened by operator", Force: true})
	case "close", "reset":
		if _, ok := n.store.State().Breakers[consensus.BreakerKey(node, model)]; !ok {
			return nil
		}
		return n.applyCommand(ctx, consensus.DeleteBreaker{Node: node, Model: model})
	}
	return fmt.Errorf("breaker action %q: %w", action, ops.ErrAdminBadRequest)
}

// exportBreakers sets inference_breaker_state from the replicated state.
func (n *Node) exportBreakers() {
	st := n.store.State()
	n.metrics.BreakerState.Reset()
	for _, b := range st.Breakers {
		v := 0.0
		switch b.State {
		case consensus.BreakerHalfOpen:
			v = 1
		case consensus.BreakerOpen:
			v = 2
		}
		n.metrics.BreakerState.WithLabelValues(b.Node, b.Model).Set(v)
	}
	for _, m := range n.sched.Models() {
		if _, ok := st.Breakers[consensus.BreakerKey(n.cfg.NodeName, m)]; !ok {
			n.metrics.BreakerState.WithLabelValues(n.cfg.NodeName, m).Set(0)
		}
	}
}

// breakerHealth reports this node's breakers; a node whose every model is
// behind an open breaker cannot serve.
func (n *Node) breakerHealth() ops.Component {
	st := n.store.State()
	open := []string{}
	models := n.sched.Models()
	for _, m := range models {
		if st.Breaker(n.cfg.NodeName, m).State == consensus.BreakerOpen {
			open = append(open, m)
		}
	}
	c := ops.Component{Status: ops.StatusOK, Critical: true, Data: map[string]any{"open": open}}
	switch {
	case len(models) > 0 && len(open) == len(models):
		c.Status, c.Detail = ops.StatusUnavailable, "every model's breaker is open"
	case len(open) > 0:
		c.Status, c.Detail = ops.StatusDegraded, fmt.Sprintf("%d breaker(s) open", len(open))
	}
	return c
}

// retryBudget allows retries up to a fifth of recent requests (plus a
// small floor), so a dead backend never multiplies load.
type retryBudget struct {
	mu     sync.Mutex
	tokens float64
}

const (
	retryRatio  = 0.2
	retryTokens = 10
)

func (r *retryBudget) request() {
	r.mu.Lock()
	r.tokens = min(r.tokens+retryRatio, retryTokens)
	r.mu.Unlock()
}

func (r *retryBudget) take() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tokens < 1 {
		return false
	}
	r.tokens--
	return true
}
