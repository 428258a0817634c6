package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"sync"
	"time"
)

// bucketID identifies one limited thing: a rule's policy and key, and its window length.
type bucketID struct {
	policy, key string
	window      time.Duration
}

// lease is one counter call in flight; done closes when its outcome is in the bucket.
type lease struct {
	done chan struct{}
	// slow is set (under the bucket's mu) once a request gave up waiting for this lease:
	// later requests go to the fallback share at once instead of each waiting LeaseTimeout.
	slow bool
}

// bucket is this node's view of one bucketID in the current window.
//
// The shared counter of a window holds every token any node has leased (used or still held)
// plus every token admitted by a fallback share and sent since. Tokens move from the counter
// to balance by leases, and back by returns; used counts what this node admitted.
type bucket struct {
	id bucketID

	mu   sync.Mutex
	dead bool  // removed from the limiter's map; callers must look the bucket up again
	idx  int64 // window index the fields below describe; -1 before first use

	limit     int  // latest limit seen in a rule
	balance   int  // leased tokens not used yet
	used      int  // tokens this node admitted in the window
	debt      int  // tokens admitted (fallback, Charge) not yet added to the counter; negative: to give back
	seen      int  // counter value at this node's last call, less what it gave back
	exhausted bool // the counter had no room at the last call: deny until retryAt
	failed    bool // the last counter call failed: decide by the fallback share
	retryAt   time.Time
	lastLease int    // tokens granted by the last lease, for the prefetch threshold
	boost     int    // MaxBlock multiplier for a key whose rate outruns its prefetches
	probes    int    // looks at an exhausted counter that found no room, for backoff
	need      int    // tokens a waiting request needs beyond balance
	inflight  *lease // nil when no lease runs
	lastUse   time.Time
}

func windowIndex(now time.Time, w time.Duration) int64 { return now.UnixNano() / int64(w) }

func windowEnd(idx int64, w time.Duration) time.Time { return time.Unix(0, (idx+1)*int64(w)) }

// ttlFor is how long a counter created now for window idx must live: past the window's end by
// a whole window, so that nodes whose clocks lag still find it.
func ttlFor(idx int64, w time.Duration, now time.Time) time.Duration {
	return max(windowEnd(idx, w).Sub(now), 0) + w
}

// counterKey names the shared counter of id's window idx. Keys too long for the cache are
// hashed (a client identity or path can be long).
func counterKey(id bucketID, idx int64) string {
	prefix := strconv.FormatInt(int64(id.window), 10) + "/" + strconv.FormatInt(idx, 10) + "/"
	name := id.policy + "/" + id.key
	if len(prefix)+len(name) > maxCounterKey {
		sum := sha256.Sum256([]byte(name))
		name = "sha256:" + hex.EncodeToString(sum[:])
	}
	return prefix + name
}

// roll moves the bucket forward to window idx; a clock that steps back keeps the later window.
func (b *bucket) roll(idx int64) {
	if idx <= b.idx {
		return
	}
	b.idx = idx
	b.balance, b.used, b.debt, b.seen, b.lastLease, b.need = 0, 0, 0, 0, 0, 0
	b.exhausted = false
	b.probes = 0
	b.boost /= 2 // demand carries over to the next window, decaying
	// A lease for the old window finishes on its own and finds the window changed.
	b.inflight = nil
	if !b.failed {
		b.retryAt = time.Time{}
	}
}

// remaining estimates the tokens left in the window: the counter's room at the last look plus
// what this node holds.
func (b *bucket) remaining() int {
	return min(b.limit, max(0, b.limit-b.seen)+b.balance)
}

const (
	// maxBoost bounds how far a hot key's blocks grow past MaxBlock.
	maxBoost = 64
	// maxProbeBackoff bounds the doubling of the interval between looks at an exhausted
	// window: at most RetryEvery << (maxProbeBackoff-1), 2s with the defaults.
	maxProbeBackoff = 4
)

type outcome int

const (
	outOK outcome = iota
	outDeny
	outWait // a lease is in flight: wait for wait, then take again
	outDead // the bucket was removed: look it up again
)

type takeOut struct {
	kind      outcome
	t         taken
	remaining int
	reset     time.Time
	degraded  bool
	wait      <-chan struct{}
}

