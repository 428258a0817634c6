package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/ops/bench"
	"github.com/shoal-dev/shoal/ops/bench/benchtest"
)

func promtool(t *testing.T, args ...string) string {
	t.Helper()
	bin := requireTool(t, requirePromtool, promHint, "promtool")
	cmd := exec.Command(bin, args...)
	cmd.Dir = "prometheus"
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "promtool %v:\n%s", args, out)
	return string(out)
}

func TestPromtoolRuleUnitTests(t *testing.T) {
	out := promtool(t, "test", "rules", "rules_test.yml")
	require.Contains(t, out, "SUCCESS")
}

func TestPromtoolChecksRules(t *testing.T) {
	out := promtool(t, "check", "rules", "rules.yml")
	require.Contains(t, out, "SUCCESS")
}

func TestPromtoolChecksScrapeConfigs(t *testing.T) {
	for _, f := range []string{"prometheus.yml", "prometheus-kubernetes.yml"} {
		t.Run(f, func(t *testing.T) {
			out := promtool(t, "check", "config", f)
			require.Contains(t, out, "is valid prometheus config file syntax")
		})
	}
}

// promQuery is the /api/v1/query answer for an instant vector.
type promQuery struct {
	Status string `json:"status"`
	Data   struct {
		Result []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	} `json:"data"`
}

func query(base, q string) (promQuery, error) {
	var out promQuery
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return out, fmt.Errorf("query %q: %s", q, resp.Status)
	}
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// firstValue is the value of the query's first sample, or -1 without one.
func firstValue(base, q string) float64 {
	r, err := query(base, q)
	if err != nil || r.Status != "success" || len(r.Data.Result) == 0 {
		return -1
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return -1
	}
	return v
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestPrometheusServerScrapesNode(t *testing.T) {
	bin := requireTool(t, requirePromtool, promHint, "prometheus")
	n := benchtest.Start(t, "prom-node", benchtest.Model{Name: "sim-fast", Sim: benchtest.FastSim(), MaxSize: 16, FlushTimeout: time.Millisecond})

	// The shipped rules with a scrape config pointing at the test node.
	dir := t.TempDir()
	rules, err := os.ReadFile(filepath.Join("prometheus", "rules.yml"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o644))
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
scrape_configs:
  - job_name: shoal
    scrape_timeout: 900ms
    static_configs:
      - targets: [%q]
`, n.HTTPAddr())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644))

	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	var logs bytes.Buffer
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port), "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("prometheus output:\n%s", logs.String())
		}
	})

	alive := func() bool {
		select {
		case err := <-exited:
			exited <- err
			return false
		default:
			return true
		}
	}
	require.Eventually(t, func() bool { return alive() && firstValue(base, `up{job="shoal"}`) == 1 }, 90*time.Second, 200*time.Millisecond,
		"prometheus never scraped the node")

	// Traffic while Prometheus scrapes, so rates are not zero.
	rep, err := bench.Run(context.Background(), bench.Config{URL: n.URL, Model: "sim-fast", Rate: 50, Duration: 3 * time.Second, MaxTokens: 2})
	require.NoError(t, err)
	require.EqualValues(t, 150, rep.OK)

	// The request count the benchmark made is in Prometheus's TSDB,
	// queried through its HTTP API.
	require.Eventually(t, func() bool {
		return alive() && firstValue(base, `sum(inference_request_duration_ms_count{job="shoal"})`) >= 150
	}, 90*time.Second, 200*time.Millisecond, "prometheus never saw the node's requests")

	// The recording rules evaluate against the real node's metrics.
	require.Eventually(t, func() bool {
		return firstValue(base, "shoal:inference_requests:rate5m") > 0 &&
			firstValue(base, "shoal:inference_error_ratio:rate5m") == 0 &&
			firstValue(base, "shoal:inference_request_duration_ms:p95_5m") > 0 &&
			firstValue(base, "model:inference_request_duration_ms:p99_5m") > 0 &&
			firstValue(base, "instance:process_resident_memory_bytes:max") > 0 &&
			firstValue(base, "instance:process_cpu_utilisation:rate5m") >= 0
	}, 60*time.Second, 200*time.Millisecond, "recording rules produced nothing")

	// Every alerting rule loaded and evaluates without error.
	resp, err := http.Get(base + "/api/v1/rules")
	require.NoError(t, err)
	defer resp.Body.Close()
	var rulesAnswer struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rulesAnswer))
	require.Len(t, rulesAnswer.Data.Groups, 2)
	require.Eventually(t, func() bool {
		resp, err := http.Get(base + "/api/v1/rules")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		if json.NewDecoder(resp.Body).Decode(&rulesAnswer) != nil {
			return false
		}
		for _, g := range rulesAnswer.Data.Groups {
			for _, r := range g.Rules {
				if r.Health != "ok" {
					return false
				}
			}
		}
		return true
	}, 30*time.Second, 200*time.Millisecond, "rules unhealthy: %+v", rulesAnswer.Data.Groups)
}
