package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sync"

	"github.com/shoal-dev/shoal/router"
)

// Header values every answer sets, preformatted: Header.Set allocates a
// one-element slice per call. Each slice has capacity 1, so a later Add
// copies it instead of writing into the shared array; nothing in the
// server writes a header value in place.
var (
	hdrJSON        = []string{"application/json"}
	hdrCacheHit    = []string{CacheHit}
	hdrCacheMiss   = []string{CacheMiss}
	hdrCacheBypass = []string{CacheBypass}
	hdrRouteCache  = []string{"cache"}
	hdrForwarded   = []string{"forwarded"}
	// X-Shoal-Route values of a local answer, by routing reason.
	hdrRouteLocal = map[string][]string{
		router.ReasonPrefix:        {routeHeader(true, router.ReasonPrefix)},
		router.ReasonLocal:         {routeHeader(true, router.ReasonLocal)},
		router.ReasonRetry:         {routeHeader(true, router.ReasonRetry)},
		router.PolicyLeastExpected: {routeHeader(true, router.PolicyLeastExpected)},
		router.PolicyLeastQueued:   {routeHeader(true, router.PolicyLeastQueued)},
		router.PolicyRoundRobin:    {routeHeader(true, router.PolicyRoundRobin)},
		router.PolicyRandom:        {routeHeader(true, router.PolicyRandom)},
	}
)

// setLocalRoute sets X-Shoal-Route for an answer served here.
func setLocalRoute(h http.Header, reason string) {
	if v, ok := hdrRouteLocal[reason]; ok {
		h[router.HeaderRoute] = v[:1:1]
		return
	}
	h.Set(router.HeaderRoute, routeHeader(true, reason))
}

// jsonBuf is a pooled buffer with its encoder, for encoding answers:
// json.Marshal returns a fresh copy of every body.
type jsonBuf struct {
	buf bytes.Buffer
	enc *json.Encoder
}

// maxPooledJSON bounds the buffers kept for reuse, so one huge answer does
// not pin its memory in the pool.
const maxPooledJSON = 64 << 10

var jsonBufs = sync.Pool{New: func() any {
	b := &jsonBuf{}
	b.enc = json.NewEncoder(&b.buf)
	return b
}}

func getJSONBuf() *jsonBuf {
	b := jsonBufs.Get().(*jsonBuf)
	b.buf.Reset()
	return b
}

func putJSONBuf(b *jsonBuf) {
	if b.buf.Cap() <= maxPooledJSON {
		jsonBufs.Put(b)
	}
}
