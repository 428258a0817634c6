package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/scheduler"
)

// Call describes a request that another protocol front (the Open Inference
// Protocol) carries through the /v1/infer path: the metrics label it is
// counted under and the client's own path, which selects endpoint limits.
type Call struct {
	Endpoint string
	Path     string
}

type callKey struct{}

// WithCall marks ctx as carrying c.
func WithCall(ctx context.Context, c Call) context.Context {
	return context.WithValue(ctx, callKey{}, c)
}

func callOf(r *http.Request) (Call, bool) {
	c, ok := r.Context().Value(callKey{}).(Call)
	return c, ok
}

// EndpointLabel is r's metrics label: the carrying front's when there is
// one, else the endpoint's own.
func EndpointLabel(r *http.Request, ep scheduler.Endpoint) string {
	if c, ok := callOf(r); ok {
		return c.Endpoint
	}
	return string(ep)
}

// LimitPath is the path that selects r's endpoint limits: the client's,
// also for a call carried as /v1/infer.
func LimitPath(r *http.Request) string {
	if c, ok := callOf(r); ok {
		return c.Path
	}
	return r.URL.Path
}

// InferHandler is the /v1/infer handler, for fronts that carry their calls
// through it (with WithCall on the request's context).
func (a *API) InferHandler() http.HandlerFunc {
	return a.handler(scheduler.EndpointInfer, decodeInfer)
}

// ReadBody reads r's body as the /v1 endpoints do: decompressed, bounded by
// the body limit.
func (a *API) ReadBody(w http.ResponseWriter, r *http.Request) ([]byte, *Error) {
	return readBody(w, r, a.cfg.MaxBodyBytes)
}

// ObserveRequest counts a request answered by a carrying front itself
// (before it reached the /v1 path).
func (a *API) ObserveRequest(model, endpoint string, status int, took time.Duration) {
	a.cfg.Metrics.ObserveRequest(model, endpoint, status, took)
}
