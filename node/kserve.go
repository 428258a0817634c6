package node

import (
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/httpapi"
	"github.com/shoal-dev/shoal/kserve"
)

// kservePipeline adapts the node's /v1/infer request path to the Open
// Inference Protocol front, so v2 calls get the same limits, cache,
// routing, batching and metrics.
type kservePipeline struct {
	n     *Node
	infer http.HandlerFunc
}

var _ kserve.Pipeline = (*kservePipeline)(nil)

func newKServe(n *Node) *kserve.Server {
	p := &kservePipeline{n: n, infer: n.api.InferHandler()}
	s, _ := kserve.New(kserve.Config{Pipeline: p, ServerName: "shoal", ServerVersion: Version,
		NotFound: http.HandlerFunc(httpapi.NotFound), Logger: n.logger})
	return s
}

func (p *kservePipeline) ReadBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, ae := p.n.api.ReadBody(w, r)
	if ae != nil {
		return nil, &kserve.Error{Status: ae.Status, Message: ae.Message, RetryAfter: ae.RetryAfter}
	}
	return body, nil
}

func (p *kservePipeline) Infer(w http.ResponseWriter, r *http.Request, call kserve.Call) {
	p.infer(w, r.WithContext(httpapi.WithCall(r.Context(), httpapi.Call{Endpoint: call.Endpoint, Path: call.Path})))
}

func (p *kservePipeline) Observe(model, endpoint string, status int, took time.Duration) {
	p.n.api.ObserveRequest(model, endpoint, status, took)
}

func (p *kservePipeline) Models() []string { return p.n.clusterModels() }

func (p *kservePipeline) ModelReady(model string) bool {
	for _, c := range p.n.candidates(model) {
		if !c.Open {
			return true
		}
	}
	return false
}

func (p *kservePipeline) Ready() bool { return !p.n.isDraining() }
