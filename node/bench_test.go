package node

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"
)

// BenchmarkHTTPAddedLatency measures the latency a node adds to a request
// on the HTTP path (decode, route, queue, batch, encode) over a sim model
// that costs nothing: sequential requests over one keep-alive connection,
// reported as p50 and p99 in microseconds. "flush=0" dispatches a batch at
// once; "flush=10ms" is the default batching, where a lone request waits
// for the flush timeout.
func BenchmarkHTTPAddedLatency(b *testing.B) {
	for _, tc := range []struct {
		name  string
		flush time.Duration
	}{
		{"flush=0", 0},
		{"flush=10ms", 10 * time.Millisecond},
	} {
		b.Run(tc.name, func(b *testing.B) {
			n := startTestNode(b, func(c *Config) {
				withSimModel(0, 0, 0)(c)
				c.Batching.FlushTimeout = tc.flush
				// The default per-client limit (1000 rpm) would answer
				// 429 within the first second of a run.
				c.RateLimit.RPM = 0
			})
			benchPostLatency(b, baseURL(n)+"/v1/completions", []byte(`{"model":"sim-test","prompt":"latency probe","max_tokens":1}`))
		})
	}
}

// benchPostLatency posts body to url sequentially over one keep-alive
// connection, b.N times after 50 warm-up calls, and reports p50 and p99 in
// microseconds; any answer but 200 fails the benchmark.
func benchPostLatency(b *testing.B, url string, body []byte) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	defer client.CloseIdleConnections()
	do := func() time.Duration {
		start := time.Now()
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
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
		do() // warm the connection and the node
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
}
