package router

import "time"

// PickAt is Pick with the clock supplied by the caller. The cluster
// simulator (clustersim) runs the real filter, score and power-of-two pick
// on simulated time through it, so a change to the scoring is simulated as
// it will run; Pick itself reads the wall clock. The round-robin policy
// is not simulated (it picks as least-queued here).
func (r *Router) PickAt(cands []Candidate, exclude map[string]bool, now time.Time) (Candidate, string, error) {
	cands = r.Filter(cands, exclude)
	if len(cands) == 0 {
		return Candidate{}, "", ErrNoCandidate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var pick Candidate
	switch r.policy {
	case PolicyRandom:
		pick = cands[r.rng.IntN(len(cands))]
	default:
		pick = r.pickLeastQueued(cands)
	}
	if !pick.Local {
		r.recordSend(pick.Node, now)
	}
	return pick, r.policy, nil
}
