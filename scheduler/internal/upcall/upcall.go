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
	"errors"
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
// watchers; callers that need to cancel the call when it is over derive
// their own context from ctx.
func GroupContext(parent context.Context, tasks []*scheduler.Task) (ctx context.Context, stop func() bool) {
	if len(tasks) == 1 && tasks[0].Context() == parent {
		// A batch of one runs under its task's context (the scheduler's
		// batchContext), and so does its call: when the task's context
		// ends, the transport abandons the call at once (dial, headers or
		// body alike) and FinishAll gives the task its context's error. A
		// watcher would finish it only microseconds sooner, for five
		// allocations on every pass-through chat.
		return parent, noStop
	}
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
	return ctx, func() bool {
		for _, s := range stops {
			s()
		}
		cancel()
		return true
	}
}

func noStop() bool { return true }

// CallContext bounds one upstream call to timeout, with cause as the
// reason when it fires. When ctx's own deadline comes first the call's
// timeout could never fire, so ctx serves as it is: by default the request
// and call timeouts are equal and the call starts after the request, which
// saves a timer and two contexts on every call.
func CallContext(ctx context.Context, timeout time.Duration, cause error) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= timeout {
		return ctx, noCancel
	}
	return context.WithTimeoutCause(ctx, timeout, cause)
}

func noCancel() {}

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
	return newPost(ctx, u, payload, stream, reqID)
}

func newPost(ctx context.Context, u string, payload []byte, stream bool, reqID string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	var id []string
	if reqID != "" {
		id = []string{reqID}
	}
	setPostHeader(req.Header, stream, id)
	return req, nil
}

// setPostHeader sets what every upstream POST carries: a JSON body, the
// answer wanted (server-sent events or JSON) and, when id is set, the
// request's ID.
func setPostHeader(h http.Header, stream bool, id []string) {
	h["Content-Type"] = jsonValue
	if stream {
		h["Accept"] = eventValue
	} else {
		h["Accept"] = jsonValue
	}
	if len(id) > 0 {
		h["X-Request-Id"] = id
	}
}

// Canonical header keys and the values that never change, set straight
// into each request's header map: Header.Set would canonicalize the key and
// allocate a one-element slice per header per call. A transport must not
// modify a request's header, so the slices can be shared.
var (
	jsonValue  = []string{"application/json"}
	eventValue = []string{"text/event-stream"}
)

// Poster sends JSON POSTs to upstream URLs that were parsed once. With its
// own pooled transport it hands each request to the transport directly:
// http.Client would clone the header and URL for redirects it almost never
// follows. A redirect answer is sent again through the client, so one is
// still followed as before.
type Poster struct {
	client *http.Client
	// direct is the pooled transport, nil when the client is the caller's
	// (tests) and must see every request.
	direct http.RoundTripper
	// auth is the Authorization header value, nil for none.
	auth []string
}

// NewPoster sends through client, or straight to direct when it is set
// (direct must be client's transport). apiKey, when set, goes out as
// "Authorization: Bearer <key>".
func NewPoster(client *http.Client, direct http.RoundTripper, apiKey string) *Poster {
	p := &Poster{client: client, direct: direct}
	if apiKey != "" {
		p.auth = []string{"Bearer " + apiKey}
	}
	return p
}

// Endpoint is one upstream URL, parsed once.
type Endpoint struct {
	raw string
	url *url.URL
}

// NewEndpoint parses raw, an http(s) URL.
func NewEndpoint(raw string) (*Endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("url %q: %w", raw, err)
	}
	return &Endpoint{raw: raw, url: u}, nil
}

// String is the URL as configured.
func (e *Endpoint) String() string { return e.raw }

// Post sends body as JSON to e, as NewPost builds it, and returns the
// transport's answer: any status, transport errors unwrapped (no
// *url.Error).
func (p *Poster) Post(ctx context.Context, e *Endpoint, body any, stream bool, reqID string) (*http.Response, error) {
	payload, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	// Userinfo in the URL is turned into Basic auth by http.Client only.
	if p.direct == nil || e.url.User != nil {
		return p.viaClient(ctx, e, payload, stream, reqID)
	}
	h := make(http.Header, 4)
	rb := &requestBody{payload: payload, id: [1]string{reqID}}
	rb.Reset(payload)
	var id []string
	if reqID != "" {
		id = rb.id[:]
	}
	setPostHeader(h, stream, id)
	if p.auth != nil {
		h["Authorization"] = p.auth
	}
	// What http.NewRequestWithContext builds, without parsing the URL.
	tmpl := http.Request{
		Method:        http.MethodPost,
		URL:           e.url,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          rb,
		GetBody:       rb.reopen,
		ContentLength: int64(len(payload)),
		Host:          e.url.Host,
	}
	resp, err := p.direct.RoundTrip(tmpl.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		// Let the client follow it, as every call did before.
		CloseBody(resp.Body)
		return p.viaClient(ctx, e, payload, stream, reqID)
	}
	return resp, nil
}

// viaClient is the general path: a request as NewPost builds it, sent
// through the client (redirects, userinfo, a client of the caller's).
func (p *Poster) viaClient(ctx context.Context, e *Endpoint, payload []byte, stream bool, reqID string) (*http.Response, error) {
	req, err := newPost(ctx, e.raw, payload, stream, reqID)
	if err != nil {
		return nil, err
	}
	if p.auth != nil {
		req.Header["Authorization"] = p.auth
	}
	resp, err := p.client.Do(req)
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err // its text repeats the method and URL
	}
	return resp, err
}

// requestBody is a request's JSON payload as its body; reopen rewinds it
// for the transport's retry of a request that never went out.
type requestBody struct {
	bytes.Reader
	payload []byte
	// id backs the X-Request-Id header value: one allocation for both.
	id [1]string
}

func (*requestBody) Close() error { return nil }

func (b *requestBody) reopen() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b.payload)), nil
}
