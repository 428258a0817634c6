// Package router picks the node that runs a request and forwards it there.
//
// Picking is filter, then score, then choose: candidates that are not alive,
// whose load report is stale or whose breaker is open are dropped; the rest
// are scored by when one more request would finish there (least-expected:
// queued and running work, counting the requests this node has sent to each
// target since the target's last load report so many routers do not herd
// onto the node that looked idle a moment ago, over the target's measured
// batch cost), discounted by how much of the prompt's prefix the target
// likely holds in its KV cache; then power of two choices picks between two
// random candidates (plus the best prefix holder), and the local node wins
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
	PolicyLeastExpected = "least-expected"
	PolicyLeastQueued   = "least-queued"
	PolicyRoundRobin    = "round-robin"
	PolicyRandom        = "random"
)

// Reasons a target was picked, besides the policy names: the prompt's
// prefix is likely cached there, the local node was no worse than the
// best, or an earlier try failed. Callers label X-Shoal-Route and the
// route-reason metric with them.
const (
	ReasonPrefix = "prefix"
	ReasonLocal  = "local"
	ReasonRetry  = "retry"
)

// DefaultPrefixWeight is how much a full prefix hit discounts a target's
// expected completion: 0.25 lets a node holding the whole prefix win while
// its expected completion is under 1.33 times the best other's, so hot
// prefixes spread once their node is busier instead of piling up there.
// (In BenchmarkPrefixRouting 0.5 reached the same hit ratio with twice the
// TTFT p50: the holders' running sets grew, and every step with them.)
const DefaultPrefixWeight = 0.25

// ErrNoCandidate means no live node serves the model.
var ErrNoCandidate = errors.New("no healthy node serves the model")

// Candidate is one node that serves the model, with its last known load.
type Candidate struct {
	Node     string
	HTTPAddr string
	// PeerAddr is the target's peer-plane (Raft) address; forwards go
	// there when the Forwarder has a PeerDial, else to HTTPAddr.
	PeerAddr string
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
	// ActiveBatches is how many batches the target runs now (0 on a
	// continuous backend, which has running sequences instead).
	ActiveBatches int
	// MaxBatch is the most requests the target runs in one batch.
	MaxBatch int
	// ServiceBase and ServicePerItem are the target's measured batch cost
	// (base + per-item*size); zero when not measured yet.
	ServiceBase    time.Duration
	ServicePerItem time.Duration
	// Prefix summarises the prompt prefixes the target served recently.
	Prefix PrefixSummary
	// LocalPrefix, when set, scores prefix hits instead of Prefix: the local node's exact
	// index (PrefixIndex.Exact).
	LocalPrefix PrefixHolder
}

// Request is what the router knows of the request it places.
type Request struct {
	// Prefix are the prompt's block hashes (PrefixHashes); nil disables
	// prefix scoring for this request.
	Prefix []uint64
}

// Config configures a Router.
type Config struct {
	// Policy is least-expected (default), least-queued, round-robin or
	// random.
	Policy string
	// PrefixWeight (0..1) is how much a full prefix hit discounts a
	// target's expected completion under least-expected; nil means
	// DefaultPrefixWeight, 0 turns prefix scoring off.
	PrefixWeight *float64
	// StaleAfter drops remote candidates whose load report is older (default
	// 5s): an old "idle" is not to be trusted.
	StaleAfter time.Duration
	// Seed seeds the random choices (0: random).
	Seed uint64
}

