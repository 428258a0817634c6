package router

import "time"

// PickAt is Pick with the clock supplied by the caller (see RouteAt).
func (r *Router) PickAt(cands []Candidate, exclude map[string]bool, now time.Time) (Candidate, string, error) {
	return r.RouteAt(Request{}, cands, exclude, now)
}
