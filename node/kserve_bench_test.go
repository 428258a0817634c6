package node

import (
	"testing"
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
			benchPostLatency(b, baseURL(n)+tc.path, tc.body)
		})
	}
}