// Router picks targets. It is safe for concurrent use.
type Router struct {
	policy       string
	stale        time.Duration
	prefixWeight float64

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
		cfg.Policy = PolicyLeastExpected
	}
	switch cfg.Policy {
	case PolicyLeastExpected, PolicyLeastQueued, PolicyRoundRobin, PolicyRandom:
	default:
		return nil, fmt.Errorf("router.policy must be %q, %q, %q or %q, got %q", PolicyLeastExpected, PolicyLeastQueued, PolicyRoundRobin, PolicyRandom, cfg.Policy)
	}
	pw := DefaultPrefixWeight
	if cfg.PrefixWeight != nil {
		pw = *cfg.PrefixWeight
	}
	if pw < 0 || pw > 1 {
		return nil, fmt.Errorf("router.prefix_weight must be between 0 and 1, got %g", pw)
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = 5 * time.Second
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Router{policy: cfg.Policy, stale: cfg.StaleAfter, prefixWeight: pw, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), rr: map[string]int{}, sent: map[string][]time.Time{}}, nil
}

// Policy returns the configured policy.
func (r *Router) Policy() string { return r.policy }

// Filter drops candidates that must not receive work: open breakers,
// excluded nodes (already tried) and remote nodes with stale load. When
// it drops none it returns cands itself (capacity clipped, so an append
// copies), which saves a copy per request.
func (r *Router) Filter(cands []Candidate, exclude map[string]bool) []Candidate {
	drop := func(c *Candidate) bool {
		return c.Open || exclude[c.Node] || (!c.Local && c.LoadAge > r.stale)
	}
	keep := 0
	for i := range cands {
		if !drop(&cands[i]) {
			keep++
		}
	}
	if keep == len(cands) {
		return cands[:keep:keep]
	}
	out := make([]Candidate, 0, keep)
	for i := range cands {
		if !drop(&cands[i]) {
			out = append(out, cands[i])
		}
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

// Pick chooses a target among cands for a request the router knows nothing
// about; see Route.
func (r *Router) Pick(cands []Candidate, exclude map[string]bool) (Candidate, string, error) {
	return r.Route(Request{}, cands, exclude)
}

// Route chooses a target among cands for req and records the send. The
// reason says why it was chosen (a policy name, ReasonPrefix or
// ReasonLocal), for the X-Shoal-Route header and metrics.
func (r *Router) Route(req Request, cands []Candidate, exclude map[string]bool) (Candidate, string, error) {
	return r.RouteAt(req, cands, exclude, time.Now())
}

// RouteAt is Route with the clock supplied by the caller, which dates the
// send for the in-flight correction. The cluster simulator (clustersim)
// runs the real filter, score and pick on simulated time through it, so a
// change to the scoring is simulated as it will run.
func (r *Router) RouteAt(req Request, cands []Candidate, exclude map[string]bool, now time.Time) (Candidate, string, error) {
	cands = r.Filter(cands, exclude)
	if len(cands) == 0 {
		return Candidate{}, "", ErrNoCandidate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var pick Candidate
	reason := r.policy
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
	case PolicyLeastQueued:
		pick = r.pickLeastQueued(cands)
	default:
		pick, reason = r.pickLeastExpected(cands, req)
	}
	if !pick.Local {
		r.recordSend(pick.Node, now)
	}
	return pick, reason, nil
}

func (r *Router) pickLeastQueued(cands []Candidate) Candidate {
	if len(cands) == 1 {
		return cands[0]
	}
	i, j := r.twoChoices(len(cands))
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

// twoChoices returns two distinct random indexes of n >= 2.
func (r *Router) twoChoices(n int) (int, int) {
	i := r.rng.IntN(n)
	j := r.rng.IntN(n - 1)
	if j >= i {
		j++
	}
	return i, j
}

// pickLeastExpected scores by expected completion, discounted by prefix
// hit. It compares two random candidates, the local node, and the candidate
// with the best prefix hit (which random sampling would often miss); the
// local node wins ties.
func (r *Router) pickLeastExpected(cands []Candidate, req Request) (Candidate, string) {
	fb := fallbackCost(cands)
	usePrefix := r.prefixWeight > 0 && len(req.Prefix) > 0
	type scored struct {
		c          Candidate
		exp, score float64
		hit        float64
	}
	eval := func(c Candidate) scored {
		s := scored{c: c, exp: r.expected(c, fb)}
		s.score = s.exp
		if usePrefix {
			if c.LocalPrefix != nil {
				s.hit = c.LocalPrefix.Hit(req.Prefix)
			} else {
				s.hit = c.Prefix.Hit(req.Prefix)
			}
			s.score *= 1 - r.prefixWeight*s.hit
		}
		return s
	}
	// At most two sampled, the local node and the best prefix holder: on
	// the stack.
	var room [4]scored
	pool := room[:0]
	if len(cands) <= 2 {
		for _, c := range cands {
			pool = append(pool, eval(c))
		}
	} else {
		i, j := r.twoChoices(len(cands))
		pool = append(pool, eval(cands[i]), eval(cands[j]))
		holder := -1
		var hs scored
		for k, c := range cands {
			if k == i || k == j {
				continue
			}
			if c.Local {
				// Serving here saves a hop, so the local node is always
				// compared.
				pool = append(pool, eval(c))
				continue
			}
			if usePrefix {
				if s := eval(c); s.hit > 0 && (holder < 0 || s.hit > hs.hit) {
					holder, hs = k, s
				}
			}
		}
		if holder >= 0 {
			pool = append(pool, hs)
		}
	}
	bi := 0
	for i, s := range pool {
		if s.score < pool[bi].score || (s.score == pool[bi].score && s.c.Local) {
			bi = i
		}
	}
	best := pool[bi]
	// The prefix is the reason when, without it, another candidate would
	// have been at least as good; locality when it won a tie.
	reason := PolicyLeastExpected
	for i, s := range pool {
		switch {
		case i == bi:
		case best.hit > 0 && s.exp <= best.exp:
			return best.c, ReasonPrefix
		case best.c.Local && s.score == best.score:
			reason = ReasonLocal
		}
	}
	return best.c, reason
}

// cost is a target's batch cost model.
type cost struct{ base, per float64 }

func (k cost) of(n int) float64 { return k.base + k.per*float64(n) }

// fallbackCost is assumed for a candidate that has not measured its cost
// yet: the mean of those that have (so a new node gets a fair share), or
// one unit per request when none has (which ranks like least-queued).
func fallbackCost(cands []Candidate) cost {
	var sum cost
	n := 0
	for _, c := range cands {
		if c.ServiceBase+c.ServicePerItem > 0 {
			sum.base += float64(c.ServiceBase)
			sum.per += float64(c.ServicePerItem)
			n++
		}
	}
	if n == 0 {
		return cost{per: 1}
	}
	return cost{base: sum.base / float64(n), per: sum.per / float64(n)}
}

// expected is when one more request would finish on c. On a batch backend
// whose slots are all busy it first waits for a running batch (half done,
// on average); then the queue ahead of it (queued, plus what this node sent
// since c's report) runs in rounds of MaxBatch per slot, and the new
// request finishes with the last round. A continuous backend (running
// sequences but no batches) takes newcomers into its running set, so its
// running work counts as queue. Ties within a round go to the shorter
// queue.
func (r *Router) expected(c Candidate, fb cost) float64 {
	k := fb
	if c.ServiceBase+c.ServicePerItem > 0 {
		k = cost{base: float64(c.ServiceBase), per: float64(c.ServicePerItem)}
	}
	slots, batch := max(c.Slots, 1), max(c.MaxBatch, 1)
	queue := c.QueueDepth + 1
	if !c.Local {
		queue += r.sentSince(c.Node, c.LoadAt)
	}
	var wait float64
	switch {
	case c.ActiveBatches == 0:
		queue += c.Running
	case c.ActiveBatches >= slots:
		wait = k.of((c.Running+c.ActiveBatches-1)/c.ActiveBatches) / 2
	}
	perRound := slots * batch
	rounds := (queue + perRound - 1) / perRound
	last := queue - (rounds-1)*perRound
	tie := float64(queue) * k.of(1) * 1e-3
	return wait + float64(rounds-1)*k.of(batch) + k.of((last+slots-1)/slots) + tie
}
