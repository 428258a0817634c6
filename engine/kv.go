package engine

// kvCache hands out KV pages within a byte budget. A sequence reserves, on
// admission, the pages its longest possible run needs (prompt plus
// max_tokens, capped at seq_len), so a step can never run out of cache; it
// takes pages as it actually grows and returns them when it leaves. Freed
// pages go to a free list and are reused, never handed back to the garbage
// collector, so steady serving allocates no cache memory. Callers serialise
// access (Backend.mu).
//
// The prefix cache's pages count against the same budget: reserved plus
// cached never exceeds it, and a reservation that would not fit evicts idle
// prefix pages first.
type kvCache struct {
	pageFloats int
	pageBytes  int64
	budget     int // pages
	reserved   int
	allocated  int
	free       [][]float32
	prefix     prefixCache
	cached     int // pages held by the prefix cache
}

func newKVCache(c ModelConfig, budgetBytes int64) kvCache {
	pf := c.Layers * 2 * kvPageTokens * c.KVDim()
	pb := int64(pf) * 4
	return kvCache{pageFloats: pf, pageBytes: pb, budget: int(budgetBytes / pb)}
}

// pagesFor is the number of pages that hold positions positions.
func pagesFor(positions int) int { return (positions + kvPageTokens - 1) / kvPageTokens }

// reserve claims n pages of the budget, or reports false when they are not
// free.
func (k *kvCache) reserve(n int) bool {
	for k.reserved+n+k.cached > k.budget {
		p := k.prefix.evictOne()
		if p == nil {
			return false
		}
		k.cached--
		k.free = append(k.free, p)
	}
	k.reserved += n
	return true
}

// take returns a page for a sequence that reserved it.
func (k *kvCache) take() []float32 {
	if n := len(k.free); n > 0 {
		p := k.free[n-1]
		k.free[n-1] = nil
		k.free = k.free[:n-1]
		return p
	}
	k.allocated++
	return make([]float32, k.pageFloats)
}

// release returns a sequence's pages to the free list and its reservation
// to the budget.
// Pages handed to the prefix cache are nil here and skipped.
func (k *kvCache) release(pages [][]float32, reserved int) {
	for _, p := range pages {
		if p != nil {
			k.free = append(k.free, p)
		}
	}
	k.reserved -= reserved
}
