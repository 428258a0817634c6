// Package slots is a fixed-size, direct-mapped table of atomically replaced
// entries: the shape of shoal's memos, where a new key evicts whatever
// shared its slot, readers never lock, and the table's size is its bound
// whatever keys clients send.
package slots

import (
	"hash/maphash"
	"sync/atomic"
)

// Table holds at most one entry per slot. Entries are published whole
// (Store) and must not change afterwards except through their own atomic
// fields.
type Table[E any] struct {
	seed  maphash.Seed
	slots []atomic.Pointer[E]
}

// New returns a table of n slots (n > 0), hashed with a seed of its own so
// clients cannot aim keys at one slot across nodes.
func New[E any](n int) *Table[E] {
	return &Table[E]{seed: maphash.MakeSeed(), slots: make([]atomic.Pointer[E], n)}
}

// String is key's slot.
func (t *Table[E]) String(key string) *atomic.Pointer[E] {
	return &t.slots[maphash.String(t.seed, key)%uint64(len(t.slots))]
}

// Bytes is key's slot; the same as String(string(key)).
func (t *Table[E]) Bytes(key []byte) *atomic.Pointer[E] {
	return &t.slots[maphash.Bytes(t.seed, key)%uint64(len(t.slots))]
}

// Held counts the slots that hold an entry.
func (t *Table[E]) Held() int {
	n := 0
	for i := range t.slots {
		if t.slots[i].Load() != nil {
			n++
		}
	}
	return n
}
