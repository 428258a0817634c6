// Package ratelimit enforces request and token rate limits across the whole cluster without a
// network round trip per request.
//
// Limits are fixed windows aligned to wall-clock time (a one-minute window runs from :00 to
// :59). For each (policy, key, window) a shared counter (an Olric atomic counter through
// dcache) holds how many tokens the whole cluster has taken. A node does not touch that counter
// per request: it leases blocks of tokens from it ahead of need, serves requests from the
// leased balance in local memory, and gives back what it did not use when the key goes idle.
// Lease sizes shrink as the window's counter approaches its limit, so only a few tokens can be
// stranded on nodes that stop seeing the key. See DESIGN.md for the algorithm and its bounds.
//
// When the counter cannot be reached, each node admits at most its share of the limit
// (limit / cluster size) from local memory, reports itself degraded, and charges what it
// admitted to the counter once the counter answers again.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Counter is the shared counter tokens are leased from. *dcache.Cache satisfies it.
//
// Incr atomically adds delta (which may be negative) to the counter (ns, key) and returns the
// new value; a counter that does not exist starts at 0 and expires ttl after its creation.
type Counter interface {
	Incr(ctx context.Context, ns, key string, delta int, ttl time.Duration) (int, error)
}

// scoped is implemented by counters that can say whether other nodes see the same counts;
// *dcache.Cache does (only its olric backend is shared). A counter without it is taken to be
// shared.
type scoped interface {
	// Shared reports whether every node's increments reach the same counter.
	Shared() bool
	// Backend names the counter's store, for logs and health.
	Backend() string
}

// Scopes reported in Stats.Scope.
const (
	// ScopeCluster: the counters are shared, limits hold for the whole cluster.
	ScopeCluster = "cluster"
	// ScopeNode: the counters live on this node only, so each node admits a whole limit.
	ScopeNode = "per-node"
)

// Policy names used in Rule.Policy (limitpolicy.RulesFor makes the rules).
const (
	// PolicyClient is the default per-client limit (API key, else IP address).
	PolicyClient = "client"
	// PolicyEndpoint limits one request path (per minute and per hour).
	PolicyEndpoint = "endpoint"
	// PolicyKey limits one API key in requests per minute.
	PolicyKey = "key"
	// PolicyTenant limits all keys of one tenant together in requests per minute.
	PolicyTenant = "tenant"
	// PolicyKeyTPM limits one API key in tokens per minute.
	PolicyKeyTPM = "key_tpm"
	// PolicyTenantTPM limits one tenant in tokens per minute.
	PolicyTenantTPM = "tenant_tpm"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultNamespace    = "ratelimit"
	DefaultMaxBlock     = 1000
	DefaultPrefetchAt   = 0.5
	DefaultIdleReturn   = 5 * time.Second
	DefaultLeaseTimeout = 50 * time.Millisecond
	DefaultCallTimeout  = time.Second
	DefaultRetryEvery   = 250 * time.Millisecond
	DefaultMaxBuckets   = 65536
)

// maxCounterKey bounds counter keys (dcache refuses keys over 256 bytes).
const maxCounterKey = 200

var (
	// ErrNoCounter is returned by New when Config.Counter is nil.
	ErrNoCounter = errors.New("ratelimit: no counter")
	// ErrClosed is returned by Close when the limiter was already closed.
	ErrClosed = errors.New("ratelimit: limiter closed")
)

// Rule is one limit that a request is checked against.
type Rule struct {
	// Policy names the kind of limit ("client", "endpoint", "key", "tenant", "key_tpm",
	// "tenant_tpm"); it is reported in Decision.Policy and is part of the counter's identity.
	Policy string
	// Key identifies who or what is limited within the policy: a client identity, a path, a
	// key hash, a tenant name. Never put a raw API key here: it becomes a counter key.
	Key string
	// Limit is the number of tokens per window; a rule with Limit <= 0 is ignored.
	Limit int
	// Window is the window length; windows are aligned to wall-clock time (Unix epoch
	// multiples). Zero means one minute; negative makes the rule ignored.
	Window time.Duration
	// Cost is how many tokens the request takes; values below 1 mean 1. For token-per-minute
	// rules it is the estimate known before the request runs (Charge settles the rest).
	Cost int
}

func (r Rule) id() bucketID { return bucketID{policy: r.Policy, key: r.Key, window: r.Window} }

