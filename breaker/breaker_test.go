package breaker

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/internal/fakeclock"
)

// fakeClock is a clock the test moves by hand.
type fakeClock = fakeclock.Clock

// replicated stands in for the Raft round trip (the node-level tests run
// the real one): it applies a transition when its From matches, as the FSM
// does, and keeps every committed transition.
type replicated struct {
	mu        sync.Mutex
	st        map[string]consensus.BreakerState
	committed []consensus.BreakerTransition
}

func (r *replicated) Breaker(model string) consensus.BreakerState {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b, ok := r.st[model]; ok {
		return b
	}
	return consensus.BreakerState{Model: model, State: consensus.BreakerClosed}
}

func (r *replicated) ProposeBreaker(_ context.Context, tr consensus.BreakerTransition) error {
	if err := tr.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, ok := r.st[tr.Model]
	if !ok {
		cur.State = consensus.BreakerClosed
	}
	if cur.State != tr.From {
		return consensus.ErrBreakerConflict
	}
	r.st[tr.Model] = consensus.BreakerState{Node: tr.Node, Model: tr.Model, State: tr.To, Since: tr.At, OpenUntil: tr.OpenUntil, Trips: tr.Trips}
	r.committed = append(r.committed, tr)
	return nil
}

func (r *replicated) last(t *testing.T) consensus.BreakerTransition {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	require.NotEmpty(t, r.committed)
	return r.committed[len(r.committed)-1]
}

func (r *replicated) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.committed)
}

var errBackend = errors.New("backend down")

