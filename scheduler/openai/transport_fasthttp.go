//go:build shoal_fasthttp

package openai

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/shoal-dev/shoal/scheduler/internal/upcall"
)

// idleCloser is the pooled upstream transport: Close drops its idle
// connections.
type idleCloser interface {
	http.RoundTripper
	CloseIdleConnections()
}

// fastTransport is the prototype measured in httpapi/DESIGN.md ("HTTP
// layer"): non-streamed calls go through a fasthttp.Client, everything
// fasthttp cannot do as net/http does (streams: no per-event idle timeout
// and no cancellation while reading; calls without a deadline; proxy
// environment) goes through net/http's transport as before.
type fastTransport struct {
	fast    *fasthttp.Client
	slow    *http.Transport
	maxBody int
	proxied bool
}

func newUpstreamTransport(cfg Config) idleCloser {
	slow := upcall.NewTransport(cfg.Timeout, cfg.MaxConns)
	probe, _ := http.NewRequest(http.MethodPost, cfg.URL, nil)
	proxy, _ := slow.Proxy(probe)
	return &fastTransport{
		fast: &fasthttp.Client{
			MaxConnsPerHost:          cfg.MaxConns,
			MaxConnWaitTimeout:       cfg.Timeout,
			MaxIdleConnDuration:      90 * time.Second,
			MaxResponseBodySize:      int(cfg.MaxResponseBytes),
			NoDefaultUserAgentHeader: true,
			DisablePathNormalizing:   true,
			// A POST is not idempotent: never resent on a broken
			// connection (net/http resends only what it knows was not
			// written).
			MaxIdemponentCallAttempts: 1,
		},
		slow:    slow,
		maxBody: int(cfg.MaxResponseBytes),
		proxied: proxy != nil,
	}
}

func (t *fastTransport) CloseIdleConnections() {
	t.fast.CloseIdleConnections()
	t.slow.CloseIdleConnections()
}

func (t *fastTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	deadline, ok := r.Context().Deadline()
	if !ok || t.proxied || r.Header.Get("Accept") == "text/event-stream" {
		return t.slow.RoundTrip(r)
	}
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	req.SetRequestURI(r.URL.String())
	req.Header.SetMethod(r.Method)
	for k, vs := range r.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	// As net/http does: ask for gzip and undo it below.
	req.Header.Set("Accept-Encoding", "gzip")
	if r.Body != nil {
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			return nil, err
		}
		req.SetBodyRaw(body)
	}
	resp := fasthttp.AcquireResponse()
	if err := t.fast.DoDeadline(req, resp, deadline); err != nil {
		fasthttp.ReleaseResponse(resp)
		if errors.Is(err, fasthttp.ErrTimeout) {
			return nil, fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
		}
		if errors.Is(err, fasthttp.ErrBodyTooLarge) {
			return nil, fmt.Errorf("%w: body larger than %d bytes", ErrBadResponse, t.maxBody)
		}
		return nil, err
	}
	if err := r.Context().Err(); err != nil {
		fasthttp.ReleaseResponse(resp)
		return nil, err
	}
	out := &http.Response{
		Status:     strconv.Itoa(resp.StatusCode()),
		StatusCode: resp.StatusCode(),
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header, resp.Header.Len()),
		Request:    r,
	}
	for k, v := range resp.Header.All() {
		out.Header.Add(string(k), string(v))
	}
	body := resp.Body()
	switch string(resp.Header.ContentEncoding()) {
	case "":
	case "gzip":
		var err error
		if body, err = resp.BodyGunzipWithLimit(t.maxBody); err != nil {
			fasthttp.ReleaseResponse(resp)
			return nil, fmt.Errorf("%w: gzip body: %w", ErrBadResponse, err)
		}
		out.Header.Del("Content-Encoding")
		out.Header.Del("Content-Length")
		out.Uncompressed = true
	default:
		fasthttp.ReleaseResponse(resp)
		return nil, fmt.Errorf("%w: unasked-for Content-Encoding %q", ErrBadResponse, resp.Header.ContentEncoding())
	}
	out.ContentLength = int64(len(body))
	out.Body = &fastBody{resp: resp, b: body}
	return out, nil
}

// fastBody reads a buffered fasthttp answer and returns it to its pool on
// Close.
type fastBody struct {
	resp *fasthttp.Response
	b    []byte
}

func (f *fastBody) Read(p []byte) (int, error) {
	if len(f.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, f.b)
	f.b = f.b[n:]
	return n, nil
}

func (f *fastBody) Close() error {
	if f.resp != nil {
		f.b = nil
		fasthttp.ReleaseResponse(f.resp)
		f.resp = nil
	}
	return nil
}
