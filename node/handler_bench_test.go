package node

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/stretchr/testify/require"
)

// BenchmarkHandler drives the node's HTTP handler in process (no client or
// server sockets on the front side) and reports allocations and time per
// request: pass-through to an OpenAI-compatible upstream that answers at
// once, a sim model that costs nothing, and a cache hit. Each path runs
// twice: as it always has, building a request and recorder per call (the
// numbers the README's history compares), and -reused, with one request
// and writer, which counts shoal's own work alone.
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
		// The default call timeout, as users run it (the test helper's is
		// shorter than the request's, which costs a timer per call).
		pass.OpenAI.Timeout = DefaultModelConfig("up", "openai").OpenAI.Timeout
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
		// A fresh request and recorder per call, as before: their own
		// allocations (about 20 a request: httptest.NewRequest parses a
		// request line, the recorder snapshots the header on WriteHeader)
		// are counted with shoal's.
		b.Run(tc.name, func(b *testing.B) {
			benchHandler(b, tc.wantCache, func() (int, http.Header) {
				req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(tc.body))
				req.Header.Set("Content-Type", "application/json")
				if tc.cacheControl != "" {
					req.Header.Set("Cache-Control", tc.cacheControl)
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				return rec.Code, rec.Header()
			})
		})
		// One request and writer reused, so what is counted is shoal's
		// handler (and, on pass-through, the upstream call) alone.
		b.Run(tc.name+"-reused", func(b *testing.B) {
			call := reusedCaller(h, tc.cacheControl)
			benchHandler(b, tc.wantCache, func() (int, http.Header) { return call(tc.body) })
		})
	}
}

// benchHandler warms the path (upstream pool, cache), checks the cache
// outcome, then times do.
func benchHandler(b *testing.B, wantCache string, do func() (int, http.Header)) {
	for i := 0; i < 20; i++ {
		if code, _ := do(); code != http.StatusOK {
			b.Fatalf("status %d", code)
		}
	}
	if _, hdr := do(); hdr.Get("X-Shoal-Cache") != wantCache {
		b.Fatalf("X-Shoal-Cache %q, want %q", hdr.Get("X-Shoal-Cache"), wantCache)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if code, _ := do(); code != http.StatusOK {
			b.Fatalf("status %d", code)
		}
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "us/req")
}

// reusedCaller serves chat bodies through h with one request and one
// writer reused across calls, so what a benchmark counts is the handler's
// own work.
func reusedCaller(h http.Handler, cacheControl string) func(body string) (int, http.Header) {
	r := strings.NewReader("")
	req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", r)
	req.Header.Set("Content-Type", "application/json")
	if cacheControl != "" {
		req.Header.Set("Cache-Control", cacheControl)
	}
	w := &benchWriter{h: http.Header{}}
	return func(body string) (int, http.Header) {
		r.Reset(body)
		req.ContentLength = int64(len(body))
		clear(w.h)
		w.code = 0
		w.body.Reset()
		h.ServeHTTP(w, req)
		return w.code, w.h
	}
}

// startOlricSimNode starts a node serving the zero-cost sim model "sim0"
// on the default Olric cache backend, with the near cache for near, and
// waits for the cache.
func startOlricSimNode(b *testing.B, near time.Duration) *Node {
	n := startTestNode(b, func(c *Config) {
		sim := DefaultModelConfig("sim0", "sim")
		sim.Sim.Base, sim.Sim.PerItem, sim.Sim.TokenInterval = 0, 0, 0
		c.Models = []ModelConfig{sim}
		c.RateLimit.RPM = 0
		c.Batching.FlushTimeout = 0
		c.Cache.Backend = "olric"
		c.Cache.NearTTL = near
		c.Tuning.Cache = func(dc *dcache.Config) { dc.Network = "local" }
	})
	require.Eventually(b, func() bool { return n.cache.Health().Status == dcache.StatusOK }, time.Minute, 20*time.Millisecond)
	return n
}

// benchWriter is a ResponseWriter the benchmark reuses across requests.
type benchWriter struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func (w *benchWriter) Header() http.Header { return w.h }

func (w *benchWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *benchWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.body.Write(p)
}

// BenchmarkOlricCacheHit is BenchmarkHandler's cache hit (-reused) on the
// default Olric backend, with its near cache (cache.near_ttl, the default
// 1s) and without it (every hit an Olric get, off the request's goroutine).
func BenchmarkOlricCacheHit(b *testing.B) {
	for _, near := range []time.Duration{time.Second, 0} {
		b.Run(fmt.Sprintf("near=%s", near), func(b *testing.B) {
			n := startOlricSimNode(b, near)
			const body = `{"model":"sim0","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16,"temperature":0}`
			call := reusedCaller(n.httpSrv.Handler, "")
			do := func() (int, http.Header) { return call(body) }
			// The answer is stored in the background: wait for the first hit.
			require.Eventually(b, func() bool {
				_, hdr := do()
				return hdr.Get("X-Shoal-Cache") == "hit"
			}, 10*time.Second, time.Millisecond)
			benchHandler(b, "hit", do)
			b.ReportMetric(float64(n.respCache.NearHits())/float64(b.N), "near/op")
		})
	}
}

// BenchmarkOlricCacheMissStore is a cache miss on the default Olric backend
// whose answer is stored, against the same request with no-store: every
// request's prompt is new, as in the open-loop bench. Each op includes the
// stored answer's write (the benchmark waits for the write queue to finish
// every put it was given), so allocs/op and cpu-us/op count the write path
// that runs off the request's goroutine too.
func BenchmarkOlricCacheMissStore(b *testing.B) {
	for _, store := range []bool{true, false} {
		b.Run(fmt.Sprintf("store=%v", store), func(b *testing.B) {
			n := startOlricSimNode(b, DefaultConfig().Cache.NearTTL)
			want, cacheControl := "miss", ""
			if !store {
				want, cacheControl = "bypass", "no-store"
			}
			call := reusedCaller(n.httpSrv.Handler, cacheControl)
			var seq int
			buf := make([]byte, 0, 256)
			do := func() (int, http.Header) {
				seq++
				buf = append(buf[:0], `{"model":"sim0","messages":[{"role":"user","content":"Say hello `...)
				buf = strconv.AppendInt(buf, int64(seq), 10)
				buf = append(buf, `"}],"max_tokens":16,"temperature":0}`...)
				return call(string(buf))
			}
			settled := func() {
				require.Eventually(b, func() bool { return n.cache.Stats().Queued == 0 }, 10*time.Second, time.Millisecond)
			}
			for i := 0; i < 50; i++ {
				do()
			}
			settled()
			if _, hdr := do(); hdr.Get("X-Shoal-Cache") != want {
				b.Fatalf("X-Shoal-Cache %q, want %q", hdr.Get("X-Shoal-Cache"), want)
			}
			settled()
			sets := n.cache.Stats().Sets
			cpu0 := processCPU()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if code, _ := do(); code != http.StatusOK {
					b.Fatalf("status %d", code)
				}
			}
			settled()
			b.StopTimer()
			b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-us/op")
			if store {
				b.ReportMetric(float64(n.cache.Stats().Sets-sets)/float64(b.N), "sets/op")
			}
		})
	}
}

// processCPU is the user and system time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
