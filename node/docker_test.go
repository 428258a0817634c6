package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The container tests run the docker-compose cluster (three shoal
// containers built FROM scratch) and inject real faults: SIGKILL of the
// leader and a network partition. `make test-cluster` builds the image and
// runs them with SHOAL_DOCKER_TESTS=1.

const (
	dockerProject = "shoaltest"
	dockerToken   = "docker-test-admin-token-0123"
	// dockerGossipKey turns on gossip encryption, and with it the cache's
	// encrypted memberlist and password, in the containers.
	dockerGossipKey = "q2N5Jm8vQkZ0b3lXc1pHcGp4Uk1iV0E5dFZlN2hMc0s="
)

var dockerPorts = map[string]string{"shoal-1": "8081", "shoal-2": "8082", "shoal-3": "8083"}

func compose(t *testing.T, args ...string) string {
	t.Helper()
	full := append([]string{"-p", dockerProject, "-f", "../docker-compose.yml"}, args...)
	bin, pre := "docker-compose", []string{}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		bin, pre = "docker", []string{"compose"}
	}
	cmd := exec.Command(bin, append(pre, full...)...)
	cmd.Env = append(os.Environ(), "SHOAL_ADMIN_TOKEN="+dockerToken, "SHOAL_GOSSIP_KEY="+dockerGossipKey)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %v: %s", bin, args, out)
	return strings.TrimSpace(string(out))
}

