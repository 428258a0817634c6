package ratelimit

import (
	"net/http"
	"strconv"
	"time"
)

// Header names SetHeaders writes.
const (
	HeaderLimit      = "X-RateLimit-Limit"
	HeaderRemaining  = "X-RateLimit-Remaining"
	HeaderReset      = "X-RateLimit-Reset"
	HeaderRetryAfter = "Retry-After"
)

// SetHeaders writes the decision's rate-limit headers: X-RateLimit-Limit, -Remaining and
// -Reset (Unix seconds, rounded up, when the deciding rule's window ends) on every limited
// response, and on a denial Retry-After in whole seconds, rounded up and at least 1. A
// decision no rule applied to writes nothing.
func (d Decision) SetHeaders(h http.Header) {
	if d.Limit == 0 {
		return
	}
	h.Set(HeaderLimit, strconv.Itoa(d.Limit))
	h.Set(HeaderRemaining, strconv.Itoa(max(d.Remaining, 0)))
	h.Set(HeaderReset, strconv.FormatInt(ceilDiv(d.Reset.UnixNano(), int64(time.Second)), 10))
	if !d.Allowed {
		h.Set(HeaderRetryAfter, strconv.FormatInt(max(ceilDiv(int64(d.RetryAfter), int64(time.Second)), 1), 10))
	}
}

func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b > 0 {
		q++
	}
	return q
}
