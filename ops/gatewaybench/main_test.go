package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const wrkOut = `Running 4s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   9.00ms   90.00%
  Latency Distribution
     50%    1.10ms
     75%    1.30ms
     90%    1.50ms
     99%    3.20ms
  120000 requests in 4.00s, 60.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:  30000.00
Transfer/sec:     15.00MB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkOut)
	require.NoError(t, err)
	require.InDelta(t, 30000.0, r.rps, 0.01)
	require.Equal(t, int64(120000), r.requests)
	require.Equal(t, 1100*time.Microsecond, r.p50)
	require.Equal(t, 3200*time.Microsecond, r.p99)
	require.Equal(t, 6, r.errors, "non-2xx plus socket errors")

	_, err = parseWrk("wrk: connection refused")
	require.Error(t, err)
}

func TestCPUTimeCountsThisProcessAndItsGroup(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	before := cpuTime([]int{0})
	deadline := time.Now().Add(200 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	require.Greater(t, cpuTime([]int{0}), before, "200 ms of spinning shows in this process's CPU time")
	require.Zero(t, cpuTime([]int{1 << 30}), "a group with no process has spent nothing")
}

func TestBusyShareSeesThisProcessSpin(t *testing.T) {
	if _, err := os.Stat("/proc/stat"); err != nil {
		t.Skip("no /proc")
	}
	b0, t0 := boxTicks()
	require.Positive(t, t0)
	deadline := time.Now().Add(300 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	b1, t1 := boxTicks()
	share := busyShare(b0, t0, b1, t1)
	// One spinning thread keeps at least one CPU of runtime.NumCPU busy.
	require.GreaterOrEqual(t, share, 0.8/float64(runtime.NumCPU()), "busy %.2f", share)
	require.LessOrEqual(t, share, 1.0)
	require.Zero(t, busyShare(b1, t1, b1, t1), "no time passed")
}

// TestStackRowsAnswerTheFixedCompletion starts every in-process row against
// a stand-in for nginx and checks each answers the chat completion with a
// 200, as wrk's rounds assume.
func TestStackRowsAnswerTheFixedCompletion(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, answer)
	}))
	t.Cleanup(up.Close)
	starts := map[string]func() (string, func(), error){
		"fasthttp proxy": func() (string, func(), error) { return startFastProxy(up.URL, 4) },
		"tuned proxy":    func() (string, func(), error) { return startTunedGoProxy(up.URL, 4) },
		"default proxy":  func() (string, func(), error) { return startGoProxy(up.URL) },
		"fasthttp fixed": startFastFixed,
		"net/http fixed": startNetFixed,
		"adaptor fixed":  startAdaptorFixed,
	}
	for name, start := range starts {
		t.Run(name, func(t *testing.T) {
			u, stop, err := start()
			require.NoError(t, err)
			t.Cleanup(stop)
			// Twice, so the second goes over a kept-alive connection.
			for range 2 {
				resp, err := http.Post(u+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"bench"}`))
				require.NoError(t, err)
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				require.NoError(t, err)
				require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
				require.JSONEq(t, answer, string(body))
				require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			}
		})
	}
}
