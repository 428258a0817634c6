package breaker

import "sync"

// RetryBudget allows retries up to a fifth of recent requests (plus a
// small floor), so a dead backend never multiplies load. The zero value
// has no tokens; NewRetryBudget starts full.
type RetryBudget struct {
	mu     sync.Mutex
	tokens float64
}

const (
	retryRatio  = 0.2
	retryTokens = 10
)

// NewRetryBudget returns a budget holding its floor of retries.
func NewRetryBudget() *RetryBudget { return &RetryBudget{tokens: retryTokens} }

// Request records a first attempt, earning a fraction of a retry.
func (r *RetryBudget) Request() {
	r.mu.Lock()
	r.tokens = min(r.tokens+retryRatio, retryTokens)
	r.mu.Unlock()
}

// Take spends one retry; false means the budget is spent.
func (r *RetryBudget) Take() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tokens < 1 {
		return false
	}
	r.tokens--
	return true
}
