// Package upcall is the plumbing the HTTP model-server backends (openai,
// triton) share for their upstream calls: checking the base URL, the pooled
// transport, building a JSON POST, one call's context over a group of tasks
// and finishing them together, and bounding what an upstream hands our
// clients (error text, Retry-After).
package upcall

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/shoal-dev/shoal/scheduler"
)

// CheckBaseURL reports why raw is not a usable upstream base URL, by the
// configuration key "url"; nil when it is.
func CheckBaseURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return fmt.Errorf("url must be set")
	case err != nil:
		return fmt.Errorf("url %q: %w", raw, err)
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return fmt.Errorf("url must be an http(s) URL with a host, got %q", raw)
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("url must be a base URL without query or fragment, got %q", raw)
	}
	return nil
}

// NewTransport is a pooled transport holding at most maxConns connections
// to the upstream, waiting at most timeout for response headers.
func NewTransport(timeout time.Duration, maxConns int) *http.Transport {
	// Connecting and the TLS handshake are quick or never; a long wait there
	// only delays noticing a dead upstream.
	connect := min(timeout, 10*time.Second)
	dialer := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          maxConns,
		MaxIdleConnsPerHost:   maxConns,
		MaxConnsPerHost:       maxConns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   connect,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
	}
}

// CloseBody drains a little of what is left, so a connection whose answer
// was read to its end (or nearly) goes back to the pool, then closes.
func CloseBody(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 4<<10)
	_ = body.Close()
}

// FinishAll finishes tasks with their results, or with err when there are
// none. A task whose context has ended gets its context's error whatever
// the call brought back.
func FinishAll(tasks []*scheduler.Task, results []scheduler.Result, err error) {
	for i, t := range tasks {
		switch {
		case t.Context().Err() != nil:
			t.Finish(scheduler.Result{}, t.Context().Err())
		case err != nil:
			t.Finish(scheduler.Result{}, err)
		default:
			t.Finish(results[i], nil)
		}
	}
}

// GroupContext returns a context for one upstream call serving tasks. A
// task whose context ends is finished at once with its context's error; the
// call's context is cancelled when every task has ended, or parent has. A
// call for a single task descends from the task's context, so values on it
// (trace spans, httptrace hooks) reach the HTTP request. stop releases the
// watchers.
func GroupContext(parent context.Context, tasks []*scheduler.Task) (ctx context.Context, stop func()) {
	base := parent
	if len(tasks) == 1 {
		base = tasks[0].Context()
	}
	ctx, cancel := context.WithCancel(base)
	var left atomic.Int64
	left.Store(int64(len(tasks)))
	stops := make([]func() bool, 0, len(tasks)+1)
	if base != parent {
		stops = append(stops, context.AfterFunc(parent, cancel))
	}
	for _, t := range tasks {
		stops = append(stops, context.AfterFunc(t.Context(), func() {
			t.Finish(scheduler.Result{}, t.Context().Err())
			if left.Add(-1) == 0 {
				cancel()
			}
		}))
	}
	return ctx, func() {
		for _, s := range stops {
			s()
		}
		cancel()
	}
}

// Clip cuts s to at most n bytes on a rune boundary and makes it valid
// UTF-8, so a hostile upstream cannot put arbitrary bytes in our answers.
func Clip(s string, n int) string {
	// Sanitize first: a replacement character is 3 bytes, so replacing
	// after the cut could take the text past n again.
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) > n {
		// Valid UTF-8 now: the rune that straddles the cut starts at most
		// UTFMax-1 bytes before it.
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	return s
}

// MaxRetryAfter caps what an upstream may ask of our clients: a hostile or
// confused server must not park them for a day.
const MaxRetryAfter = 5 * time.Minute

// RetryAfter reads a Retry-After header, in seconds or as an HTTP date
// (RFC 9110 10.2.3), relative to now, bounded to MaxRetryAfter. Zero means
// absent or unusable.
func RetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if strings.Trim(v, "0123456789") == "" {
		// delay-seconds; too many digits for an int64 is simply "long".
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		return time.Duration(secs) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	return min(max(t.Sub(now), 0), MaxRetryAfter)
}

// NewPost builds a POST of body as JSON to u, asking for server-sent events
// when stream is set and JSON otherwise. reqID, when set, goes out as
// X-Request-ID: vLLM, TGI and Triton log it, which ties their logs to ours.
func NewPost(ctx context.Context, u string, body any, stream bool, reqID string) (*http.Request, error) {
	payload, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if stream {
		req.Header.Set("Accept", "text/event-stream")
	} else {
		req.Header.Set("Accept", "application/json")
	}
	if reqID != "" {
		req.Header.Set("X-Request-ID", reqID)
	}
	return req, nil
}
