// Package breaker drives the circuit breakers of one node's own backends:
// per model it counts consecutive failures and an error-rate window, opens
// with a timeout that doubles for a flapping backend, lets one half-open
// probe through, and bounds how often one breaker proposes a transition.
// The replicated breaker state lives in consensus; this package reads it
// through a StateReader and proposes transitions through a Proposer, so
// every node routes by the same state. It also holds the retry budget.
package breaker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/consensus"
)

// Tuning beyond the configured threshold and timeout.
const (
	// MaxOpen caps the growing open time of a flapping backend.
	MaxOpen = 10 * time.Minute
	// FlapWindow: a breaker that opens again this soon after closing keeps
	// its trip count, so each re-open lasts twice as long.
	FlapWindow = time.Minute
	// TransitionsPerMinute bounds the transitions one breaker proposes to
	// Raft; past it the breaker proposes no half-open, so it stays open.
	TransitionsPerMinute = 6
	// RateWindow and RateMin set the error-rate trip: at least RateMin
	// requests in the window, half of them failed.
	RateWindow = 30 * time.Second
	RateMin    = 20
)

// Clock tells the time; tests pass a fake one.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// StateReader reads the replicated state of this node's breaker for a
// model (an absent breaker reads as closed with no trips). Called from
// request goroutines concurrently.
type StateReader interface {
	Breaker(model string) consensus.BreakerState
}

// Proposer commits a transition through Raft and returns once this node's
// replicated state shows it. Called from one background goroutine per
// breaker at a time; consensus.ErrBreakerConflict means another proposal won
// and is not logged.
type Proposer interface {
	ProposeBreaker(ctx context.Context, tr consensus.BreakerTransition) error
}

// Config is what a Set needs.
type Config struct {
	// Node is the name of the node whose backends the breakers guard.
	Node string
	// FailureThreshold is the consecutive failures that open a breaker.
	FailureThreshold int
	// Timeout is the first open period; it doubles per flap up to MaxOpen.
	Timeout time.Duration
	// IsFailure says whether an outcome counts against the backend
	// (client cancellations, deadlines and 4xx do not). Required.
	IsFailure func(error) bool
	State     StateReader
	Proposer  Proposer
	// Go runs a proposal in the background (the node tracks its
	// goroutines so Shutdown waits for them); nil means a bare goroutine.
	Go     func(func())
	Clock  Clock
	Logger *slog.Logger
}

// Set holds the breakers of one node's models.
type Set struct {
	cfg Config
	mu  sync.Mutex
	m   map[string]*tracker
	// pending counts the trackers with a trip not yet seen in the replicated state, so a
	// request checks nothing more while there is none.
	pending atomic.Int32
}

type tracker struct {
	consecutive int
	window      rateWindow
	probing     bool
	closedAt    time.Time
	proposals   []time.Time
	proposing   bool
	// tripped and trippedUntil hold a trip this node proposed but the replicated state does
	// not show yet: until it shows a transition at or after tripped, or trippedUntil passes,
	// this node treats its breaker as open. The Raft round trip takes a moment, longer on a
	// loaded cluster, and forever without a quorum; every request admitted meanwhile would
	// fail and spend the retry budget until clients saw errors.
	tripped, trippedUntil time.Time
	// trip is the transition proposed at tripped; Tick proposes it again after a failure.
	trip consensus.BreakerTransition
}

// rateWindow counts a model's outcomes over the last RateWindow in one-second buckets: its
// size and the cost of an observation are the same at one request a minute or 100,000 a
// second. (A record per outcome held 300,000 of them for a model at 10,000 req/s, and
// copying the slice whenever it outgrew its array stalled every request for milliseconds.)
// An outcome counts for at least RateWindow and less than RateWindow plus a second.
type rateWindow struct {
	buckets [rateBuckets]rateBucket
}

// rateBuckets covers RateWindow with the current, partly elapsed second besides.
const rateBuckets = int(RateWindow/time.Second) + 1

type rateBucket struct {
	sec         int64 // the Unix second counted; stale once more than RateWindow behind
	seen, fails int
}

