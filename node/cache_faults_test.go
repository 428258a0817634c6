package node

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCacheDegradationShowsInHealthAndMetrics: a node whose cache is down says since when in
// /health, and /metrics carries the cache's membership and degraded flag.
func TestCacheDegradationShowsInHealthAndMetrics(t *testing.T) {
	tc := olricCluster(t, 1, nil)
	nd := tc.nodes[0]
	m := doJSON(t, http.MethodGet, "http://"+nd.HTTPAddr()+"/metrics", "", nil)
	require.Contains(t, string(m.body), `inference_cache_members{backend="olric"} 1`)
	require.Contains(t, string(m.body), `inference_cache_degraded{backend="olric"} 0`)

	require.NoError(t, nd.cache.Close(context.Background()))
	h := doJSON(t, http.MethodGet, "http://"+nd.HTTPAddr()+"/health", "", nil)
	var rep struct {
		Components map[string]struct {
			Status string         `json:"status"`
			Data   map[string]any `json:"data"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(h.body, &rep))
	require.Equal(t, "degraded", rep.Components["cache"].Status)
	m = doJSON(t, http.MethodGet, "http://"+nd.HTTPAddr()+"/metrics", "", nil)
	require.Contains(t, string(m.body), `inference_cache_degraded{backend="olric"} 1`)
}
