package httpapi

import (
	"bytes"
	"sync/atomic"

	"github.com/shoal-dev/shoal/internal/slots"
)

// A cache hit repeats a body the node has seen, and decoding it was the
// largest share of shoal's own work on a hit (JSON walk, validation and
// six allocations; the cache key's SHA-256 came next). The request memo
// keeps the decoded request of bodies that were answered from the cache,
// with the key they hashed to, so the next identical body skips both.
//
// It can only save work, never change an answer: decoding is a pure
// function of the body (no setting takes part), an entry is used only for
// a body byte-equal to the one decoded, every request gets its own copy
// of the decoded request, and a memoized key is used only under the scope
// and key stamp (purge epoch, lowercasing) it was computed under. Limits,
// authentication and the cache lookup itself run on every request as
// before.
const (
	// reqMemoSlots bounds the entries of one endpoint's memo
	// (direct-mapped: a new body evicts whatever shared its slot).
	reqMemoSlots = 256
	// reqMemoMaxBody is the largest body memoized: an entry holds the
	// body and its decoded copy, so one endpoint's memo holds at most
	// about 2 x 256 x 4 KiB.
	reqMemoMaxBody = 4 << 10
)

type reqMemo struct {
	slots *slots.Table[reqMemoEntry]
}

// reqMemoEntry is immutable once published except for key, which is
// replaced whole; req's slices are shared by every request that copies
// it, and nothing on the request path writes into them.
type reqMemoEntry struct {
	body []byte
	req  Request
	key  atomic.Pointer[memoKey]
}

// memoKey is a cache key and what it was computed under.
type memoKey struct {
	scope     string
	stamp     uint64
	key       string
	cacheable bool
}

func newReqMemo() *reqMemo { return &reqMemo{slots: slots.New[reqMemoEntry](reqMemoSlots)} }

func (m *reqMemo) slot(body []byte) *atomic.Pointer[reqMemoEntry] { return m.slots.Bytes(body) }

// get returns a copy of the request decoded from body, and its entry, if
// body is memoized.
func (m *reqMemo) get(body []byte) (*Request, *reqMemoEntry) {
	if len(body) > reqMemoMaxBody {
		return nil, nil
	}
	e := m.slot(body).Load()
	if e == nil || !bytes.Equal(e.body, body) {
		return nil, nil
	}
	req := e.req
	req.memo = e
	return &req, e
}

// put memoizes decoded, the request as body decoded to before anything
// changed it, and the key req was given under scope and stamp. The body is
// copied: the read buffer's capacity may be twice its length, and the
// caller keeps its own.
func (m *reqMemo) put(body []byte, decoded *Request, k memoKey) {
	if len(body) > reqMemoMaxBody {
		return
	}
	e := &reqMemoEntry{body: bytes.Clone(body), req: *decoded}
	e.req.memo = nil
	e.key.Store(&k)
	m.slot(body).Store(e)
}

// cachedKey returns the entry's key if it was computed under scope and
// stamp.
func (e *reqMemoEntry) cachedKey(scope string, stamp uint64) (string, bool, bool) {
	k := e.key.Load()
	if k == nil || k.scope != scope || k.stamp != stamp {
		return "", false, false
	}
	return k.key, k.cacheable, true
}