// take tries to take r.Cost tokens at now. With fallback set (a lease did not come in time)
// it decides by the fallback share instead of waiting.
func (b *bucket) take(l *Limiter, r Rule, now time.Time, fallback bool) takeOut {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead {
		return takeOut{kind: outDead}
	}
	b.roll(windowIndex(now, r.Window))
	if r.Limit > b.limit {
		// A raised limit (a policy change) makes room at once; a lowered one applies to the
		// tokens not leased yet.
		b.exhausted, b.probes = false, 0
	}
	b.limit = r.Limit
	b.lastUse = now
	out := takeOut{kind: outDeny, reset: windowEnd(b.idx, r.Window)}
	cost := r.Cost
	if b.balance >= cost {
		b.balance -= cost
		b.used += cost
		b.prefetch(l, now)
		out.kind = outOK
		out.t = taken{b: b, idx: b.idx, cost: cost}
		out.remaining = b.remaining()
		return out
	}
	if cost > b.limit {
		return out
	}
	if fallback && b.inflight != nil {
		b.inflight.slow = true
	}
	// The share decides while the counter is failing or a lease is overdue; once a lease is
	// in, its outcome decides even for a request that gave up waiting.
	if b.failed || b.inflight != nil && b.inflight.slow {
		if b.failed && b.inflight == nil && !now.Before(b.retryAt) {
			l.startLease(b, now)
		}
		return b.fallbackTake(l, cost, out)
	}
	if b.exhausted {
		// Other nodes may have given tokens back since: look again now and then.
		if b.inflight == nil && !now.Before(b.retryAt) {
			l.startLease(b, now)
		}
		return out
	}
	if b.inflight != nil && b.lastLease > 0 {
		// The balance ran dry while a prefetch was in flight: this key's rate outruns its
		// blocks, so lease bigger ones.
		b.boost = min(max(2*b.boost, 2), maxBoost)
	}
	b.need = max(b.need, cost-b.balance)
	if b.inflight == nil && !l.startLease(b, now) {
		return b.fallbackTake(l, cost, out)
	}
	out.kind = outWait
	out.wait = b.inflight.done
	return out
}

// fallbackTake admits cost tokens from this node's share of the limit (limit / nodes per
// window, counting what it admitted from leases too), recording them as debt for the counter.
// It never takes more than the counter had unleased at this node's last look.
func (b *bucket) fallbackTake(l *Limiter, cost int, out takeOut) takeOut {
	out.degraded = true
	n := l.nodes()
	share := (b.limit + n - 1) / n
	extra := cost - b.balance
	if b.used+cost > share || b.debt+extra > b.limit-b.seen {
		return out
	}
	b.balance = 0
	b.debt += extra
	b.used += cost
	l.fallback.Add(1)
	out.kind = outOK
	out.t = taken{b: b, idx: b.idx, cost: cost, debtPart: extra}
	out.remaining = max(0, share-b.used)
	return out
}

// prefetch starts the next lease when the balance runs low. Called with mu held.
func (b *bucket) prefetch(l *Limiter, now time.Time) {
	if b.inflight != nil || b.exhausted || b.failed || b.lastLease == 0 {
		return
	}
	if float64(b.balance) > l.cfg.PrefetchAt*float64(b.lastLease) {
		return
	}
	l.startLease(b, now)
}

// warm starts a lease for r if this node cannot serve it from its balance.
func (b *bucket) warm(l *Limiter, r Rule, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead {
		return
	}
	b.roll(windowIndex(now, r.Window))
	b.limit = r.Limit
	if b.balance >= r.Cost || b.exhausted || b.failed || b.inflight != nil || r.Cost > b.limit {
		return
	}
	b.need = max(b.need, r.Cost-b.balance)
	l.startLease(b, now)
}

// putBack undoes a take of the same window.
func (b *bucket) putBack(t taken) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead || b.idx != t.idx {
		return
	}
	b.used -= t.cost
	b.debt -= t.debtPart
	b.balance += t.cost - t.debtPart
}

// charge debits n tokens (n < 0 gives back); false when the bucket was removed.
func (b *bucket) charge(l *Limiter, r Rule, now time.Time, n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead {
		return false
	}
	b.roll(windowIndex(now, r.Window))
	b.limit = r.Limit
	b.lastUse = now
	if n > 0 {
		use := min(b.balance, n)
		b.balance -= use
		b.debt += n - use
		b.used += n
	} else {
		// Only what this node admitted in this window can come back.
		// It goes back through the counter, not into the balance: the counter may stand over
		// the limit, and only the counter knows whether the tokens are free again.
		m := min(-n, b.used)
		b.used -= m
		b.debt -= m
	}
	if b.debt != 0 && b.inflight == nil && (!b.failed || !now.Before(b.retryAt)) {
		l.startLease(b, now)
	}
	return true
}

// startLease starts a counter call that sends the debt and, unless the window is exhausted,
// leases a block. Called with mu held; false when the limiter is closed.
//
// The block is a share of what the counter had left at the last look, split so that every node
// could take two more blocks: remaining / (2 * nodes), within 1..MaxBlock, and at least what a
// waiting request needs; a key that ran dry while its prefetch was in flight gets up to maxBoost
// times MaxBlock. Blocks shrink geometrically as the window fills, which bounds the
// tokens stranded on nodes that stop seeing the key.
func (l *Limiter) startLease(b *bucket, now time.Time) bool {
	if !l.startCall() {
		return false
	}
	ls := &lease{done: make(chan struct{})}
	b.inflight = ls
	size := 0
	if !b.exhausted {
		size = min(max((b.limit-b.seen)/(2*l.nodes()), 1), l.cfg.MaxBlock*max(b.boost, 1))
		size = max(size, b.need)
	}
	go l.runLease(b, ls, b.idx, size, b.debt, ttlFor(b.idx, b.id.window, now))
	return true
}

