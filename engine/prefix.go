package engine

import (
	"container/list"
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// prefixCache keeps the KV pages of recent prompts' full blocks (a block is
// one page: kvPageTokens positions) for later prompts that share them, as
// vLLM's automatic prefix caching does. A block is named by a hash chained
// with its parent's, so it stands for the whole prefix up to its end, and
// its keys and values (which depend only on that prefix) can be reused by
// any prompt that starts the same way. Cached pages count against the KV
// budget; those no running sequence uses are evicted least recently used
// first whenever a reservation needs the room. Callers hold Backend.mu.
type prefixCache struct {
	enabled bool
	entries map[uint64]*prefixEntry
	// idle holds the entries no sequence uses, most recently used first.
	idle list.List
	// lookups and hits count prompt tokens, for the hit ratio.
	lookups, hits uint64
}

type prefixEntry struct {
	hash uint64
	page []float32
	refs int
	// elem is the entry's place in idle while refs is 0.
	elem *list.Element
}

// blockHashes returns the chained hashes of prompt's full blocks.
func blockHashes(prompt []int) []uint64 {
	n := len(prompt) / kvPageTokens
	if n == 0 {
		return nil
	}
	out := make([]uint64, n)
	var d xxhash.Digest
	var buf [8 + 4*kvPageTokens]byte
	var parent uint64
	for i := range n {
		binary.LittleEndian.PutUint64(buf[:8], parent)
		for j, tok := range prompt[i*kvPageTokens : (i+1)*kvPageTokens] {
			binary.LittleEndian.PutUint32(buf[8+4*j:], uint32(tok))
		}
		d.Reset()
		_, _ = d.Write(buf[:])
		parent = d.Sum64()
		out[i] = parent
	}
	return out
}

// pin finds how many leading blocks of a prompt are cached and marks them
// used, so eviction cannot take them; at least one prompt token is always
// left to compute, since its logits give the first output token.
func (c *prefixCache) pin(hashes []uint64, promptLen int) [][]float32 {
	if !c.enabled {
		return nil
	}
	c.lookups += uint64(promptLen)
	limit := min(len(hashes), (promptLen-1)/kvPageTokens)
	var pages [][]float32
	for _, h := range hashes[:limit] {
		e := c.entries[h]
		if e == nil {
			break
		}
		if e.refs == 0 {
			c.idle.Remove(e.elem)
			e.elem = nil
		}
		e.refs++
		pages = append(pages, e.page)
	}
	c.hits += uint64(len(pages) * kvPageTokens)
	return pages
}

// unpin releases the first n blocks of hashes; deepest first, so parents
// end up more recently used than their children and are evicted after them.
func (c *prefixCache) unpin(hashes []uint64, n int) {
	for i := n - 1; i >= 0; i-- {
		e := c.entries[hashes[i]]
		e.refs--
		if e.refs == 0 {
			e.elem = c.idle.PushFront(e)
		}
	}
}

// evictOne drops the least recently used idle entry and returns its page,
// or nil when every cached page is in use.
func (c *prefixCache) evictOne() []float32 {
	back := c.idle.Back()
	if back == nil {
		return nil
	}
	e := c.idle.Remove(back).(*prefixEntry)
	delete(c.entries, e.hash)
	return e.page
}
