package respcache

import (
	"bytes"
	"sync/atomic"

	"github.com/shoal-dev/shoal/internal/slots"
	"github.com/shoal-dev/shoal/scheduler"
)

// A hit decodes the same stored bytes on every request (a fifth of a
// hit's CPU went to json.Unmarshal). The memo keeps the last decoded
// answer per slot and serves it only when the store has just returned
// bytes equal to the ones it decoded, so the store alone still decides
// what is a hit: TTL, purges, scopes and replication are unchanged, and
// the memo can only save a decode, never answer on its own.
//
// With a near cache (Config.Near), a memo entry may also answer on its own
// for a short time after the store returned it (fresh).
const (
	// memoSlots bounds the memo's entries (direct-mapped: a new key
	// evicts whatever shared its slot).
	memoSlots = 1024
	// memoMaxBytes is the largest stored answer memoized: with the
	// decoded copy, the memo holds at most about 2 x 1,024 x 8 KiB.
	memoMaxBytes = 8 << 10
)

type memo struct {
	slots *slots.Table[memoEntry]
}

// memoEntry is immutable once published; its results are shared by every
// request that hits it, so no reader may modify them.
type memoEntry struct {
	ns, key string
	data    []byte
	results []scheduler.Result
	// expires is the stored answer's own expiry (Unix ns; -1 never, 0
	// unknown: an answer stored by an older node).
	expires int64
	// gen and until let the entry answer without the store: while the
	// cache generation is gen and the clock before until (Unix ns; 0
	// never).
	gen   uint64
	until int64
}

// nearStamp is what a lookup lets the memo answer alone for: until (Unix
// ns, 0 for none) in generation gen, read before the store was asked.
type nearStamp struct {
	until int64
	gen   uint64
}

func newMemo() *memo { return &memo{slots: slots.New[memoEntry](memoSlots)} }

func (m *memo) slot(key string) *atomic.Pointer[memoEntry] { return m.slots.String(key) }

// decode returns data's results as decode would, from the memo when it
// decoded equal bytes for (ns, key) before. ok is false for bytes that do
// not decode. near, when its until is set, lets the entry answer alone
// (fresh) until then, never past the answer's own expiry.
func (m *memo) decode(ns, key string, data []byte, near nearStamp) ([]scheduler.Result, bool) {
	s := m.slot(key)
	e := s.Load()
	if e == nil || e.key != key || e.ns != ns || !bytes.Equal(e.data, data) {
		a := decodeInto()
		if a.decode(data) != nil {
			return nil, false
		}
		// A full slice expression, so a caller's append copies instead of
		// writing into the shared array.
		results := a.Results[:len(a.Results):len(a.Results)]
		if len(data) > memoMaxBytes {
			return results, true
		}
		// The memo's own copy: the store's slice belongs to the caller.
		e = &memoEntry{ns: ns, key: key, data: bytes.Clone(data), results: results, expires: a.Expires}
		e.until, e.gen = e.nearUntil(near), near.gen
		s.Store(e)
		return results, true
	}
	if until := e.nearUntil(near); until != 0 && (until > e.until || near.gen != e.gen) {
		// Entries are immutable: a renewed one replaces it, once per
		// near period of a hot key.
		renewed := *e
		renewed.until, renewed.gen = until, near.gen
		s.Store(&renewed)
	}
	return e.results, true
}

// nearUntil is how long the entry may answer alone after a lookup stamped
// near: not at all for an answer of unknown expiry.
func (e *memoEntry) nearUntil(near nearStamp) int64 {
	switch {
	case near.until == 0 || e.expires == 0:
		return 0
	case e.expires > 0:
		return min(near.until, e.expires)
	}
	return near.until
}

// fresh returns (ns, key)'s results when its entry may answer alone at now
// (Unix ns) in generation gen.
func (m *memo) fresh(ns, key string, now int64, gen uint64) ([]scheduler.Result, bool) {
	e := m.slot(key).Load()
	if e == nil || e.until <= now || e.gen != gen || e.key != key || e.ns != ns {
		return nil, false
	}
	return e.results, true
}
