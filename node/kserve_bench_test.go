package node

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"
)

// BenchmarkKServeAddedLatency compares a v2 infer call with the /v1/infer
// call that carries it through the node, on a sim model that costs nothing
// and dispatches at once: the difference is what the v2 front's decoding
// and translation add. Sequential requests over one connection, reported as
// p50 and p99 in microseconds.
func BenchmarkKServeAddedLatency(b *testing.B) {
	for _, tc := range []struct {
		name, path string
		body       []byte
	}{
		{"v1_infer", "/v1/infer", []byte(`{"model":"sim-test","input":["latency probe"],"parameters":{"max_tokens":1}}`)},
		{"v2_infer", "/v2/models/sim-test/infer", []byte(`{"parameters":{"max_tokens":1},"inputs":[{"name":"text_input","shape":[1,1],"datatype":"BYTES","data":[["latency probe"]]}]}`)},
		{"v2_generate", "/v2/models/sim-test/generate", []byte(`{"text_input":"latency probe","max_tokens":1}`)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			n := startTestNode(b, func(c *Config) {
				withSimModel(0, 0, 0)(c)
				c.Batching.FlushTimeout = 0
				c.RateLimit.RPM = 0 // no per-client limit in the way
			})
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
			defer client.CloseIdleConnections()
			url := baseURL(n) + tc.path
			do := func() time.Duration {
				start := time.Now()
				resp, err := client.Post(url, "application/json", bytes.NewReader(tc.body))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				took := time.Since(start)
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
				return took
			}
			for i := 0; i < 50; i++ {
				do()
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				lat = append(lat, do())
			}
			b.StopTimer()
			slices.Sort(lat)
			pct := func(p float64) float64 {
				return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / float64(time.Microsecond)
			}
			b.ReportMetric(pct(0.50), "p50_us")
			b.ReportMetric(pct(0.99), "p99_us")
		})
	}
}
