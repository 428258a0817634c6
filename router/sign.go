package router

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Headers that authenticate a forwarded request (see Sign).
const (
	// HeaderForwardTime is the sender's clock, Unix seconds, when it signed.
	HeaderForwardTime = "X-Shoal-Forward-Time"
	// HeaderForwardID is a random ID unique to one forward attempt; the
	// receiver refuses an ID it has seen (a replay).
	HeaderForwardID = "X-Shoal-Forward-ID"
)

// DefaultSignatureWindow is how far a forwarded request's time may be from
// the receiver's clock.
const DefaultSignatureWindow = 30 * time.Second

// Forward-verification failures.
var (
	// ErrBadSignature: the headers are missing or were not made with the
	// cluster secret over this request (another body, path or target).
	ErrBadSignature = errors.New("forward signature does not match")
	// ErrStale: the signature's time is outside the window.
	ErrStale = errors.New("forward signature outside its time window")
	// ErrReplay: this forward ID was seen before.
	ErrReplay = errors.New("forward ID already seen")
)

// Forwarded describes one signed forward.
type Forwarded struct {
	// From is the sending node, To the receiving one.
	From, To string
	// Method and URI are the request's method and request URI.
	Method, URI string
	// Body is the request body as sent.
	Body []byte
	// RequestID is the client-visible X-Request-ID.
	RequestID string
	// At is when it was signed; ID a random nonce.
	At time.Time
	ID string
}

// mac is the signature of f under secret: every field that decides what
// the receiver does, so a captured header set is worth nothing with another
// body, path, target or time.
func (f Forwarded) mac(secret []byte) string {
	sum := sha256.Sum256(f.Body)
	m := hmac.New(sha256.New, secret)
	for _, s := range []string{"shoal-forward-v2", f.From, f.To, f.Method, f.URI, hex.EncodeToString(sum[:]),
		strconv.FormatInt(f.At.Unix(), 10), f.ID, f.RequestID} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

// Sign sets the forwarding headers of f on h. At and ID are filled in when
// zero.
func Sign(secret []byte, h http.Header, f Forwarded) {
	if f.At.IsZero() {
		f.At = time.Now()
	}
	if f.ID == "" {
		f.ID = NewID()
	}
	h.Set(HeaderForwarded, f.From)
	h.Set(HeaderForwardTime, strconv.FormatInt(f.At.Unix(), 10))
	h.Set(HeaderForwardID, f.ID)
	h.Set(HeaderForwardAuth, f.mac(secret))
}

// NewID returns 16 random bytes in hex.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Verifier checks forwarded requests addressed to one node and remembers
// their IDs to refuse replays.
type Verifier struct {
	self   string
	window time.Duration
	seen   *replayCache
}

// NewVerifier returns a verifier for node self; window 0 is
// DefaultSignatureWindow, maxIDs 0 is 1<<16.
func NewVerifier(self string, window time.Duration, maxIDs int) *Verifier {
	if window <= 0 {
		window = DefaultSignatureWindow
	}
	if maxIDs <= 0 {
		maxIDs = 1 << 16
	}
	return &Verifier{self: self, window: window, seen: newReplayCache(maxIDs)}
}

// Verify checks r (whose body is body) against secret at now: the MAC, the
// time window and, last, that the ID is new. Only a request that passes
// everything records its ID, so unsigned noise cannot fill the cache.
func (v *Verifier) Verify(secret []byte, r *http.Request, body []byte, now time.Time) error {
	h := r.Header
	from, mac, ts, id := h.Get(HeaderForwarded), h.Get(HeaderForwardAuth), h.Get(HeaderForwardTime), h.Get(HeaderForwardID)
	if len(secret) == 0 || from == "" || mac == "" || ts == "" || id == "" || len(id) > 64 {
		return ErrBadSignature
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return ErrBadSignature
	}
	f := Forwarded{From: from, To: v.self, Method: r.Method, URI: r.URL.RequestURI(), Body: body,
		RequestID: h.Get("X-Request-ID"), At: time.Unix(sec, 0), ID: id}
	if !hmac.Equal([]byte(mac), []byte(f.mac(secret))) {
		return ErrBadSignature
	}
	if d := now.Sub(f.At); d > v.window || d < -v.window {
		return fmt.Errorf("%w: signed %s ago", ErrStale, d.Round(time.Second))
	}
	// An ID must be remembered for as long as its time is acceptable.
	if !v.seen.add(id, f.At.Add(v.window+time.Second), now) {
		return ErrReplay
	}
	return nil
}

// replayCache is a bounded set of IDs with expiry times, kept in arrival
// order (which is expiry order, give or take the senders' clock skew).
// Past its bound it forgets the oldest ID before it expires, which reopens
// a replay of that one request; that takes more than max verified forwards
// to this node within one window, and only a cluster member can sign them.
//
// The order is a ring that grows by doubling up to max and is never copied
// after: every verified forward takes this lock, so the cost of adding one
// ID must not depend on how many are held.
type replayCache struct {
	mu   sync.Mutex
	max  int
	ids  map[string]int64 // id -> expiry, unix nanoseconds
	ring []replayEntry
	head int // oldest entry
	n    int
}

type replayEntry struct {
	id      string
	expires int64
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, ids: map[string]int64{}}
}

// add records id until expires and reports whether it was new.
func (c *replayCache) add(id string, expires, now time.Time) bool {
	exp, at := expires.UnixNano(), now.UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.n > 0 {
		e := &c.ring[c.head]
		if e.expires > at && c.n < c.max {
			break
		}
		// A renewed ID has a newer expiry in the map than its first record
		// here; that record leaving must not forget the renewal.
		if held, ok := c.ids[e.id]; ok && held == e.expires {
			delete(c.ids, e.id)
		}
		*e = replayEntry{}
		c.head = (c.head + 1) % len(c.ring)
		c.n--
	}
	if held, ok := c.ids[id]; ok && held > at {
		return false
	}
	c.ids[id] = exp
	if c.n == len(c.ring) {
		c.grow()
	}
	c.ring[(c.head+c.n)%len(c.ring)] = replayEntry{id: id, expires: exp}
	c.n++
	return true
}

// grow doubles the ring, at most to max, keeping arrival order.
func (c *replayCache) grow() {
	size := min(max(2*len(c.ring), 64), c.max)
	ring := make([]replayEntry, size)
	for i := range c.n {
		ring[i] = c.ring[(c.head+i)%len(c.ring)]
	}
	c.ring, c.head = ring, 0
}

func (c *replayCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}
