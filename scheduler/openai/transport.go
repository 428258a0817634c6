//go:build !shoal_fasthttp

package openai

import (
	"net/http"

	"github.com/shoal-dev/shoal/scheduler/internal/upcall"
)

// idleCloser is the pooled upstream transport: Close drops its idle
// connections.
type idleCloser interface {
	http.RoundTripper
	CloseIdleConnections()
}

// newUpstreamTransport is net/http's pooled transport. A build with the
// shoal_fasthttp tag swaps in the fasthttp prototype measured in
// httpapi/DESIGN.md ("HTTP layer").
func newUpstreamTransport(cfg Config) idleCloser {
	return upcall.NewTransport(cfg.Timeout, cfg.MaxConns)
}
