package main

// The rows here bound what each HTTP stack allows with nothing of shoal's
// on top: a bare fasthttp reverse proxy and a tuned net/http one (the
// ceiling of a proxy built on each), and a server answering the fixed chat
// completion from memory on each stack (the ceiling of a cache hit). They
// run in this process, as the httputil.ReverseProxy row does; wrk is a
// process of its own, and the rows are measured one at a time, so an idle
// server here costs the measured one nothing but memory.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// serveFast serves h on a fresh loopback port with the same read, write and
// idle bounds the shoal front has, so the stack is not flattered by having
// none.
func serveFast(h fasthttp.RequestHandler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &fasthttp.Server{
		Handler:               h,
		ReadTimeout:           30 * time.Second,
		WriteTimeout:          60 * time.Second,
		IdleTimeout:           120 * time.Second,
		MaxRequestBodySize:    1 << 20,
		NoDefaultServerHeader: true,
	}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Shutdown() }, nil
}

// serveNet is serveFast for net/http.
func serveNet(h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Shutdown(context.Background()) }, nil
}

// startFastProxy is the fasthttp floor: fasthttp.Server handing each
// request to a fasthttp.HostClient for the upstream, nothing else.
func startFastProxy(upstream string, conns int) (string, func(), error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return "", nil, err
	}
	hc := &fasthttp.HostClient{
		Addr:                     u.Host,
		MaxConns:                 max(256, 2*conns),
		MaxIdleConnDuration:      90 * time.Second,
		ReadTimeout:              60 * time.Second,
		WriteTimeout:             60 * time.Second,
		MaxResponseBodySize:      16 << 20,
		NoDefaultUserAgentHeader: true,
	}
	return serveFast(func(ctx *fasthttp.RequestCtx) {
		// Connection is hop-by-hop: the client's keep-alive wishes are
		// not the upstream's.
		ctx.Request.Header.Del("Connection")
		if err := hc.Do(&ctx.Request, &ctx.Response); err != nil {
			ctx.Error("bad gateway: "+err.Error(), fasthttp.StatusBadGateway)
			return
		}
		ctx.Response.Header.Del("Connection")
	})
}

// startTunedGoProxy is the net/http floor with what net/http legitimately
// lets one tune: a hand-rolled handler instead of httputil.ReverseProxy
// (no header cloning, X-Forwarded-For or error log), a transport whose idle
// pool covers every connection, no transparent gzip, HTTP/1.1 only, larger
// connection buffers, and pooled copy buffers.
func startTunedGoProxy(upstream string, conns int) (string, func(), error) {
	target, err := url.Parse(upstream)
	if err != nil {
		return "", nil, err
	}
	pool := max(256, 2*conns)
	tr := &http.Transport{
		MaxIdleConns:        pool,
		MaxIdleConnsPerHost: pool,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		ReadBufferSize:      32 << 10,
		WriteBufferSize:     32 << 10,
	}
	bufs := sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	base := strings.TrimRight(target.String(), "/")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out, err := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.RequestURI(), r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The incoming header map is ours to reuse; only the hop-by-hop
		// field goes.
		out.Header = r.Header
		out.Header.Del("Connection")
		out.ContentLength = r.ContentLength
		resp, err := tr.RoundTrip(out)
		if err != nil {
			http.Error(w, "bad gateway: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		dst := w.Header()
		for k, v := range resp.Header {
			if k != "Connection" {
				dst[k] = v
			}
		}
		w.WriteHeader(resp.StatusCode)
		b := bufs.Get().(*[]byte)
		_, _ = io.CopyBuffer(w, resp.Body, *b)
		bufs.Put(b)
	})
	u, stop, err := serveNet(h)
	if err != nil {
		return "", nil, err
	}
	return u, func() { stop(); tr.CloseIdleConnections() }, nil
}

// startFastFixed answers every request with the fixed chat completion after
// reading its body: what a fasthttp front could at most do for a cache hit.
func startFastFixed() (string, func(), error) {
	return serveFast(func(ctx *fasthttp.RequestCtx) {
		if len(ctx.PostBody()) == 0 {
			ctx.Error("empty body", fasthttp.StatusBadRequest)
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBodyString(answer)
	})
}

// startNetFixed is startFastFixed on net/http: the ceiling of the present
// front for a cache hit.
func startNetFixed() (string, func(), error) {
	return serveNet(netFixedHandler())
}

// startAdaptorFixed serves startNetFixed's http.Handler from a fasthttp
// server through fasthttpadaptor: the ceiling of a fasthttp front that
// keeps shoal's handlers and middleware as they are, which is the only
// fasthttp front that would not be a rewrite of every handler.
func startAdaptorFixed() (string, func(), error) {
	return serveFast(fasthttpadaptor.NewFastHTTPHandler(netFixedHandler()))
}

// startNetFixedHeaders is startNetFixed answering with the headers a shoal
// cache hit carries (a fresh request ID each time, the cache outcome, the
// node and the route): the ceiling of the present front for shoal's own
// answer, since net/http clones, sorts and writes every header it is given.
func startNetFixedHeaders() (string, func(), error) {
	inner := netFixedHandler()
	hit, node, route := []string{"hit"}, []string{"gatewaybench"}, []string{"cache"}
	var seq atomic.Uint64
	return serveNet(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["X-Request-Id"] = []string{fmt.Sprintf("%024x", seq.Add(1))}
		h["X-Shoal-Cache"] = hit
		h["X-Shoal-Node"] = node
		h["X-Shoal-Route"] = route
		inner.ServeHTTP(w, r)
	}))
}

// netFixedHandler reads the body and answers the fixed completion.
func netFixedHandler() http.Handler {
	ctype := []string{"application/json"}
	bufs := sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := bufs.Get().(*[]byte)
		n, err := io.ReadFull(r.Body, *b)
		bufs.Put(b)
		if n == 0 && (err == nil || errors.Is(err, io.EOF)) {
			http.Error(w, "empty body", http.StatusBadRequest)
			return
		}
		w.Header()["Content-Type"] = ctype
		_, _ = io.WriteString(w, answer)
	})
}

// stackTarget starts one of the rows above, or marks it skipped.
func stackTarget(name, body string, start func() (string, func(), error), stops *[]func()) *target {
	t := &target{name: name, body: body, cpuOf: []int{0}}
	u, stop, err := start()
	if err != nil {
		t.skip = fmt.Sprintf("start: %v", err)
		return t
	}
	*stops = append(*stops, stop)
	t.url = u + "/v1/chat/completions"
	return t
}
