package node

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/httpapi"
	"github.com/shoal-dev/shoal/ratelimit"
	"github.com/shoal-dev/shoal/router"
)

// Multi-node scenarios run in every clusterMode (cluster_test.go holds the
// others): a protection that holds only with the admin token or the gossip
// key set is switched off for the users who set neither.

// A request entering at a node that does not serve the model is answered
// from the cache another node filled; a client spreading its requests over
// every node gets rate_limit.rpm once, not once per node.
// withPatientLimiter gives counter calls and leases bounds a loaded 2-core
// machine meets. The limit is exact while counter calls answer in time; a
// lease slower than its bound falls back to per-node shares (by design,
// ratelimit/DESIGN.md), which a loaded machine triggers. Tests about the
// cluster-wide count wait longer instead.
func withPatientLimiter(_ int, cfg *Config) {
	cache := cfg.Tuning.Cache
	cfg.Tuning.Cache = func(c *dcache.Config) {
		if cache != nil {
			cache(c)
		}
		c.OpTimeout = 5 * time.Second
	}
	cfg.Tuning.Limiter = func(c *ratelimit.Config) { c.LeaseTimeout = 2 * time.Second }
}

func TestForwardedCacheHitAndClusterRateLimit(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode clusterMode) {
		const rpm = 8
		tc := olricCluster(t, 3, mode.with(func(i int, cfg *Config) {
			cfg.RateLimit.RPM = rpm
			withPatientLimiter(i, cfg)
			if i == 0 {
				cfg.Models[0].Name = "elsewhere"
			}
		}))
		entry := tc.nodes[0]
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Len(c, entry.candidates("sim-fast"), 2)
		}, clusterWait, 20*time.Millisecond)

		// The entry node cannot run the model: the miss is forwarded, and
		// the answer stored where it ran serves the other nodes.
		window := time.Now().Truncate(time.Minute)
		first := deterministicInfer(t, entry, "matrix question", nil)
		require.Equal(t, http.StatusOK, first.status, string(first.body))
		require.Equal(t, httpapi.CacheMiss, first.header.Get("X-Shoal-Cache"))
		ran := first.header.Get("X-Shoal-Node")
		require.NotEqual(t, entry.Name(), ran, "node 0 cannot run sim-fast: the request must be forwarded")
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			_, found, err := entry.cache.Get(context.Background(), "sim-fast", mustCacheKey(t, "matrix question"))
			assert.NoError(c, err)
			assert.True(c, found)
		}, clusterWait, 10*time.Millisecond, "the answer was never stored")
		for _, nd := range tc.nodes {
			if nd.Name() == ran {
				continue
			}
			hit := deterministicInfer(t, nd, "matrix question", nil)
			require.Equal(t, http.StatusOK, hit.status, string(hit.body))
			require.Equal(t, httpapi.CacheHit, hit.header.Get("X-Shoal-Cache"), "at %s", nd.Name())
			require.Equal(t, outputText(t, first.body), outputText(t, hit.body))
		}
		const spent = 3 // the miss and two hits, all from this client

		// Fixed one-minute windows: a burst that crosses a minute boundary
		// starts a fresh window and proves nothing, so it runs again.
		for attempt := 0; ; attempt++ {
			start := time.Now().Truncate(time.Minute)
			admitted, limited := 0, 0
			for i := range 3 * rpm {
				res := inferWithKey(t, tc.nodes[i%3], "")
				switch res.status {
				case http.StatusOK:
					admitted++
				case http.StatusTooManyRequests:
					limited++
					require.NotEmpty(t, res.header.Get("Retry-After"))
				default:
					t.Fatalf("request %d at %s: %d %s", i, tc.nodes[i%3].Name(), res.status, res.body)
				}
			}
			if !time.Now().Truncate(time.Minute).Equal(start) {
				require.Less(t, attempt, 2, "every burst crossed a minute boundary")
				continue
			}
			bound := rpm
			if start.Equal(window) {
				bound -= spent
			}
			t.Logf("admitted %d of %d (bound %d)", admitted, 3*rpm, bound)
			require.LessOrEqual(t, admitted, bound, "the limit applied per node, not cluster-wide")
			require.Positive(t, admitted)
			require.Positive(t, limited)
			return
		}
	})
}

// A peer whose HTTP and Raft ports (the peer plane shares the latter)
// accept connections and never answer (a node frozen mid-flight; its
// gossip still says it is alive and idle) does not cost the healthy nodes
// their answers: every request entering at them succeeds within its
// deadline, those sent to the paused peer first retried elsewhere, and a
// write still commits.
func TestPausedPeerDoesNotHurtHealthyNodes(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode clusterMode) {
		httpStall := make([]*stallListener, 3)
		raftStall := make([]*stallListener, 3)
		tc := mustNewCluster(t, 3, mode.with(func(i int, cfg *Config) {
			// Queues form on the entry nodes, so they forward.
			cfg.Models[0].Sim.Base = 20 * time.Millisecond
			cfg.Models[0].MaxSize = 2
			httpStall[i] = newStallListener(cfg.HTTPListener)
			raftStall[i] = newStallListener(cfg.RaftListener)
			cfg.HTTPListener, cfg.RaftListener = httpStall[i], raftStall[i]
		}))
		tc.waitMembers(tc.nodes...)
		leader := tc.waitLeader(tc.nodes...)
		var healthy []*Node
		paused := -1
		for i, nd := range tc.nodes {
			if paused < 0 && nd.Name() != leader {
				paused = i
				continue
			}
			healthy = append(healthy, nd)
		}
		httpStall[paused].stall()
		raftStall[paused].stall()
		t.Cleanup(httpStall[paused].release) // before the nodes stop
		t.Cleanup(raftStall[paused].release)

		var mu sync.Mutex
		var failures []string
		retried := 0
		var wg sync.WaitGroup
		for c := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 4 {
					nd := healthy[(c+i)%2]
					body := fmt.Sprintf(`{"model":"sim-fast","input":"paused %d/%d","parameters":{"temperature":1}}`, c, i)
					status, route, detail := postTimed(nd, body, "6s")
					mu.Lock()
					if status != http.StatusOK {
						failures = append(failures, fmt.Sprintf("%s: %d %s", nd.Name(), status, detail))
					}
					if strings.Contains(route, "retry") {
						retried++
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		require.Empty(t, failures)
		require.Positive(t, retried, "no request went to the paused peer first: the scenario tested nothing")

		// The leader and the healthy follower are a majority.
		follower := healthy[0]
		if follower.Name() == leader {
			follower = healthy[1]
		}
		mode.setBatching(t, follower, 3, 2*time.Millisecond)
		waitBatching(t, healthy, 3, 2*time.Millisecond)
	})
}

// postTimed posts an infer body with X-Shoal-Timeout; it returns the
// status (0 when the request itself failed), the route header and the body
// or error. It never fails the test, so goroutines may call it.
func postTimed(nd *Node, body, timeout string) (status int, route, detail string) {
	req, err := http.NewRequest(http.MethodPost, baseURL(nd)+"/v1/infer", strings.NewReader(body))
	if err != nil {
		return 0, "", err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Shoal-Timeout", timeout)
	resp, err := rawClient().Do(req)
	if err != nil {
		return 0, "", err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get(router.HeaderRoute), string(b)
}