// normalize applies the defaults; it reports false for a rule that limits nothing.
func (r *Rule) normalize() bool {
	if r.Window == 0 {
		r.Window = time.Minute
	}
	if r.Cost < 1 {
		r.Cost = 1
	}
	return r.Limit > 0 && r.Window > 0
}

// Decision is the answer of Allow.
type Decision struct {
	// Allowed says whether the request may proceed.
	Allowed bool
	// Policy and Key name the rule that decided: the denying rule, or else the tightest one
	// (least Remaining). Both are empty when no rule applied.
	Policy, Key string
	// Limit is that rule's limit per window (X-RateLimit-Limit); 0 when no rule applied.
	Limit int
	// Remaining estimates the tokens still available in the window under that rule
	// (X-RateLimit-Remaining). It counts what this node holds and what the shared counter had
	// not leased at this node's last look, so it can under-estimate but not over-estimate much.
	Remaining int
	// Reset is when that rule's current window ends (X-RateLimit-Reset).
	Reset time.Time
	// RetryAfter is the time until Reset on a denial (Retry-After; round it up to whole
	// seconds for the header); zero when allowed.
	RetryAfter time.Duration
	// Degraded is true when the decision used the local fallback share because the shared
	// counter did not answer.
	Degraded bool
}

// Config configures a Limiter. Zero fields take the defaults above.
type Config struct {
	// Counter is the shared counter; required. Pass the node's *dcache.Cache.
	Counter Counter
	// Node names this node in logs.
	Node string
	// Nodes returns the cluster size the fallback share divides limits by. Prefer the
	// configured size (Raft voters) over the reachable count: a partitioned minority that
	// counts only itself would grant itself the whole limit. Nil or a result below 1 means 1.
	Nodes func() int
	// Namespace is the counter namespace (dcache namespace). Default "ratelimit".
	Namespace string
	// MaxBlock caps the tokens one lease takes (a single request that costs more still leases
	// its cost). Default 1000.
	MaxBlock int
	// PrefetchAt starts the next lease in the background when the leased balance drops to this
	// fraction of the last lease, 0..1. Default 0.5.
	PrefetchAt float64
	// IdleReturn gives a key's unused leased tokens back to the counter once this node has not
	// seen the key for this long, so a client that moved to other nodes can use them there.
	// Default 5s.
	IdleReturn time.Duration
	// LeaseTimeout bounds how long a request waits for a lease when this node holds no tokens
	// for a key (the first request of a window, or a burst past the prefetch); after it the
	// request is decided by the fallback share. Default 50ms.
	LeaseTimeout time.Duration
	// CallTimeout bounds each counter call made in the background. Default 1s.
	CallTimeout time.Duration
	// RetryEvery spaces counter calls for a key whose window is exhausted (to notice tokens
	// given back by other nodes) or whose last counter call failed. Default 250ms.
	RetryEvery time.Duration
	// MaxBuckets bounds the (rule, key) states held in memory. Client identities (addresses)
	// are client input: a flood of new ones must not grow memory without bound. Buckets of
	// request-counting rules are forgotten once idle for IdleReturn and drained; when MaxBuckets
	// are held all the same, a rule with no bucket yet is decided by one counter call per
	// request instead (exact, one round trip, denied when the counter does not answer within
	// LeaseTimeout). Default 65536 (about 25 MiB, see DESIGN.md).
	MaxBuckets int
	// Now is the clock for windows and idleness; nil means time.Now. Tests inject one.
	Now func() time.Time
	// Logger receives the limiter's logs; nil discards.
	Logger *slog.Logger
}

