package httpapi

import (
	"github.com/shoal-dev/shoal/router"
	"github.com/shoal-dev/shoal/scheduler"
)

// promptHashes are the request's prompt block hashes for prefix-aware
// routing: its first prompt, or the chat as the backend will read it.
func promptHashes(req *Request) []uint64 {
	if req.prefixed {
		return req.prefix
	}
	req.prefix, req.prefixed = hashPrompt(req), true
	return req.prefix
}

func hashPrompt(req *Request) []uint64 {
	text := ""
	switch {
	case len(req.Prompts) > 0:
		text = req.Prompts[0]
	case len(req.Messages) > 0:
		text = (&scheduler.Request{Endpoint: scheduler.EndpointChat, Messages: req.Messages}).PromptText()
	}
	return router.PrefixHashes(text, router.DefaultPrefixBlockBytes)
}

// routeHeader is the X-Shoal-Route value: where the request runs, then
// why that node was picked.
func routeHeader(local bool, reason string) string {
	if local {
		return "local," + reason
	}
	return "forward," + reason
}
