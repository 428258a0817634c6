package dcache

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// entryOverhead approximates the bookkeeping behind one local entry (map slot, list element,
// entry struct), so that many tiny entries cannot exceed MaxBytes by much.
const entryOverhead = 128

// sweepEvery is how many counter or lock operations pass between sweeps of expired ones.
const sweepEvery = 4096

type nsKey struct{ ns, key string }

type localEntry struct {
	k       nsKey
	val     []byte
	expires time.Time // zero: no expiry
	size    int64
}

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

	mu       sync.Mutex
	bytes    int64
	lru      list.List // front: most recently used *localEntry
	items    map[nsKey]*list.Element
	counters map[nsKey]*localCounter
	locks    map[nsKey]localLock
	tokens   uint64
	ops      int
}

func newLocalStore(maxBytes int64, responses bool) *localStore {
	return &localStore{
		responses: responses,
		maxBytes:  maxBytes,
		now:       time.Now,
		items:     make(map[nsKey]*list.Element),
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

func (s *localStore) get(_ context.Context, ns, key string) ([]byte, bool, error) {
	if !s.responses {
		return nil, false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.items[nsKey{ns, key}]
	if !ok {
		return nil, false, nil
	}
	e := el.Value.(*localEntry)
	if expired(e.expires, s.now()) {
		s.remove(el)
		return nil, false, nil
	}
	s.lru.MoveToFront(el)
	// A copy, so a caller that edits its answer cannot corrupt the cache.
	return append([]byte(nil), e.val...), true, nil
}

func (s *localStore) set(_ context.Context, ns, key string, val []byte, ttl time.Duration) error {
	if !s.responses {
		return nil
	}
	k := nsKey{ns, key}
	e := &localEntry{
		k:    k,
		val:  append([]byte(nil), val...),
		size: int64(len(ns)+len(key)+len(val)) + entryOverhead,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e.expires = expiry(s.now(), ttl)
	if el, ok := s.items[k]; ok {
		s.remove(el)
	}
	if e.size > s.maxBytes {
		return nil // could never fit; storing it would only flush everything else
	}
	for s.bytes+e.size > s.maxBytes {
		s.remove(s.lru.Back())
	}
	s.items[k] = s.lru.PushFront(e)
	s.bytes += e.size
	return nil
}

func (s *localStore) remove(el *list.Element) {
	e := s.lru.Remove(el).(*localEntry)
	delete(s.items, e.k)
	s.bytes -= e.size
}

func (s *localStore) del(_ context.Context, ns, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.items[nsKey{ns, key}]; ok {
		s.remove(el)
	}
	return nil
}

func (s *localStore) purge(_ context.Context, ns string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for el := s.lru.Front(); el != nil; {
		next := el.Next()
		if ns == "" || el.Value.(*localEntry).k.ns == ns {
			s.remove(el)
		}
		el = next
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
	return int64(len(s.items)), s.bytes
}

func (s *localStore) close(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items = make(map[nsKey]*list.Element)
	s.lru.Init()
	s.bytes = 0
	return nil
}