func (c Config) resolve() (Config, error) {
	if c.Counter == nil {
		return c, ErrNoCounter
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.MaxBlock == 0 {
		c.MaxBlock = DefaultMaxBlock
	}
	if c.PrefetchAt == 0 {
		c.PrefetchAt = DefaultPrefetchAt
	}
	if c.IdleReturn == 0 {
		c.IdleReturn = DefaultIdleReturn
	}
	if c.LeaseTimeout == 0 {
		c.LeaseTimeout = DefaultLeaseTimeout
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.RetryEvery == 0 {
		c.RetryEvery = DefaultRetryEvery
	}
	if c.MaxBuckets == 0 {
		c.MaxBuckets = DefaultMaxBuckets
	}
	if c.Nodes == nil {
		c.Nodes = func() int { return 1 }
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.MaxBlock < 1:
		return c, fmt.Errorf("ratelimit: max block %d: must be at least 1", c.MaxBlock)
	case c.MaxBuckets < 1:
		return c, fmt.Errorf("ratelimit: max buckets %d: must be at least 1", c.MaxBuckets)
	case c.PrefetchAt < 0 || c.PrefetchAt > 1:
		return c, fmt.Errorf("ratelimit: prefetch at %g: must be within 0..1", c.PrefetchAt)
	case c.IdleReturn < 0, c.LeaseTimeout < 0, c.CallTimeout < 0, c.RetryEvery < 0:
		return c, errors.New("ratelimit: durations must not be negative")
	}
	return c, nil
}

// Stats are the limiter's counters since New.
type Stats struct {
	// Allowed and Denied count Allow decisions.
	Allowed, Denied int64
	// FallbackAllowed counts requests admitted from the local fallback share.
	FallbackAllowed int64
	// Waits counts requests that waited for a lease (at most LeaseTimeout).
	Waits int64
	// Leases counts successful counter calls that leased tokens or settled charges;
	// LeasedTokens the tokens they granted.
	Leases, LeasedTokens int64
	// ReturnedTokens counts tokens given back to the counter (unusable parts of leases, idle
	// returns, Close).
	ReturnedTokens int64
	// CounterErrors counts failed counter calls.
	CounterErrors int64
	// Buckets is the number of (rule, key) states held in memory, at most Config.MaxBuckets.
	Buckets int
	// Overflow counts rule decisions made by a direct counter call because MaxBuckets states
	// were held already.
	Overflow int64
	// Degraded is true while the last counter call failed: limits are enforced per node.
	Degraded bool
	// Scope is ScopeCluster, or ScopeNode when the counter is not shared between nodes
	// (dcache's local and off backends).
	Scope string
	// ScopeDetail says why the scope is per-node, e.g. "per-node (cache backend local)";
	// empty for ScopeCluster.
	ScopeDetail string
	// PerNodeCluster is true when limits are per-node although the cluster has several
	// nodes: each of them admits a whole limit, so the cluster admits up to nodes × limit.
	PerNodeCluster bool
	// LastError is the last counter error, empty if none.
	LastError string
}

// Limiter admits requests against cluster-wide rate limits. Its methods are safe for
// concurrent use.
type Limiter struct {
	cfg Config
	log *slog.Logger

	buckets  sync.Map // bucketID -> *bucket
	nbuckets atomic.Int64

	closeMu sync.Mutex
	closed  bool
	leases  sync.WaitGroup // background counter calls
	stop    context.CancelFunc
	swept   chan struct{} // closed when the sweeper exits

	allowed, denied, fallback, waits     atomic.Int64
	leaseOK, leased, returned, callFails atomic.Int64
	overflow                             atomic.Int64

	failing atomic.Bool
	// scope is ScopeCluster or ScopeNode, fixed by the counter; scopeDetail its explanation.
	scope, scopeDetail string
	warnedScope        atomic.Bool
	errMu              sync.Mutex
	lastErr            string
}

// New validates cfg and starts the background sweeper that returns idle leases.
func New(cfg Config) (*Limiter, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Limiter{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "ratelimit"),
		stop:  cancel,
		swept: make(chan struct{}),
		scope: ScopeCluster,
	}
	if sc, ok := cfg.Counter.(scoped); ok && !sc.Shared() {
		l.scope = ScopeNode
		l.scopeDetail = fmt.Sprintf("%s (cache backend %s)", ScopeNode, sc.Backend())
		if !l.checkScope() {
			l.log.Info("rate limits are counted on this node only", "scope", l.scopeDetail)
		}
	}
	go l.sweeper(ctx)
	return l, nil
}

// checkScope warns once when limits are per-node in a cluster of several nodes: each node
// then admits a whole limit, which nothing else would tell the operator. It reports whether
// that is the case. The sweeper calls it as the cluster grows.
func (l *Limiter) checkScope() bool {
	if l.scope != ScopeNode || l.nodes() < 2 {
		return false
	}
	if !l.warnedScope.Swap(true) {
		l.log.Warn("rate limits are per node: the cache backend does not share counters, so each node admits a whole limit; use cache backend olric for cluster-wide limits",
			"scope", l.scopeDetail, "nodes", l.nodes())
	}
	return true
}

func (l *Limiter) nodes() int { return max(1, l.cfg.Nodes()) }

// bucketFor returns the live state of id, creating it.
func (l *Limiter) bucketFor(id bucketID) *bucket {
	if v, ok := l.buckets.Load(id); ok {
		return v.(*bucket)
	}
	v, loaded := l.buckets.LoadOrStore(id, &bucket{id: id, idx: -1})
	if !loaded {
		l.nbuckets.Add(1)
	}
	return v.(*bucket)
}

// bucketIfRoom returns the live state of id, creating it unless MaxBuckets are held (nil).
func (l *Limiter) bucketIfRoom(id bucketID) *bucket {
	if v, ok := l.buckets.Load(id); ok {
		return v.(*bucket)
	}
	if l.nbuckets.Load() >= int64(l.cfg.MaxBuckets) {
		return nil
	}
	return l.bucketFor(id)
}

// forget removes b, which its caller has marked dead, from the map.
func (l *Limiter) forget(b *bucket) {
	if l.buckets.CompareAndDelete(b.id, b) {
		l.nbuckets.Add(-1)
	}
}

// taken records tokens taken for one rule, so that they can be put back. A direct decision
// (no bucket) has b nil and names its counter instead.
type taken struct {
	b        *bucket
	idx      int64
	cost     int
	debtPart int

	key string
	ttl time.Duration
}

// ruleResult is one rule's outcome within Allow.
type ruleResult struct {
	rule      Rule
	remaining int
	reset     time.Time
	degraded  bool
}

// Allow decides one request against all of rules, all or nothing: when any rule denies, the
// tokens taken from the others are put back. Rules with no limit are skipped; with no rule
// left the request is allowed. Allow works from local memory, except when this node holds no
// tokens for a rule yet (the first request of a window): then it waits for one lease, bounded
// by LeaseTimeout and ctx, and falls back to the local share if none comes.
func (l *Limiter) Allow(ctx context.Context, rules []Rule) Decision {
	var takenBuf [8]taken
	took := takenBuf[:0]
	var best ruleResult
	haveBest, degraded := false, false
	st := allowState{now: l.cfg.Now()}
	for i := range rules {
		r := rules[i]
		if !r.normalize() {
			continue
		}
		res, t, ok := l.decide(ctx, r, &st, rules[i+1:])
		if !ok {
			l.putBack(took)
			l.denied.Add(1)
			return Decision{
				Policy:     r.Policy,
				Key:        r.Key,
				Limit:      r.Limit,
				Reset:      res.reset,
				RetryAfter: max(0, res.reset.Sub(st.now)),
				Degraded:   res.degraded,
			}
		}
		took = append(took, t)
		degraded = degraded || res.degraded
		if !haveBest || res.remaining < best.remaining ||
			res.remaining == best.remaining && r.Limit < best.rule.Limit {
			best, haveBest = res, true
		}
	}
	l.allowed.Add(1)
	if !haveBest {
		return Decision{Allowed: true}
	}
	return Decision{
		Allowed:   true,
		Policy:    best.rule.Policy,
		Key:       best.rule.Key,
		Limit:     best.rule.Limit,
		Remaining: best.remaining,
		Reset:     best.reset,
		Degraded:  degraded,
	}
}

// allowState is what the rules of one Allow share: the clock reading (refreshed after a
// wait) and one LeaseTimeout deadline for all their waits.
type allowState struct {
	now      time.Time
	deadline time.Time // zero until the first wait
}

// decide takes r.Cost tokens for one rule, waiting for a lease if need be. later are the rules
// still to be decided; their leases are started before this one waits, so that a request
// whose rules are all cold waits about one round trip, not one per rule.
func (l *Limiter) decide(ctx context.Context, r Rule, st *allowState, later []Rule) (ruleResult, taken, bool) {
	fallback := false
	for {
		b := l.bucketIfRoom(r.id())
		if b == nil {
			return l.decideDirect(ctx, r, st)
		}
		out := b.take(l, r, st.now, fallback)
		switch out.kind {
		case outDead:
			l.forget(b)
			continue
		case outOK:
			return ruleResult{rule: r, remaining: out.remaining, reset: out.reset, degraded: out.degraded}, out.t, true
		case outDeny:
			return ruleResult{rule: r, reset: out.reset, degraded: out.degraded}, taken{}, false
		}
		// outWait: a lease is on its way (never with fallback set).
		if st.deadline.IsZero() {
			st.deadline = time.Now().Add(l.cfg.LeaseTimeout)
			l.waits.Add(1)
			l.warm(later, st.now)
		}
		// Without a lease in time, the fallback share decides.
		fallback = !wait(ctx, out.wait, st.deadline)
		st.now = l.cfg.Now()
	}
}

// decideDirect decides r with one counter call and keeps no state: the limiter holds
// MaxBuckets already. It takes r.Cost from the counter and gives it back at once when the
// window had no room. A counter that does not answer within LeaseTimeout denies: without a
// bucket there is no share to fall back on, and admitting would let a flood of new identities
// past every limit exactly when the counter struggles.
func (l *Limiter) decideDirect(ctx context.Context, r Rule, st *allowState) (ruleResult, taken, bool) {
	l.overflow.Add(1)
	idx := windowIndex(st.now, r.Window)
	res := ruleResult{rule: r, reset: windowEnd(idx, r.Window)}
	t := taken{idx: idx, cost: r.Cost, key: counterKey(r.id(), idx), ttl: ttlFor(idx, r.Window, st.now)}
	if !l.startCall() {
		res.degraded = true
		return res, taken{}, false
	}
	defer l.leases.Done()
	cctx, cancel := context.WithTimeout(ctx, l.cfg.LeaseTimeout)
	v, err := l.callCounter(cctx, t.key, r.Cost, t.ttl)
	cancel()
	if err != nil {
		// The increment may still be applied: it strands r.Cost tokens of this window.
		res.degraded = true
		return res, taken{}, false
	}
	if v > r.Limit {
		l.giveBack(t)
		return res, taken{}, false
	}
	res.remaining = r.Limit - v
	return res, t, true
}

// giveBack returns a direct decision's tokens to the counter in the background.
func (l *Limiter) giveBack(t taken) {
	if !l.startCall() {
		return
	}
	go func() {
		defer l.leases.Done()
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.CallTimeout)
		defer cancel()
		if _, err := l.callCounter(ctx, t.key, -t.cost, t.ttl); err == nil {
			l.returned.Add(int64(t.cost))
		}
	}()
}

