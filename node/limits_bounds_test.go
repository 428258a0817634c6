package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops"
)

// limitedInfer sends one /v1/infer for testModel with the given bearer key (none when empty)
// through client.
func limitedInfer(t testing.TB, client *http.Client, n *Node, key string) reply {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"model": testModel, "input": "x", "parameters": map[string]any{"temperature": 1, "max_tokens": 1}})
	req, err := http.NewRequest(http.MethodPost, baseURL(n)+"/v1/infer", bytes.NewReader(b))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return reply{status: resp.StatusCode, header: resp.Header, body: body}
}

// windowCounts tallies answers by rate-limit window (X-RateLimit-Reset), so a test whose
// requests straddle a window edge still checks each window against the limit.
type windowCounts struct{ admitted, denied map[string]int }

func (w *windowCounts) add(t testing.TB, r reply) {
	t.Helper()
	if w.admitted == nil {
		w.admitted, w.denied = map[string]int{}, map[string]int{}
	}
	win := r.header.Get("X-RateLimit-Reset")
	switch r.status {
	case http.StatusOK:
		w.admitted[win]++
	case http.StatusTooManyRequests:
		w.denied[win]++
		require.NotEmpty(t, r.header.Get("Retry-After"))
	default:
		t.Fatalf("status %d: %s", r.status, r.body)
	}
}

// requestsToBind is how many requests a test sends so that a limit binds in some window even
// when the requests straddle one window edge: split over two windows, one of them gets more
// than limit.
func requestsToBind(limit int) int { return 2*limit + 1 }

// requireLimit checks that no window admitted more than limit and that some window bound.
func (w *windowCounts) requireLimit(t testing.TB, limit int) {
	t.Helper()
	bound := 0
	for win, n := range w.admitted {
		require.LessOrEqual(t, n, limit, "window %s admitted %d", win, n)
		if w.denied[win] > 0 {
			bound++
			require.Equal(t, limit, n, "window %s denied before its limit", win)
		}
	}
	require.Positive(t, bound, "the limit never bound: admitted %v, denied %v", w.admitted, w.denied)
}

// A bearer key nobody registered is no identity: with auth.required off, twelve requests from
// one address, each with a fresh made-up key, share the address's default budget of 5.
func TestMadeUpKeysSpendTheAddressBudget(t *testing.T) {
	n := startTestNode(t, func(c *Config) { c.RateLimit.RPM = 5 })
	var w windowCounts
	for i := range requestsToBind(5) + 1 {
		w.add(t, limitedInfer(t, rawClient(), n, fmt.Sprintf("sk-made-up-%d-%d", i, time.Now().UnixNano())))
	}
	w.requireLimit(t, 5)
}

// The default per-client limit at node level: an anonymous client gets rate_limit.rpm per
// window, with the headers that say so, and no admin token is needed for it.
func TestDefaultClientLimitAtNodeLevel(t *testing.T) {
	n := startTestNode(t, func(c *Config) { c.RateLimit.RPM = 4 })
	require.Empty(t, n.cfg.Admin.Token)
	var w windowCounts
	for range requestsToBind(4) {
		r := limitedInfer(t, rawClient(), n, "")
		require.Equal(t, "4", r.header.Get("X-RateLimit-Limit"))
		w.add(t, r)
	}
	w.requireLimit(t, 4)
	metrics := send(t, http.MethodGet, baseURL(n)+"/metrics", nil, nil)
	require.Contains(t, string(metrics.body), `inference_rate_limited_total{policy="client"}`)
}

// A tenant's limit binds all its keys together, at node level: two keys of one tenant with
// generous limits of their own share the tenant's 6 per minute.
func TestTenantLimitAtNodeLevel(t *testing.T) {
	tc := mustNewCluster(t, 1, withAdminToken)
	nd := tc.nodes[0]
	putLimits(t, nd, map[string]any{"default_rpm": 0, "tenants": map[string]any{"acme": map[string]any{"rpm": 6}}})
	keys := []string{"sk-acme-one-0123456789abcdef", "sk-acme-two-0123456789abcdef"}
	for _, k := range keys {
		res := doJSON(t, http.MethodPost, "http://"+nd.HTTPAddr()+"/admin/v1/keys", testToken, map[string]any{"key": k, "rpm": 100, "tenant": "acme"})
		require.Equal(t, http.StatusOK, res.status, string(res.body))
	}
	waitPolicy(t, tc.nodes, func(p *consensus.LimitPolicy) bool { return len(p.Keys) == 2 && p.Tenants["acme"].RPM == 6 })
	var w windowCounts
	denied := ""
	for i := range requestsToBind(6) {
		r := inferWithKey(t, nd, keys[i%2])
		w.add(t, reply(r))
		if r.status == http.StatusTooManyRequests {
			denied = string(r.body)
		}
	}
	w.requireLimit(t, 6)
	require.Contains(t, denied, "tenant")
}

// seriesCount is the number of samples /metrics serves, the Go and process collectors left out.
func seriesCount(t testing.TB, n *Node) int {
	t.Helper()
	r := send(t, http.MethodGet, baseURL(n)+"/metrics", nil, nil)
	require.Equal(t, http.StatusOK, r.status)
	c := 0
	for _, line := range strings.Split(string(r.body), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "go_") && !strings.HasPrefix(line, "process_") {
			c++
		}
	}
	return c
}