func docker(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func containerID(t *testing.T, service string) string {
	t.Helper()
	id := compose(t, "ps", "-q", service)
	require.NotEmpty(t, id, "no container for %s", service)
	return id
}

// dockerView asks a node (by host port) for its cluster view.
func dockerView(service string) (ClusterView, error) {
	var v ClusterView
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+dockerPorts[service]+"/admin/v1/cluster", nil)
	req.Header.Set("Authorization", "Bearer "+dockerToken)
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("status %d", resp.StatusCode)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// cacheFormed reports whether service's cache member sees all three
// members (over the encrypted, password-protected cache when the gossip key
// is set) and reports itself healthy.
func cacheFormed(service string) bool {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + dockerPorts[service] + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var h struct {
		Components map[string]struct {
			Status string         `json:"status"`
			Data   map[string]any `json:"data"`
		} `json:"components"`
	}
	if json.NewDecoder(resp.Body).Decode(&h) != nil {
		return false
	}
	cache := h.Components["cache"]
	return cache.Status == "ok" && cache.Data["members"] == float64(3)
}

// healthy reports whether service sees all three members alive under one
// leader, with every node serving sim-fast.
func healthy(service string) (string, bool) {
	v, err := dockerView(service)
	if err != nil || v.Leader == "" || len(v.Members) != 3 {
		return "", false
	}
	for _, m := range v.Members {
		if m.State != "alive" || m.Models["sim-fast"].Slots == 0 {
			return "", false
		}
	}
	return v.Leader, true
}

// clientLoad sends requests to the given services until stopped, retrying a
// failed request once on the next service, as a client with a list of
// nodes does. It counts requests whose retry failed too.
type clientLoad struct {
	total, failed atomic.Int64
	stop          chan struct{}
	wg            sync.WaitGroup
}

func startLoad(services []string, clients int) *clientLoad {
	l := &clientLoad{stop: make(chan struct{})}
	c := &http.Client{Timeout: 5 * time.Second}
	send := func(service string, i int) bool {
		body, _ := json.Marshal(map[string]any{"model": "sim-fast", "input": fmt.Sprintf("docker %d", i), "parameters": map[string]any{"temperature": 1, "max_tokens": 4}})
		resp, err := c.Post("http://127.0.0.1:"+dockerPorts[service]+"/v1/infer", "application/json", bytes.NewReader(body))
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	for w := 0; w < clients; w++ {
		l.wg.Add(1)
		go func(w int) {
			defer l.wg.Done()
			for i := w; ; i += clients {
				select {
				case <-l.stop:
					return
				default:
				}
				l.total.Add(1)
				if !send(services[i%len(services)], i) && !send(services[(i+1)%len(services)], i) {
					l.failed.Add(1)
				}
			}
		}(w)
	}
	return l
}

// await waits until the load has sent n more requests.
func (l *clientLoad) await(t *testing.T, n int64) {
	t.Helper()
	target := l.total.Load() + n
	require.Eventually(t, func() bool { return l.total.Load() >= target }, time.Minute, 20*time.Millisecond)
}

func (l *clientLoad) finish(t *testing.T, what string) {
	close(l.stop)
	l.wg.Wait()
	total, failed := l.total.Load(), l.failed.Load()
	rate := float64(failed) / float64(max(total, 1))
	t.Logf("%s: %d requests, %d failed after a retry (%.2f%%)", what, total, failed, 100*rate)
	require.Positive(t, total)
	require.Less(t, rate, 0.01, "%s: client error rate must stay under 1%%", what)
}

func survivorsOf(except string) []string {
	var out []string
	for s := range dockerPorts {
		if s != except {
			out = append(out, s)
		}
	}
	return out
}

func TestDockerCluster(t *testing.T) {
	if os.Getenv("SHOAL_DOCKER_TESTS") != "1" {
		t.Skip("container cluster tests run with `make test-cluster` (SHOAL_DOCKER_TESTS=1)")
	}
	compose(t, "down", "-v", "--remove-orphans")
	compose(t, "up", "-d")
	t.Cleanup(func() {
		if t.Failed() {
			logs := exec.Command("docker-compose", "-p", dockerProject, "-f", "../docker-compose.yml", "logs", "--tail", "60")
			out, _ := logs.CombinedOutput()
			t.Logf("container logs:\n%s", out)
		}
		compose(t, "down", "-v", "--remove-orphans")
	})
	var leader string
	require.Eventually(t, func() bool {
		for s := range dockerPorts {
			l, ok := healthy(s)
			if !ok || (leader != "" && l != leader) {
				leader = ""
				return false
			}
			leader = l
		}
		return true
	}, 3*time.Minute, 200*time.Millisecond, "the container cluster never formed")
	t.Logf("cluster formed, leader %s", leader)
	require.Eventually(t, func() bool {
		for s := range dockerPorts {
			if !cacheFormed(s) {
				return false
			}
		}
		return true
	}, time.Minute, 200*time.Millisecond, "the encrypted cache never formed one cluster across the containers")

	t.Run("leader SIGKILL elects a new leader in under 10s", func(t *testing.T) {
		survivors := survivorsOf(leader)
		load := startLoad(survivors, 4)
		id := containerID(t, leader)
		killed := time.Now()
		_, err := docker(t, "kill", "-s", "KILL", id)
		require.NoError(t, err)
		var newLeader string
		require.Eventually(t, func() bool {
			a, errA := dockerView(survivors[0])
			b, errB := dockerView(survivors[1])
			if errA != nil || errB != nil || a.Leader == "" || a.Leader == leader || a.Leader != b.Leader {
				return false
			}
			newLeader = a.Leader
			return true
		}, 30*time.Second, 50*time.Millisecond)
		failover := time.Since(killed)
		t.Logf("new leader %s after %s", newLeader, failover.Round(time.Millisecond))
		require.Less(t, failover, 10*time.Second)
		// Keep the load on for another 200 requests with the old leader gone.
		load.await(t, 200)
		load.finish(t, "during leader failover")

		_, err = docker(t, "start", id)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			l, ok := healthy(leader)
			if ok {
				newLeader = l
			}
			return ok
		}, 2*time.Minute, 200*time.Millisecond, "the killed node never rejoined")
		leader = newLeader
	})

	t.Run("an isolated minority accepts no writes and rejoins", func(t *testing.T) {
		var isolated string
		for s := range dockerPorts {
			if s != leader {
				isolated = s
				break
			}
		}
		majority := survivorsOf(isolated)
		id := containerID(t, isolated)
		network := dockerProject + "_shoal"
		ip, err := docker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\").IPAddress}}", id)
		require.NoError(t, err)
		load := startLoad(majority, 4)
		_, err = docker(t, "network", "disconnect", network, id)
		require.NoError(t, err)

		// The isolated node's own admin API must refuse writes.
		out, err := docker(t, "exec", id, "/shoal", "admin", "batching", "set", "--node", "http://127.0.0.1:8080",
			"--token", dockerToken, "--model", "sim-fast", "--max-size", "3")
		require.Error(t, err, "an isolated node accepted a write: %s", out)
		t.Logf("isolated write refused: %s", out)

		// The majority keeps a leader and accepts writes.
		var res httpResult
		require.Eventually(t, func() bool {
			res = putBatching(majority[0], 5)
			return res.status == http.StatusOK
		}, 30*time.Second, 100*time.Millisecond, "the majority refused a write: %d %s", res.status, res.body)
		// Keep the load on the majority for another 200 requests while cut off.
		load.await(t, 200)
		load.finish(t, "during the partition")
		for _, s := range majority {
			v, err := dockerView(s)
			require.NoError(t, err)
			require.NotEqual(t, isolated, v.Leader)
		}

		_, err = docker(t, "network", "connect", "--ip", ip, "--alias", isolated, network, id)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			if _, ok := healthy(isolated); !ok {
				return false
			}
			return simFastMaxSize(isolated) == 5
		}, 2*time.Minute, 200*time.Millisecond, "the isolated node never rejoined and caught up")
	})
}

func putBatching(service string, size int) httpResult {
	body, _ := json.Marshal(map[string]any{"model": "sim-fast", "max_size": size})
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPut, "http://127.0.0.1:"+dockerPorts[service]+"/admin/v1/batching", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+dockerToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return httpResult{body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return httpResult{status: resp.StatusCode, body: data}
}

// simFastMaxSize is sim-fast's batch size as service reports it (0 when
// unreachable).
func simFastMaxSize(service string) int {
	var v struct {
		Models map[string]struct {
			MaxSize int `json:"max_size"`
		} `json:"models"`
	}
	if json.Unmarshal([]byte(getBatching(service)), &v) != nil {
		return 0
	}
	return v.Models["sim-fast"].MaxSize
}

func getBatching(service string) string {
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+dockerPorts[service]+"/admin/v1/batching", nil)
	req.Header.Set("Authorization", "Bearer "+dockerToken)
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return string(data)
}
