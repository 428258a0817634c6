package dcache

import (
	"bytes"
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// entryOverhead approximates the bookkeeping behind one local entry (its slot, index entry
// and buffer header), so that many tiny entries cannot exceed MaxBytes by much.
const entryOverhead = 128

// sweepEvery is how many counter or lock operations pass between sweeps of expired ones.
const sweepEvery = 4096

type nsKey struct{ ns, key string }

// localSlot is one response entry. Its one pointer is to its bytes (namespace, key and
// value, back to back), a pointer-free object: the collector marks one object per entry. A
// store of 256 MiB of small answers kept as list elements, entry structs and map keys was
// several objects and pointers per entry, and marking them took 70-100 ms of request CPU in
// every collection.
type localSlot struct {
	blob       []byte
	hash       uint64
	prev, next int32 // LRU neighbours; noSlot at either end
	nsLen      int32
	keyLen     int32
	expires    int64 // Unix ns; 0: no expiry
	size       int64
}

const noSlot = -1

// slotChunk is how many slots are allocated at once. The slots grow by whole chunks and are
// never copied: a slice of 200,000 slots copied on append would hold the store's lock for
// milliseconds each time it outgrew its array.
const slotChunk = 4096

type localCounter struct {
	v       int
	expires time.Time
}

type localLock struct {
	token   uint64
	expires time.Time
}

// localStore is the in-process backend: an LRU of responses bounded in bytes, plus counters
// and locks. With responses false (the off backend) it drops every response and keeps only
// counters and locks.
type localStore struct {
	responses bool
	maxBytes  int64
	now       func() time.Time
	seed      maphash.Seed

	mu    sync.Mutex
	bytes int64
	// index finds an entry's slot by the hash of its namespace and key; the slot's own bytes
	// confirm the match, so two keys that share a hash cost a miss, never a wrong answer.
	index      map[uint64]int32
	slots      [][]localSlot // chunks of slotChunk
	used       int32         // slots ever handed out
	free       []int32       // slots of removed entries, reused before a new one
	head, tail int32         // most and least recently used; noSlot when empty
	counters   map[nsKey]*localCounter
	locks      map[nsKey]localLock
	tokens     uint64
	ops        int
}

func newLocalStore(maxBytes int64, responses bool) *localStore {
	return &localStore{
		responses: responses,
		maxBytes:  maxBytes,
		now:       time.Now,
		seed:      maphash.MakeSeed(),
		index:     make(map[uint64]int32),
		head:      noSlot,
		tail:      noSlot,
		counters:  make(map[nsKey]*localCounter),
		locks:     make(map[nsKey]localLock),
	}
}

func expired(exp, now time.Time) bool { return !exp.IsZero() && !now.Before(exp) }

func expiry(now time.Time, ttl time.Duration) time.Time {
	if ttl <= 0 {
		return time.Time{}
	}
	return now.Add(ttl)
}

func (s *localStore) start(context.Context) error { return nil }

// hash keys an entry by its namespace and key; the seed is the store's own, so clients that
// choose keys cannot aim many at one index entry.
func (s *localStore) hash(ns, key string) uint64 {
	var h maphash.Hash
	h.SetSeed(s.seed)
	_, _ = h.WriteString(ns)
	_ = h.WriteByte(0)
	_, _ = h.WriteString(key)
	return h.Sum64()
}

// find returns the slot holding (ns, key), or noSlot. Called with mu held.
func (s *localStore) find(h uint64, ns, key string) int32 {
	i, ok := s.index[h]
	if !ok {
		return noSlot
	}
	sl := s.slot(i)
	b := sl.blob
	if int(sl.nsLen) != len(ns) || int(sl.keyLen) != len(key) ||
		string(b[:sl.nsLen]) != ns || string(b[sl.nsLen:sl.nsLen+sl.keyLen]) != key {
		return noSlot
	}
	return i
}

func (s *localStore) get(_ context.Context, ns, key string) ([]byte, bool, error) {
	if !s.responses {
		return nil, false, nil
	}
	h := s.hash(ns, key)
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.find(h, ns, key)
	if i == noSlot {
		return nil, false, nil
	}
	sl := s.slot(i)
	if sl.expires != 0 && s.now().UnixNano() >= sl.expires {
		s.remove(i)
		return nil, false, nil
	}
	s.unlink(i)
	s.pushFront(i)
	// A copy, so a caller that edits its answer cannot corrupt the cache.
	return bytes.Clone(sl.blob[sl.nsLen+sl.keyLen:]), true, nil
}

func (s *localStore) set(_ context.Context, ns, key string, val []byte, ttl time.Duration) error {
	if !s.responses {
		return nil
	}
	size := int64(len(ns)+len(key)+len(val)) + entryOverhead
	h := s.hash(ns, key)
	blob := make([]byte, 0, len(ns)+len(key)+len(val))
	blob = append(append(append(blob, ns...), key...), val...)
	s.mu.Lock()
	defer s.mu.Unlock()
	var expires int64
	if ttl > 0 {
		expires = s.now().Add(ttl).UnixNano()
	}
	// Whatever holds this hash goes: the same key being replaced or, rarely, another key
	// whose hash collides.
	if i, ok := s.index[h]; ok {
		s.remove(i)
	}
	if size > s.maxBytes {
		return nil // could never fit; storing it would only flush everything else
	}
	for s.bytes+size > s.maxBytes {
		s.remove(s.tail)
	}
	var i int32
	if n := len(s.free); n > 0 {
		i, s.free = s.free[n-1], s.free[:n-1]
	} else {
		if int(s.used) == len(s.slots)*slotChunk {
			s.slots = append(s.slots, make([]localSlot, slotChunk))
		}
		i = s.used
		s.used++
	}
	*s.slot(i) = localSlot{blob: blob, hash: h, nsLen: int32(len(ns)), keyLen: int32(len(key)), expires: expires, size: size}
	s.index[h] = i
	s.pushFront(i)
	s.bytes += size
	return nil
}

func (s *localStore) slot(i int32) *localSlot { return &s.slots[i/slotChunk][i%slotChunk] }

// pushFront makes slot i the most recently used. Called with mu held.
func (s *localStore) pushFront(i int32) {
	sl := s.slot(i)
	sl.prev, sl.next = noSlot, s.head
	if s.head != noSlot {
		s.slot(s.head).prev = i
	}
	s.head = i
	if s.tail == noSlot {
		s.tail = i
	}
}

// unlink takes slot i out of the LRU order. Called with mu held.
func (s *localStore) unlink(i int32) {
	sl := s.slot(i)
	if sl.prev != noSlot {
		s.slot(sl.prev).next = sl.next
	} else {
		s.head = sl.next
	}
	if sl.next != noSlot {
		s.slot(sl.next).prev = sl.prev
	} else {
		s.tail = sl.prev
	}
	sl.prev, sl.next = noSlot, noSlot
}

// remove drops the entry in slot i and frees the slot. Called with mu held.
func (s *localStore) remove(i int32) {
	s.unlink(i)
	sl := s.slot(i)
	delete(s.index, sl.hash)
	s.bytes -= sl.size
	*sl = localSlot{}
	s.free = append(s.free, i)
}

func (s *localStore) del(_ context.Context, ns, key string) error {
	h := s.hash(ns, key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := s.find(h, ns, key); i != noSlot {
		s.remove(i)
	}
	return nil
}

func (s *localStore) purge(_ context.Context, ns string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := s.head; i != noSlot; {
		sl := s.slot(i)
		next := sl.next
		if ns == "" || int(sl.nsLen) == len(ns) && string(sl.blob[:sl.nsLen]) == ns {
			s.remove(i)
		}
		i = next
	}
	return nil
}

func (s *localStore) incr(_ context.Context, ns, key string, delta int, ttl time.Duration) (int, error) {
	k := nsKey{ns, key}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.sweep(now)
	c, ok := s.counters[k]
	if !ok || expired(c.expires, now) {
		c = &localCounter{expires: expiry(now, ttl)}
		s.counters[k] = c
	}
	c.v += delta
	return c.v, nil
}

func (s *localStore) lock(_ context.Context, ns, key string, lease time.Duration) (held, error) {
	k := nsKey{ns, key}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.sweep(now)
	if l, ok := s.locks[k]; ok && !expired(l.expires, now) {
		return held{}, ErrLocked
	}
	s.tokens++
	token := s.tokens
	s.locks[k] = localLock{token: token, expires: now.Add(lease)}
	return held{
		unlock: func(context.Context) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			l, ok := s.locks[k]
			if !ok || l.token != token || expired(l.expires, s.now()) {
				return ErrNotLocked
			}
			delete(s.locks, k)
			return nil
		},
		renew: func(_ context.Context, lease time.Duration) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			now := s.now()
			l, ok := s.locks[k]
			if !ok || l.token != token || expired(l.expires, now) {
				return ErrNotLocked
			}
			l.expires = now.Add(lease)
			s.locks[k] = l
			return nil
		},
	}, nil
}

// sweep drops expired counters and locks every sweepEvery operations, so abandoned keys (a
// rate-limit window that passed) do not accumulate. Called with mu held.
func (s *localStore) sweep(now time.Time) {
	s.ops++
	if s.ops < sweepEvery {
		return
	}
	s.ops = 0
	for k, c := range s.counters {
		if expired(c.expires, now) {
			delete(s.counters, k)
		}
	}
	for k, l := range s.locks {
		if expired(l.expires, now) {
			delete(s.locks, k)
		}
	}
}

func (s *localStore) members() int  { return 1 }
func (s *localStore) shared() bool  { return false }
func (s *localStore) expected() int { return 0 }

func (s *localStore) usage() (int64, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.index)), s.bytes
}

func (s *localStore) close(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index = make(map[uint64]int32)
	s.slots, s.used, s.free = nil, 0, nil
	s.head, s.tail = noSlot, noSlot
	s.bytes = 0
	return nil
}