// Model names come from clients: requests naming models nobody serves add no series (they
// share model="_unknown").
func TestUnknownModelsAddNoSeries(t *testing.T) {
	n := startTestNode(t, nil)
	require.Equal(t, http.StatusOK, postJSON(t, n, "/v1/chat/completions", chatRequest(testModel, "warm")).status)
	requireAPIError(t, postJSON(t, n, "/v1/chat/completions", chatRequest("first-unknown", "x")), http.StatusNotFound)
	before := seriesCount(t, n)
	for i := range 50 {
		requireAPIError(t, postJSON(t, n, "/v1/chat/completions", chatRequest(fmt.Sprintf("random-%d-%d", i, time.Now().UnixNano()), "x")), http.StatusNotFound)
	}
	after := seriesCount(t, n)
	t.Logf("series before %d, after 50 unknown models %d", before, after)
	require.Equal(t, before, after)
	body := string(send(t, http.MethodGet, baseURL(n)+"/metrics", nil, nil).body)
	require.Contains(t, body, `model="`+ops.UnknownModel+`"`)
	require.Contains(t, body, `model="`+testModel+`"`)
	require.NotContains(t, body, "random-")
}

// Several nodes whose cache backend is local count limits each on its own: the node says so in
// /health rather than silently multiplying every limit by the cluster size.
func TestPerNodeLimitsAreReportedInHealth(t *testing.T) {
	tc := mustNewCluster(t, 2, func(_ int, cfg *Config) { cfg.Admin.Token = "" })
	for _, nd := range tc.nodes {
		r := send(t, http.MethodGet, "http://"+nd.HTTPAddr()+"/health", nil, nil)
		require.Equal(t, http.StatusOK, r.status, string(r.body))
		var rep ops.Report
		require.NoError(t, json.Unmarshal(r.body, &rep))
		c := rep.Components["ratelimit"]
		require.Equal(t, ops.StatusOK, c.Status)
		require.Equal(t, "per-node", c.Data["scope"])
		require.Contains(t, c.Detail, "per-node (cache backend local)")
	}
}

// rss is the process's resident set in bytes (Linux).
func rss(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// settledRSS collects garbage and returns freed memory to the OS before reading the RSS.
func settledRSS(t testing.TB) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return rss(t)
}

// Every structure keyed by client input is bounded: a flood of distinct client addresses (each
// request from its own 127.x.y.z source address) each with a made-up key leaves memory within
// a bound and the goroutine count where it was. SHOAL_BOUNDS_CLIENTS sets the number of
// clients (default 20000, 2000 under the race detector; ratelimit/DESIGN.md reports a 100000
// run).
func TestManyDistinctClientsKeepStateBounded(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs all of 127.0.0.0/8 on loopback and /proc")
	}
	clients := 20000
	if raceDetector {
		// The race detector slows each request tenfold; the bound per client is the same.
		clients = 2000
	}
	if v := os.Getenv("SHOAL_BOUNDS_CLIENTS"); v != "" {
		var err error
		clients, err = strconv.Atoi(v)
		require.NoError(t, err)
	}
	n := startTestNode(t, func(c *Config) {
		c.RateLimit.RPM = 5
		// Run each request at once rather than wait for a batch to fill: the test is about
		// the clients, not the model.
		c.Batching.FlushTimeout = 0
	})
	// Warm up: one request so lazily built state (pools, the model's queue) exists before
	// the baseline.
	require.Equal(t, http.StatusOK, limitedInfer(t, rawClient(), n, "").status)
	goroutinesBefore := runtime.NumGoroutine()
	rssBefore := settledRSS(t)

	var next, admitted, denied atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(clients) {
					return
				}
				// 127.1.0.0 and up: one source address per client.
				src := net.IPv4(127, byte(1+i>>16), byte(i>>8), byte(i))
				client := &http.Client{Timeout: apiWait, Transport: &http.Transport{
					DisableKeepAlives: true,
					DialContext:       (&net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}).DialContext,
				}}
				r := limitedInfer(t, client, n, fmt.Sprintf("sk-flood-%d", i))
				switch r.status {
				case http.StatusOK:
					admitted.Add(1)
				case http.StatusTooManyRequests:
					denied.Add(1)
				default:
					t.Errorf("client %d: status %d: %s", i, r.status, r.body)
					return
				}
			}
		})
	}
	wg.Wait()
	st := n.limiter.Stats()
	rssAfter := settledRSS(t)
	t.Logf("%d clients: %d admitted, %d denied; buckets held %d (max %d), direct decisions %d; RSS %.1f MiB before, %.1f MiB after (+%.1f MiB); goroutines %d before",
		clients, admitted.Load(), denied.Load(), st.Buckets, 65536, st.Overflow,
		float64(rssBefore)/(1<<20), float64(rssAfter)/(1<<20), float64(rssAfter-rssBefore)/(1<<20), goroutinesBefore)
	require.EqualValues(t, clients, admitted.Load(), "every client is new: each has its own budget")
	require.LessOrEqual(t, st.Buckets, 65536)
	// The bound: the limiter's buckets (at most 65536 of about 550 bytes with their local
	// counters) and the local counters of the window (about 200 bytes per client), plus slack
	// for the runtime's own growth under the load.
	bound := int64(48<<20) + int64(clients)*200
	require.LessOrEqual(t, rssAfter-rssBefore, bound, "RSS grew past its bound")

	// Goroutines come back to where they were: nothing per client outlives its request.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.LessOrEqual(c, runtime.NumGoroutine(), goroutinesBefore+5)
	}, apiWait, 50*time.Millisecond, "goroutines did not come back")
	// Idle clients' buckets are forgotten within seconds, not kept for their window.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Less(c, n.limiter.Stats().Buckets, 10)
	}, apiWait, 100*time.Millisecond, "idle client buckets were kept")
	t.Logf("after idle: buckets %d, goroutines %d, RSS %.1f MiB", n.limiter.Stats().Buckets, runtime.NumGoroutine(), float64(settledRSS(t))/(1<<20))
}
