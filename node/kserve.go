package node

import (
	"context"
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/kserve"
	"github.com/shoal-dev/shoal/scheduler"
)

// kservePipeline adapts the node's /v1/infer request path to the Open
// Inference Protocol front.
type kservePipeline struct {
	a     *api
	infer http.HandlerFunc
}

var _ kserve.Pipeline = (*kservePipeline)(nil)

func newKServe(n *Node) *kserve.Server {
	p := &kservePipeline{a: n.api, infer: n.api.handler(scheduler.EndpointInfer, decodeInfer)}
	s, _ := kserve.New(kserve.Config{Pipeline: p, ServerName: "shoal", ServerVersion: Version,
		NotFound: http.HandlerFunc(notFound), Logger: n.logger})
	return s
}

// kserveCallKey carries a v2 call's metrics label and client path through
// the /v1/infer handler.
type kserveCallKey struct{}

// endpointLabel is the metrics label of a request: the v2 call's when the
// request came through the v2 front, else the endpoint's own.
func endpointLabel(r *http.Request, ep scheduler.Endpoint) string {
	if c, ok := r.Context().Value(kserveCallKey{}).(kserve.Call); ok {
		return c.Endpoint
	}
	return string(ep)
}

// limitPath is the path that selects a request's endpoint limits: the
// client's, also for a v2 call carried as /v1/infer.
func limitPath(r *http.Request) string {
	if c, ok := r.Context().Value(kserveCallKey{}).(kserve.Call); ok {
		return c.Path
	}
	return r.URL.Path
}

func (p *kservePipeline) ReadBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, ae := readBody(w, r, p.a.cfg.MaxBodyBytes)
	if ae != nil {
		return nil, &kserve.Error{Status: ae.Status, Message: ae.Message, RetryAfter: ae.RetryAfter}
	}
	return body, nil
}

func (p *kservePipeline) Infer(w http.ResponseWriter, r *http.Request, call kserve.Call) {
	p.infer(w, r.WithContext(context.WithValue(r.Context(), kserveCallKey{}, call)))
}

func (p *kservePipeline) Observe(model, endpoint string, status int, took time.Duration) {
	p.a.metrics.ObserveRequest(model, endpoint, status, took)
}

func (p *kservePipeline) Models() []string { return p.a.n.clusterModels() }

func (p *kservePipeline) ModelReady(model string) bool {
	for _, c := range p.a.n.candidates(model) {
		if !c.Open {
			return true
		}
	}
	return false
}

func (p *kservePipeline) Ready() bool { return !p.a.n.isDraining() }