// wait blocks until ch closes (true), or until deadline or ctx ends (false).
func wait(ctx context.Context, ch <-chan struct{}, deadline time.Time) bool {
	d := time.Until(deadline)
	if d <= 0 {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// warm starts leases for rules that will need one, without taking anything.
func (l *Limiter) warm(rules []Rule, now time.Time) {
	for _, r := range rules {
		if !r.normalize() {
			continue
		}
		l.bucketFor(r.id()).warm(l, r, now)
	}
}

// putBack returns tokens taken by an Allow that was denied by a later rule.
func (l *Limiter) putBack(took []taken) {
	for _, t := range took {
		if t.b == nil {
			l.giveBack(t)
			continue
		}
		t.b.putBack(t)
	}
}

// Charge debits n more tokens from rule's current window, after the fact: a token-per-minute
// rule learns a request's true cost only when it completes. A negative n gives tokens back (an
// estimate that was too high). Charge never waits on the network; a debit beyond the leased
// balance is recorded and sent to the shared counter in the background, and it can take the
// window over its limit, which makes later requests wait for the next window.
func (l *Limiter) Charge(_ context.Context, rule Rule, n int) {
	if n == 0 || !rule.normalize() {
		return
	}
	for {
		b := l.bucketFor(rule.id())
		if b.charge(l, rule, l.cfg.Now(), n) {
			return
		}
		l.forget(b)
	}
}

// Stats returns the limiter's counters; it never blocks on the network.
func (l *Limiter) Stats() Stats {
	l.errMu.Lock()
	msg := l.lastErr
	l.errMu.Unlock()
	return Stats{
		Allowed:         l.allowed.Load(),
		Denied:          l.denied.Load(),
		FallbackAllowed: l.fallback.Load(),
		Waits:           l.waits.Load(),
		Leases:          l.leaseOK.Load(),
		LeasedTokens:    l.leased.Load(),
		ReturnedTokens:  l.returned.Load(),
		CounterErrors:   l.callFails.Load(),
		Buckets:         int(l.nbuckets.Load()),
		Overflow:        l.overflow.Load(),
		Degraded:        l.failing.Load(),
		LastError:       msg,
		Scope:           l.scope,
		ScopeDetail:     l.scopeDetail,
		PerNodeCluster:  l.scope == ScopeNode && l.nodes() > 1,
	}
}

// Close stops background work, waits for leases in flight, and gives the unused tokens of the
// current windows back to the counter (and sends charges not yet recorded), bounded by ctx.
// After Close, Allow keeps working from local memory and the fallback share only.
func (l *Limiter) Close(ctx context.Context) error {
	l.closeMu.Lock()
	if l.closed {
		l.closeMu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.closeMu.Unlock()
	l.stop()
	<-l.swept
	done := make(chan struct{})
	go func() { l.leases.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("ratelimit close: leases in flight: %w", ctx.Err())
	}
	var errs []error
	now := l.cfg.Now()
	l.buckets.Range(func(_, v any) bool {
		b := v.(*bucket)
		ret, ok := b.drain(now)
		if !ok {
			return true
		}
		if err := l.settle(ctx, b, ret); err != nil {
			errs = append(errs, err)
		}
		return true
	})
	return errors.Join(errs...)
}

// startCall registers a background counter call; false once the limiter is closed.
func (l *Limiter) startCall() bool {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.closed {
		return false
	}
	l.leases.Add(1)
	return true
}

// callCounter runs one counter call and records its outcome.
func (l *Limiter) callCounter(ctx context.Context, key string, delta int, ttl time.Duration) (int, error) {
	v, err := l.cfg.Counter.Incr(ctx, l.cfg.Namespace, key, delta, ttl)
	if err != nil {
		l.callFails.Add(1)
		l.errMu.Lock()
		l.lastErr = err.Error()
		l.errMu.Unlock()
		if !l.failing.Swap(true) {
			l.log.Warn("rate-limit counter unavailable; enforcing local shares", "err", err)
		}
		return 0, err
	}
	if l.failing.Swap(false) {
		l.log.Info("rate-limit counter reachable again")
	}
	return v, nil
}

// sweeper periodically returns idle leases and forgets buckets of past windows.
func (l *Limiter) sweeper(ctx context.Context) {
	defer close(l.swept)
	every := min(max(l.cfg.IdleReturn/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Not ctx: Close cancels it, and a give-back cut off mid-call may still be applied
		// and then be sent a second time by Close. Close waits for this sweep instead.
		l.sweep(context.Background())
		l.checkScope()
	}
}

// sweepWorkers bounds the idle returns one sweep runs at once: a sweep after a burst of many
// new clients has a give-back per client to send, and one at a time would let buckets pile up
// faster than they are returned.
const sweepWorkers = 8

func (l *Limiter) sweep(ctx context.Context) {
	now := l.cfg.Now()
	sem := make(chan struct{}, sweepWorkers)
	var wg sync.WaitGroup
	l.buckets.Range(func(_, v any) bool {
		b := v.(*bucket)
		if b.expire(now) || b.forgetIdle(now, l.cfg.IdleReturn) {
			l.forget(b)
			return true
		}
		if ret, ok := b.drainIdle(now, l.cfg.IdleReturn); ok {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := l.settle(ctx, b, ret); err != nil {
					l.log.Debug("idle return failed", "policy", b.id.policy, "err", err)
				}
			})
		}
		return true
	})
	wg.Wait()
}

// settle sends a drained bucket's net change (charges owed minus tokens given back) to the
// counter; on failure it puts them back in the bucket to try again later.
func (l *Limiter) settle(ctx context.Context, b *bucket, d drained) error {
	delta := d.debt - d.balance
	if delta == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, l.cfg.CallTimeout)
	defer cancel()
	v, err := l.callCounter(cctx, counterKey(b.id, d.idx), delta, d.ttl)
	if err != nil {
		b.undrain(d, l.cfg.Now().Add(l.cfg.RetryEvery))
		return fmt.Errorf("ratelimit: return %d tokens of %s/%s: %w", d.balance, b.id.policy, b.id.key, err)
	}
	l.returned.Add(int64(d.balance))
	b.noteSeen(d.idx, v)
	return nil
}

// TokenBased reports whether r counts tokens rather than requests, i.e. whether the caller
// should Charge it with the request's true token count when the response is done.
func (r Rule) TokenBased() bool { return r.Policy == PolicyKeyTPM || r.Policy == PolicyTenantTPM }
