package node

import (
	"context"
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops"
)

// breakerGlue gives the breaker package this node's replicated breaker
// state and proposes its transitions through Raft.
type breakerGlue struct{ n *Node }

func (g breakerGlue) Breaker(model string) consensus.BreakerState {
	return g.n.store.State().Breaker(g.n.cfg.NodeName, model)
}

func (g breakerGlue) ProposeBreaker(ctx context.Context, tr consensus.BreakerTransition) error {
	return g.n.applyCommand(ctx, tr)
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

// breakerHealth reports this node's breakers as it knows them (a trip not
// replicated yet counts); a node whose every model is behind an open breaker
// cannot serve.
func (n *Node) breakerHealth() ops.Component {
	open := []string{}
	models := n.sched.Models()
	for _, m := range models {
		if n.breakers.Open(m) {
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
