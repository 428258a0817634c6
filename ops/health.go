package ops

import (
	"encoding/json"
	"net/http"
	"sort"
	"sync"
)

// Status levels of the health report.
const (
	StatusOK          = "ok"
	StatusDegraded    = "degraded"
	StatusUnavailable = "unavailable"
)

// Component is one part's health.
type Component struct {
	Status string         `json:"status"`
	Detail string         `json:"detail,omitempty"`
	Data   map[string]any `json:"data,omitempty"`
	// Critical components make the node unavailable when they are; others
	// only degrade it.
	Critical bool `json:"-"`
}

// Check reports a component's health; it must be cheap and not block.
type Check func() Component

// Health aggregates component checks into the /health report.
type Health struct {
	node string

	mu     sync.RWMutex
	checks map[string]Check
}

// NewHealth makes an empty report for the named node.
func NewHealth(node string) *Health {
	return &Health{node: node, checks: map[string]Check{}}
}

// Register adds or replaces a component check.
func (h *Health) Register(name string, c Check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks[name] = c
}

// Report is the /health body.
type Report struct {
	Status     string               `json:"status"`
	Node       string               `json:"node"`
	Components map[string]Component `json:"components"`
}

// Report runs every check. The node is unavailable when a critical
// component is, degraded when any component is not ok.
func (h *Health) Report() Report {
	h.mu.RLock()
	names := make([]string, 0, len(h.checks))
	checks := make(map[string]Check, len(h.checks))
	for n, c := range h.checks {
		names = append(names, n)
		checks[n] = c
	}
	h.mu.RUnlock()
	sort.Strings(names)
	r := Report{Status: StatusOK, Node: h.node, Components: make(map[string]Component, len(names))}
	for _, n := range names {
		c := checks[n]()
		r.Components[n] = c
		switch {
		case c.Status == StatusUnavailable && c.Critical:
			r.Status = StatusUnavailable
		case c.Status != StatusOK && r.Status == StatusOK:
			r.Status = StatusDegraded
		}
	}
	return r
}

// ServeHTTP answers 200 when the node can serve, 503 when it cannot.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rep := h.Report()
	code := http.StatusOK
	if rep.Status == StatusUnavailable {
		code = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "5")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_ = json.NewEncoder(w).Encode(rep)
	}
}
