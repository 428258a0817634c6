package node

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// BenchmarkHandler drives the node's HTTP handler in process (no client or
// server sockets on the front side) and reports shoal's own allocations
// and time per request: pass-through to an OpenAI-compatible upstream that
// answers at once, a sim model that costs nothing, and a cache hit.
func BenchmarkHandler(b *testing.B) {
	const answer = `{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,` +
		`"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}`
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(answer))
	}))
	defer up.Close()
	n := startTestNode(b, func(c *Config) {
		sim := DefaultModelConfig("sim0", "sim")
		sim.Sim.Base, sim.Sim.PerItem, sim.Sim.TokenInterval = 0, 0, 0
		pass := openAIModel(up.URL)
		pass.MaxSize, pass.MaxConcurrentBatches = 1, 64
		c.Models = []ModelConfig{sim, pass}
		c.Batching.FlushTimeout = 0
		c.RateLimit.RPM = 0
	})
	h := n.httpSrv.Handler
	chat := func(model string) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16,"temperature":0}`
	}
	for _, tc := range []struct {
		name, body, cacheControl, wantCache string
	}{
		{"pass-through", chat("up"), "no-cache, no-store", "bypass"},
		{"sim", chat("sim0"), "no-cache, no-store", "bypass"},
		{"cache-hit", chat("sim0"), "", "hit"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			do := func() *httptest.ResponseRecorder {
				req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(tc.body))
				req.Header.Set("Content-Type", "application/json")
				if tc.cacheControl != "" {
					req.Header.Set("Cache-Control", tc.cacheControl)
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				return rec
			}
			// Warm the upstream pool and fill the cache.
			for i := 0; i < 20; i++ {
				if rec := do(); rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
			if rec := do(); rec.Header().Get("X-Shoal-Cache") != tc.wantCache {
				b.Fatalf("X-Shoal-Cache %q, want %q", rec.Header().Get("X-Shoal-Cache"), tc.wantCache)
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if rec := do(); rec.Code != http.StatusOK {
					b.Fatalf("status %d", rec.Code)
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "us/req")
		})
	}
}
