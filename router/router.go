// Package router picks the node that runs a request and forwards it there.
//
// Picking is filter, then score, then choose: candidates that are not alive,
// whose load report is stale or whose breaker is open are dropped; the rest
// are scored by queued work per slot, counting the requests this node has
// sent to each target since the target's last load report (so many routers
// do not herd onto the node that looked idle a moment ago); then power of
// two choices picks between two random candidates, and the local node wins
// any tie so the request saves a network hop.
package router

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"
)

// Policies.
const (
	PolicyLeastQueued = "least-queued"
	PolicyRoundRobin  = "round-robin"
	PolicyRandom      = "random"
)

// ErrNoCandidate means no live node serves the model.
var ErrNoCandidate = errors.New("no healthy node serves the model")

// Candidate is one node that serves the model, with its last known load.
type Candidate struct {
	Node     string
	HTTPAddr string
	// Model is the model the request names; the forwarder learns its
	// service time per model to bound each hop.
	Model string
	// Local is this node itself; its load is read directly, never stale.
	Local bool
	// QueueDepth and Running are the target's queued and running requests
	// for the model at its last report; Slots its batch slots.
	QueueDepth int
	Running    int
	Slots      int
	// LoadAge is how old the load report is.
	LoadAge time.Duration
	// LoadAt is when the load report was produced (local clock); sends
	// after it are not in the report, so the router adds them.
	LoadAt time.Time
	// Open marks a target whose breaker for the model is open.
	Open bool
}

// Config configures a Router.
type Config struct {
	// Policy is least-queued (default), round-robin or random.
	Policy string
	// StaleAfter drops remote candidates whose load report is older (default
	// 5s): an old "idle" is not to be trusted.
	StaleAfter time.Duration
	// Seed seeds the random choices (0: random).
	Seed uint64
}

// Router picks targets. It is safe for concurrent use.
type Router struct {
	policy string
	stale  time.Duration

	mu  sync.Mutex
	rng *rand.Rand
	rr  map[string]int
	// sent holds the times of recent sends to each node, oldest first.
	sent map[string][]time.Time
}

// maxTrackedSends bounds the send history kept per node.
const maxTrackedSends = 4096

// New returns a router.
func New(cfg Config) (*Router, error) {
	if cfg.Policy == "" {
		cfg.Policy = PolicyLeastQueued
	}
	switch cfg.Policy {
	case PolicyLeastQueued, PolicyRoundRobin, PolicyRandom:
	default:
		return nil, fmt.Errorf("router.policy must be %q, %q or %q, got %q", PolicyLeastQueued, PolicyRoundRobin, PolicyRandom, cfg.Policy)
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = 5 * time.Second
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Router{policy: cfg.Policy, stale: cfg.StaleAfter, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), rr: map[string]int{}, sent: map[string][]time.Time{}}, nil
}

// Policy returns the configured policy.
func (r *Router) Policy() string { return r.policy }

// Filter drops candidates that must not receive work: open breakers,
// excluded nodes (already tried) and remote nodes with stale load.
func (r *Router) Filter(cands []Candidate, exclude map[string]bool) []Candidate {
	out := make([]Candidate, 0, len(cands))
	for _, c := range cands {
		if c.Open || exclude[c.Node] || (!c.Local && c.LoadAge > r.stale) {
			continue
		}
		out = append(out, c)
	}
	return out
}

// Score is a candidate's expected wait: queued and running work, plus what
// this node sent since the last report, per batch slot. Lower is better.
func (r *Router) score(c Candidate) float64 {
	slots := max(c.Slots, 1)
	work := c.QueueDepth + c.Running
	if !c.Local {
		work += r.sentSince(c.Node, c.LoadAt)
	}
	return float64(work) / float64(slots)
}

// sentSince counts sends to node after t; the history is in time order.
func (r *Router) sentSince(node string, t time.Time) int {
	s := r.sent[node]
	return len(s) - sort.Search(len(s), func(i int) bool { return s[i].After(t) })
}

// recordSend appends a send. Sends older than a stale report can no longer
// matter; they are dropped in bulk, so a send costs O(1) amortised.
func (r *Router) recordSend(node string, now time.Time) {
	s := append(r.sent[node], now)
	if len(s) > 2*maxTrackedSends || now.Sub(s[0]) > 2*r.stale {
		cut := sort.Search(len(s), func(i int) bool { return now.Sub(s[i]) <= r.stale })
		cut = max(cut, len(s)-maxTrackedSends)
		s = append(s[:0:0], s[cut:]...)
	}
	r.sent[node] = s
}

// Pick chooses a target among cands for one request and records the send.
// The reason says how it was chosen, for the X-Shoal-Route header.
func (r *Router) Pick(cands []Candidate, exclude map[string]bool) (Candidate, string, error) {
	cands = r.Filter(cands, exclude)
	if len(cands) == 0 {
		return Candidate{}, "", ErrNoCandidate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var pick Candidate
	switch r.policy {
	case PolicyRoundRobin:
		key := ""
		for _, c := range cands {
			key += c.Node + ","
		}
		i := r.rr[key] % len(cands)
		r.rr[key] = i + 1
		if len(r.rr) > 1024 {
			clear(r.rr)
		}
		pick = cands[i]
	case PolicyRandom:
		pick = cands[r.rng.IntN(len(cands))]
	default:
		pick = r.pickLeastQueued(cands)
	}
	if !pick.Local {
		r.recordSend(pick.Node, time.Now())
	}
	return pick, r.policy, nil
}

func (r *Router) pickLeastQueued(cands []Candidate) Candidate {
	if len(cands) == 1 {
		return cands[0]
	}
	i := r.rng.IntN(len(cands))
	j := r.rng.IntN(len(cands) - 1)
	if j >= i {
		j++
	}
	a, b := cands[i], cands[j]
	sa, sb := r.score(a), r.score(b)
	best, bs := a, sa
	if sb < sa || (sb == sa && b.Local) {
		best, bs = b, sb
	}
	// The local node is always a candidate worth checking: serving here
	// saves a hop, so it wins whenever it is no worse than the pick.
	for _, c := range cands {
		if c.Local && !best.Local && r.score(c) <= bs {
			return c
		}
	}
	return best
}