// add counts an outcome at now and returns the window's totals.
func (w *rateWindow) add(now time.Time, failed bool) (seen, fails int) {
	sec := now.Unix()
	b := &w.buckets[uint64(sec)%uint64(rateBuckets)]
	if b.sec != sec {
		*b = rateBucket{sec: sec}
	}
	b.seen++
	if failed {
		b.fails++
	}
	oldest := sec - int64(rateBuckets-1)
	for i := range w.buckets {
		// Buckets ahead of now (a clock stepped back) are left out, like old ones.
		if c := &w.buckets[i]; c.sec >= oldest && c.sec <= sec {
			seen += c.seen
			fails += c.fails
		}
	}
	return seen, fails
}

// New returns a Set; it proposes nothing until requests report outcomes.
func New(cfg Config) *Set {
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Go == nil {
		cfg.Go = func(f func()) { go f() }
	}
	return &Set{cfg: cfg, m: map[string]*tracker{}}
}

func (s *Set) tracker(model string) *tracker {
	t, ok := s.m[model]
	if !ok {
		t = &tracker{}
		s.m[model] = t
	}
	return t
}

// Admit decides whether a request may run on model here: always when
// closed, never when open, and one probe at a time when half-open. done
// must be called with the outcome when admitted.
func (s *Set) Admit(model string) (done func(error), ok bool) {
	st := s.cfg.State.Breaker(model)
	if s.trippedHere(model, st) {
		return nil, false
	}
	switch st.State {
	case consensus.BreakerOpen:
		s.maybeHalfOpen(model, st)
		return nil, false
	case consensus.BreakerHalfOpen:
		s.mu.Lock()
		t := s.tracker(model)
		if t.probing {
			s.mu.Unlock()
			return nil, false
		}
		t.probing = true
		s.mu.Unlock()
		return func(err error) {
			s.mu.Lock()
			s.tracker(model).probing = false
			s.mu.Unlock()
			s.probeResult(model, err)
		}, true
	}
	return func(err error) { s.observe(model, err) }, true
}

// Open reports whether model's breaker is open as this node knows it: open in the replicated
// state, or tripped here and not replicated yet. Routing asks it for the node's own candidate.
func (s *Set) Open(model string) bool {
	st := s.cfg.State.Breaker(model)
	return st.State == consensus.BreakerOpen || s.trippedHere(model, st)
}

// trippedHere reports whether this node tripped model's breaker and the replicated state st
// does not show it yet; it forgets a trip once shown or expired.
func (s *Set) trippedHere(model string, st consensus.BreakerState) bool {
	if s.pending.Load() == 0 {
		return false
	}
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.m[model]
	if t == nil || t.tripped.IsZero() {
		return false
	}
	if !st.Since.Before(t.tripped) || !now.Before(t.trippedUntil) {
		t.tripped, t.trippedUntil = time.Time{}, time.Time{}
		s.pending.Add(-1)
		return false
	}
	return true
}

// Observe counts an outcome seen outside a request, such as a failed
// upstream readiness check, as Admit's done func would; call it only while
// the breaker is closed.
func (s *Set) Observe(model string, err error) { s.observe(model, err) }

// observe records an outcome of a closed breaker and opens it when the
// consecutive failures or the error rate cross their thresholds.
func (s *Set) observe(model string, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	failed := s.cfg.IsFailure(err)
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	t := s.tracker(model)
	if failed {
		t.consecutive++
	} else {
		t.consecutive = 0
	}
	// Read under the lock: another request's outcome may change the
	// tracker as soon as it is released.
	seen, fails := t.window.add(now, failed)
	consecutive := t.consecutive
	trip := failed && (consecutive >= s.cfg.FailureThreshold || (seen >= RateMin && fails*2 >= seen))
	s.mu.Unlock()
	if trip {
		s.open(model, consensus.BreakerClosed, fmt.Sprintf("%d consecutive failures, %d/%d in %s: %v", consecutive, fails, seen, RateWindow, err))
	}
}

// open proposes from → open with a timeout that doubles for a flapping
// backend.
func (s *Set) open(model string, from consensus.BreakerStatus, reason string) {
	now := s.cfg.Clock.Now()
	cur := s.cfg.State.Breaker(model)
	s.mu.Lock()
	t := s.tracker(model)
	trips := 1
	if from == consensus.BreakerHalfOpen || (!t.closedAt.IsZero() && now.Sub(t.closedAt) < FlapWindow) {
		trips = cur.Trips + 1
	}
	t.consecutive, t.window = 0, rateWindow{}
	d := s.cfg.Timeout << min(trips-1, 8)
	d = min(d, MaxOpen)
	if t.tripped.IsZero() {
		s.pending.Add(1)
	}
	t.trip = consensus.BreakerTransition{Node: s.cfg.Node, Model: model, From: from, To: consensus.BreakerOpen,
		At: now, OpenUntil: now.Add(d), Trips: trips, Reason: reason}
	t.tripped, t.trippedUntil = now, now.Add(d)
	tr := t.trip
	s.mu.Unlock()
	s.propose(model, tr)
}