func isFailure(err error) bool {
	return err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

const timeout = 10 * time.Second

func newSet(t *testing.T) (*Set, *replicated, *fakeClock) {
	t.Helper()
	r := &replicated{st: map[string]consensus.BreakerState{}}
	s, clock := newSetWith(timeout, r, r)
	return s, r, clock
}

// newSetWith is a Set with the given first open period over state and proposer, on a fake
// clock, proposing synchronously (the test never waits).
func newSetWith(open time.Duration, state StateReader, proposer Proposer) (*Set, *fakeClock) {
	clock := fakeclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	s := New(Config{Node: "n1", FailureThreshold: 3, Timeout: open, IsFailure: isFailure, State: state, Proposer: proposer,
		Go: func(f func()) { f() }, Clock: clock})
	return s, clock
}

func report(t *testing.T, s *Set, model string, err error) {
	t.Helper()
	done, ok := s.Admit(model)
	require.True(t, ok, "breaker refused a request")
	done(err)
}

func TestConsecutiveFailuresOpenForTheTimeout(t *testing.T) {
	s, r, clock := newSet(t)
	report(t, s, "m", errBackend)
	report(t, s, "m", errBackend)
	require.Equal(t, consensus.BreakerClosed, r.Breaker("m").State)
	report(t, s, "m", errBackend)
	tr := r.last(t)
	require.Equal(t, consensus.BreakerOpen, tr.To)
	require.Equal(t, clock.Now().Add(timeout), tr.OpenUntil)
	require.Equal(t, 1, tr.Trips)
	_, ok := s.Admit("m")
	require.False(t, ok, "an open breaker admitted a request")
}

func TestSuccessResetsTheConsecutiveCount(t *testing.T) {
	s, r, _ := newSet(t)
	for range 5 {
		report(t, s, "m", errBackend)
		report(t, s, "m", errBackend)
		report(t, s, "m", nil)
	}
	require.Zero(t, r.count())
}

func TestCancelledAndDeadlineOutcomesDoNotCount(t *testing.T) {
	s, r, _ := newSet(t)
	for range 10 {
		report(t, s, "m", context.Canceled)
		report(t, s, "m", context.DeadlineExceeded)
	}
	require.Zero(t, r.count())
}

func TestHalfOfTheWindowFailingOpens(t *testing.T) {
	s, r, _ := newSet(t)
	// Alternating outcomes never reach three in a row.
	for i := range RateMin - 1 {
		if i%2 == 0 {
			report(t, s, "m", errBackend)
		} else {
			report(t, s, "m", nil)
		}
	}
	require.Zero(t, r.count())
	report(t, s, "m", errBackend)
	require.Equal(t, consensus.BreakerOpen, r.last(t).To)
}

func TestOldOutcomesLeaveTheRateWindow(t *testing.T) {
	s, r, clock := newSet(t)
	for i := range RateMin - 1 {
		if i%2 == 0 {
			report(t, s, "m", errBackend)
		} else {
			report(t, s, "m", nil)
		}
	}
	clock.Advance(RateWindow + time.Second)
	report(t, s, "m", errBackend)
	require.Zero(t, r.count(), "failures older than the window still counted")
}

func TestOpenGoesHalfOpenOnlyAfterItsTime(t *testing.T) {
	s, r, clock := newSet(t)
	for range 3 {
		report(t, s, "m", errBackend)
	}
	clock.Advance(timeout - time.Millisecond)
	s.Tick([]string{"m"})
	require.Equal(t, consensus.BreakerOpen, r.Breaker("m").State)
	clock.Advance(time.Millisecond)
	s.Tick([]string{"m"})
	require.Equal(t, consensus.BreakerHalfOpen, r.Breaker("m").State)
}

func openThenHalfOpen(t *testing.T, s *Set, r *replicated, clock *fakeClock) {
	t.Helper()
	for range 3 {
		report(t, s, "m", errBackend)
	}
	st := r.Breaker("m")
	require.Equal(t, consensus.BreakerOpen, st.State)
	clock.Advance(st.OpenUntil.Sub(clock.Now()))
	s.Tick([]string{"m"})
	require.Equal(t, consensus.BreakerHalfOpen, r.Breaker("m").State)
}

func TestHalfOpenLetsOneProbeThrough(t *testing.T) {
	s, r, clock := newSet(t)
	openThenHalfOpen(t, s, r, clock)
	done, ok := s.Admit("m")
	require.True(t, ok)
	_, ok = s.Admit("m")
	require.False(t, ok, "a second probe ran while the first was in flight")
	done(nil)
	require.Equal(t, consensus.BreakerClosed, r.Breaker("m").State)
}

func TestFailedProbeReopensForTwiceAsLong(t *testing.T) {
	s, r, clock := newSet(t)
	openThenHalfOpen(t, s, r, clock)
	done, ok := s.Admit("m")
	require.True(t, ok)
	done(errBackend)
	tr := r.last(t)
	require.Equal(t, consensus.BreakerOpen, tr.To)
	require.Equal(t, 2, tr.Trips)
	require.Equal(t, clock.Now().Add(2*timeout), tr.OpenUntil)
}

func TestReopenSoonAfterClosingKeepsTheTripCount(t *testing.T) {
	s, r, clock := newSet(t)
	openThenHalfOpen(t, s, r, clock)
	done, _ := s.Admit("m")
	done(nil)
	clock.Advance(FlapWindow / 2)
	for range 3 {
		report(t, s, "m", errBackend)
	}
	tr := r.last(t)
	require.Equal(t, 2, tr.Trips)
	require.Equal(t, clock.Now().Add(2*timeout), tr.OpenUntil)
}

func TestReopenLongAfterClosingStartsOver(t *testing.T) {
	s, r, clock := newSet(t)
	openThenHalfOpen(t, s, r, clock)
	done, _ := s.Admit("m")
	done(nil)
	clock.Advance(FlapWindow + time.Second)
	for range 3 {
		report(t, s, "m", errBackend)
	}
	require.Equal(t, 1, r.last(t).Trips)
}

func TestTransitionsPerMinuteAreBounded(t *testing.T) {
	s, r, clock := newSet(t)
	// Each cycle is open, half-open, closed: three proposals.
	for range 2 * TransitionsPerMinute {
		for range 3 {
			if done, ok := s.Admit("m"); ok {
				done(errBackend)
			}
		}
		if st := r.Breaker("m"); st.State == consensus.BreakerOpen {
			clock.Advance(max(st.OpenUntil.Sub(clock.Now()), 0))
			s.Tick([]string{"m"})
		}
		if done, ok := s.Admit("m"); ok {
			done(nil)
		}
	}
	require.LessOrEqual(t, r.count(), TransitionsPerMinute+1, "opens may pass the budget, nothing else")
	require.Equal(t, consensus.BreakerOpen, r.Breaker("m").State, "a breaker over its budget stays open")
}

func TestRetryBudgetAllowsAFifthOfRequests(t *testing.T) {
	b := NewRetryBudget()
	for range retryTokens {
		require.True(t, b.Take())
	}
	require.False(t, b.Take(), "the floor was spent")
	for range 4 {
		b.Request()
	}
	require.False(t, b.Take(), "four requests earned a retry")
	b.Request()
	require.True(t, b.Take(), "five requests did not earn a retry")
	require.False(t, b.Take())
}

// stuckClosed is replicated state in which every proposal loses to
// another, so the breaker stays closed and every failure trips again (once
// the trip held here expires).
type stuckClosed struct{ proposals atomic.Int64 }

func (*stuckClosed) Breaker(model string) consensus.BreakerState {
	return consensus.BreakerState{Model: model, State: consensus.BreakerClosed}
}

func (s *stuckClosed) ProposeBreaker(context.Context, consensus.BreakerTransition) error {
	s.proposals.Add(1)
	return consensus.ErrBreakerConflict
}

// Run with -race: outcomes reported from many goroutines at once, with
// trips proposed in the background as the node does.
func TestConcurrentOutcomesAreRaceFree(t *testing.T) {
	st := &stuckClosed{}
	var wg sync.WaitGroup
	// A trip held here lasts a nanosecond, so requests keep coming in and tripping again.
	s := New(Config{Node: "n1", FailureThreshold: 1, Timeout: time.Nanosecond, IsFailure: isFailure, State: st, Proposer: st,
		Go: func(f func()) { wg.Go(f) }})
	var callers sync.WaitGroup
	for range 8 {
		callers.Go(func() {
			for i := range 200 {
				done, ok := s.Admit("m")
				if !ok {
					continue
				}
				if i%3 == 0 {
					done(nil)
				} else {
					done(errBackend)
				}
			}
		})
	}
	callers.Wait()
	wg.Wait()
	require.Positive(t, st.proposals.Load())
}

// A trip counts on this node before (and without) Raft replicating it: while the proposal is
// in flight or failing, the node refuses work for the model and reports it open, so requests
// stop failing here and spending the retry budget. It lasts the open period, then traffic
// probes the backend again.
func TestTripCountsHereBeforeItIsReplicated(t *testing.T) {
	u := &leaderless{replicated: &replicated{st: map[string]consensus.BreakerState{}}}
	s, clock := newSetWith(timeout, u, u)
	require.False(t, s.Open("m"))
	for range 3 {
		report(t, s, "m", errBackend)
	}
	require.Equal(t, int64(1), u.attempts.Load())
	require.Equal(t, consensus.BreakerClosed, u.Breaker("m").State, "nothing was replicated")
	require.True(t, s.Open("m"))
	_, ok := s.Admit("m")
	require.False(t, ok, "a tripped breaker admitted a request before Raft replicated the trip")
	require.False(t, s.Open("other"))

	clock.Advance(timeout - time.Millisecond)
	require.True(t, s.Open("m"))
	clock.Advance(time.Millisecond)
	require.False(t, s.Open("m"), "the trip outlived its open period")
	report(t, s, "m", nil)
	require.Zero(t, s.pending.Load())
}

// Once replicated, the trip is the replicated state's: an operator's close (the entry deleted)
// lets work in at once.
func TestReplicatedTripYieldsToTheReplicatedState(t *testing.T) {
	s, r, _ := newSet(t)
	for range 3 {
		report(t, s, "m", errBackend)
	}
	require.Equal(t, consensus.BreakerOpen, r.Breaker("m").State)
	require.True(t, s.Open("m"))
	r.mu.Lock()
	delete(r.st, "m")
	r.mu.Unlock()
	require.False(t, s.Open("m"))
	report(t, s, "m", nil)
	require.Zero(t, s.pending.Load())
}

// A trip whose proposal failed is proposed again on the next Tick: the node routes around its
// backend meanwhile, so no new failure would trip it again.
func TestTickProposesAFailedTripAgain(t *testing.T) {
	f := &leaderless{replicated: &replicated{st: map[string]consensus.BreakerState{}}}
	s, clock := newSetWith(timeout, f, f)
	for range 3 {
		report(t, s, "m", errBackend)
	}
	require.Zero(t, f.count())
	require.True(t, s.Open("m"))
	f.healed.Store(true)
	clock.Advance(time.Second)
	s.Tick([]string{"m"})
	tr := f.last(t)
	require.Equal(t, consensus.BreakerOpen, tr.To)
	require.Equal(t, clock.Now().Add(-time.Second), tr.At, "the trip as it was, not a new one")
	require.Equal(t, consensus.BreakerOpen, f.Breaker("m").State)
	require.Zero(t, s.pending.Load())
	s.Tick([]string{"m"})
	require.Equal(t, 1, f.count())
}

// A probe that succeeds closes the breaker even when failed probes spent the minute's
// transition budget: refusing the close left the breaker half-open, the model held to one
// request at a time while every probe succeeded.
func TestSuccessfulProbeClosesPastTheBudget(t *testing.T) {
	r := &replicated{st: map[string]consensus.BreakerState{}}
	// Short open periods, so every transition falls within one minute.
	s, clock := newSetWith(time.Second, r, r)
	for range 3 {
		report(t, s, "m", errBackend)
	}
	for r.count() < TransitionsPerMinute {
		st := r.Breaker("m")
		require.Equal(t, consensus.BreakerOpen, st.State)
		clock.Advance(st.OpenUntil.Sub(clock.Now()))
		s.Tick([]string{"m"})
		require.Equal(t, consensus.BreakerHalfOpen, r.Breaker("m").State)
		if r.count() < TransitionsPerMinute {
			report(t, s, "m", errBackend) // the probe fails: open again
		}
	}
	report(t, s, "m", nil)
	require.Equal(t, consensus.BreakerClosed, r.Breaker("m").State, "a successful probe did not close the breaker")
	require.Equal(t, consensus.BreakerClosed, r.last(t).To)
}

// leaderless is a Raft without a quorum: it fails every proposal (counting the attempts) until
// healed, then replicates.
type leaderless struct {
	*replicated
	healed   atomic.Bool
	attempts atomic.Int64
}

func (l *leaderless) ProposeBreaker(ctx context.Context, tr consensus.BreakerTransition) error {
	l.attempts.Add(1)
	if !l.healed.Load() {
		return errors.New("no leader")
	}
	return l.replicated.ProposeBreaker(ctx, tr)
}

// Proposals that failed do not count against the transition budget: a trip proposed again
// every second while Raft had no leader still lets the breaker probe once Raft is back.
func TestFailedProposalsLeaveTheBudget(t *testing.T) {
	l := &leaderless{replicated: &replicated{st: map[string]consensus.BreakerState{}}}
	s, clock := newSetWith(timeout, l, l)
	for range 3 {
		report(t, s, "m", errBackend)
	}
	for range 2 * TransitionsPerMinute {
		clock.Advance(500 * time.Millisecond)
		s.Tick([]string{"m"})
	}
	require.Zero(t, l.count())
	l.healed.Store(true)
	s.Tick([]string{"m"})
	require.Equal(t, consensus.BreakerOpen, l.Breaker("m").State)
	clock.Advance(timeout)
	s.Tick([]string{"m"})
	require.Equal(t, consensus.BreakerHalfOpen, l.Breaker("m").State, "the failed proposals spent the budget")
}

// The error-rate window of a busy model must not hold one record per request: at 10,000
// requests a second a window of outcomes was 300,000 records (about 10 MB a model, of
// pointers the collector scans), and the slice was copied whole under the Set's lock each
// time it outgrew its array, stalling every request of every model for that copy.
func TestBusyWindowHoldsNoRecordPerRequest(t *testing.T) {
	s, r, clock := newSet(t)
	step := 100 * time.Microsecond
	fill := func() {
		for range int(RateWindow / step) {
			clock.Advance(step)
			s.Observe("m", nil)
		}
	}
	s.Observe("m", nil) // the model's tracker exists before the first reading
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fill()
	fill()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	require.Less(t, grown, int64(256<<10), "a window of %s at 10,000 outcomes a second still grew the heap by %d bytes", RateWindow, grown)

	// The window still counts what it should: a busy, healthy window is not opened by a
	// few failures, and a window where half failed is.
	for range 5 {
		clock.Advance(step)
		s.Observe("m", errBackend)
		clock.Advance(step)
		s.Observe("m", nil)
	}
	require.Zero(t, r.count(), "a few failures in %d healthy outcomes opened the breaker", int(RateWindow/step))
	clock.Advance(RateWindow + time.Second)
	for range RateMin/2 - 1 {
		report(t, s, "m", errBackend)
		report(t, s, "m", nil)
	}
	require.Zero(t, r.count())
	report(t, s, "m", nil)
	report(t, s, "m", errBackend)
	require.Equal(t, consensus.BreakerOpen, r.last(t).To, "half of a fresh window failing did not open the breaker")
}