func (l *Limiter) runLease(b *bucket, ls *lease, idx int64, size, debt int, ttl time.Duration) {
	defer l.leases.Done()
	key := counterKey(b.id, idx)
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.CallTimeout)
	t, err := l.callCounter(ctx, key, size+debt, ttl)
	cancel()
	back := b.finishLease(l, ls, idx, size, debt, t, err)
	if back > 0 {
		// Give the unusable part back before waiters look again, so that their next lease
		// does not see the overshoot as taken.
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.CallTimeout)
		if _, err := l.callCounter(ctx, key, -back, ttl); err == nil {
			l.returned.Add(int64(back))
		} else {
			// The counter keeps the overshoot: the window admits up to back tokens fewer.
			l.log.Debug("return of overshoot failed", "policy", b.id.policy, "tokens", back, "err", err)
		}
		cancel()
	}
	close(ls.done)
}

// finishLease records a lease's outcome and returns how many tokens of the block must go back
// to the counter. A lease moved the counter from t-size-debt to t: the debt is charged first,
// and of the block this node may use only what still fitted under the limit.
func (b *bucket) finishLease(l *Limiter, ls *lease, idx int64, size, debt, t int, err error) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight == ls {
		b.inflight = nil
		b.need = 0
	}
	now := l.cfg.Now()
	if err != nil {
		if !b.dead && b.idx == idx {
			b.failed = true
			b.retryAt = now.Add(l.cfg.RetryEvery)
		}
		return 0
	}
	l.leaseOK.Add(1)
	if b.dead || b.idx != idx {
		// The window ended meanwhile; its counter no longer matters.
		return 0
	}
	b.failed = false
	b.debt -= debt
	before := t - size - debt
	room := max(0, b.limit-before)
	got := min(max(room-debt, 0), size)
	back := size - got
	b.balance += got
	b.seen = t - back
	b.lastLease = got
	l.leased.Add(int64(got))
	if got < size || b.seen >= b.limit {
		// Look again later for tokens other nodes give back, less often each time nothing
		// came back: a denied client must not turn into counter traffic.
		b.exhausted = true
		if got == 0 {
			b.probes = min(b.probes+1, maxProbeBackoff)
		}
		b.retryAt = now.Add(l.cfg.RetryEvery << max(b.probes-1, 0))
	} else {
		b.exhausted = false
		b.probes = 0
	}
	if b.debt != 0 {
		// Charged or put back while this lease was in flight: send it now, not whenever the
		// next request comes.
		l.startLease(b, now)
	}
	return back
}

// drained is what a bucket handed over for one counter call: unused tokens to give back and
// debt to charge.
type drained struct {
	idx           int64
	balance, debt int
	ttl           time.Duration
}

// drainIdle hands over the balance and debt of a bucket not used for idle.
func (b *bucket) drainIdle(now time.Time, idle time.Duration) (drained, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.lastUse) < idle || b.failed && now.Before(b.retryAt) {
		return drained{}, false
	}
	return b.drainLocked(now)
}

// drain hands over the balance and debt of the current window (Close).
func (b *bucket) drain(now time.Time) (drained, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.drainLocked(now)
}

func (b *bucket) drainLocked(now time.Time) (drained, bool) {
	if b.dead || b.inflight != nil || b.idx != windowIndex(now, b.id.window) || b.balance == 0 && b.debt == 0 {
		return drained{}, false
	}
	d := drained{idx: b.idx, balance: b.balance, debt: b.debt, ttl: ttlFor(b.idx, b.id.window, now)}
	b.balance, b.debt, b.lastLease = 0, 0, 0
	return d, true
}

// undrain puts back what a failed counter call could not hand over.
func (b *bucket) undrain(d drained, retryAt time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead || b.idx != d.idx {
		return
	}
	b.balance += d.balance
	b.debt += d.debt
	b.failed = true
	b.retryAt = retryAt
}

// noteSeen records the counter value after a successful return.
func (b *bucket) noteSeen(idx int64, v int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead || b.idx != idx {
		return
	}
	b.failed = false
	b.seen = v
	b.exhausted = v >= b.limit
	if b.exhausted {
		b.retryAt = time.Time{}
	}
}

// forgetIdle marks dead a bucket of a request-counting rule that has been idle for idle and
// holds nothing (no balance, no debt, no lease in flight, counter reachable), so the sweeper
// can forget it before its window ends: the shared counter keeps the window's count, and a
// client seen again leases afresh. Token-counting buckets stay until their window ends, since a
// completed request's refund (Charge with n < 0) is bounded by what the bucket admitted.
func (b *bucket) forgetIdle(now time.Time, idle time.Duration) bool {
	if b.id.policy == PolicyKeyTPM || b.id.policy == PolicyTenantTPM {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead || b.inflight != nil || b.failed || b.balance != 0 || b.debt != 0 || now.Sub(b.lastUse) < idle {
		return false
	}
	b.dead = true
	return true
}

// expire marks a bucket whose window has passed dead, so the sweeper can forget it.
func (b *bucket) expire(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight != nil || b.dead || windowIndex(now, b.id.window) <= b.idx {
		return false
	}
	b.dead = true
	return true
}