// maybeHalfOpen moves an open breaker whose time is up to half-open, unless
// the breaker already changed state too often this minute.
func (s *Set) maybeHalfOpen(model string, st consensus.BreakerState) {
	now := s.cfg.Clock.Now()
	if now.Before(st.OpenUntil) {
		return
	}
	s.propose(model, consensus.BreakerTransition{Node: s.cfg.Node, Model: model, From: consensus.BreakerOpen,
		To: consensus.BreakerHalfOpen, At: now, Trips: st.Trips, Reason: "open timeout passed; probing"})
}

// Tick moves the open breakers of models whose time is up to half-open, so
// probing starts even though no router sends work to an open target.
// It also proposes again a trip held here whose proposal failed (no leader,
// a lost peer call): the node routes around its backend meanwhile, so no new
// failure would trip it again.
func (s *Set) Tick(models []string) {
	for _, m := range models {
		cur := s.cfg.State.Breaker(m)
		if cur.State == consensus.BreakerOpen {
			s.maybeHalfOpen(m, cur)
			continue
		}
		if s.trippedHere(m, cur) {
			s.mu.Lock()
			tr := s.tracker(m).trip
			s.mu.Unlock()
			if tr.From == cur.State {
				s.propose(m, tr)
			}
		}
	}
}

func (s *Set) probeResult(model string, err error) {
	if s.cfg.IsFailure(err) {
		s.open(model, consensus.BreakerHalfOpen, fmt.Sprintf("probe failed: %v", err))
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	cur := s.cfg.State.Breaker(model)
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	s.tracker(model).closedAt = now
	s.mu.Unlock()
	s.propose(model, consensus.BreakerTransition{Node: s.cfg.Node, Model: model, From: consensus.BreakerHalfOpen,
		To: consensus.BreakerClosed, At: now, Trips: cur.Trips, Reason: "probe succeeded"})
}

// propose commits a transition in the background, one proposal at a time.
// Past TransitionsPerMinute proposals of a breaker in the last minute it
// proposes no half-open: an open breaker stays open. Opens and closes always
// pass: a half-open breaker whose probe succeeded must close (refusing it
// left the model at one request at a time while every probe succeeded), and
// with half-opens gated the total stays bounded.
func (s *Set) propose(model string, tr consensus.BreakerTransition) {
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	t := s.tracker(model)
	for len(t.proposals) > 0 && now.Sub(t.proposals[0]) > time.Minute {
		t.proposals = t.proposals[1:]
	}
	if t.proposing || (len(t.proposals) >= TransitionsPerMinute && tr.To == consensus.BreakerHalfOpen) {
		s.mu.Unlock()
		return
	}
	t.proposing = true
	s.mu.Unlock()
	s.cfg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := s.cfg.Proposer.ProposeBreaker(ctx, tr)
		s.mu.Lock()
		t := s.tracker(model)
		t.proposing = false
		if err == nil {
			// Only committed transitions count against the budget: a trip proposed again each
			// second while Raft has no leader must not keep the breaker from probing later.
			t.proposals = append(t.proposals, now)
		}
		// The Proposer returns once this node applied the transition: the replicated state
		// speaks for the trip from now on (and an operator's later close is obeyed at once).
		if err == nil && tr.To == consensus.BreakerOpen && t.tripped.Equal(tr.At) {
			t.tripped, t.trippedUntil = time.Time{}, time.Time{}
			s.pending.Add(-1)
		}
		s.mu.Unlock()
		switch {
		case err == nil:
			s.cfg.Logger.Warn("circuit breaker", "model", model, "from", tr.From, "to", tr.To, "trips", tr.Trips, "reason", tr.Reason)
		case errors.Is(err, consensus.ErrBreakerConflict):
		default:
			s.cfg.Logger.Warn("propose breaker transition", "model", model, "to", tr.To, "err", err)
		}
	})
}
