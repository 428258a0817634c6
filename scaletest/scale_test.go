package scaletest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/clustersim"
	"github.com/shoal-dev/shoal/gossip"
	"github.com/shoal-dev/shoal/internal/testbin"
)

// binPath is the shoal binary the test runs: SHOAL_SCALE_BIN, or one
// TestMain builds.
var binPath string

func TestMain(m *testing.M) {
	if os.Getenv("SHOAL_SCALE_TEST") != "1" {
		os.Exit(m.Run())
	}
	testbin.Main(m, "scaletest", "SHOAL_SCALE_BIN", "..", &binPath)
}

// workload is the cluster and load of the test and of the simulation it is
// compared with: 20 nodes of 4 slots (max_concurrent_batches 4, max_size
// 1, so a slot is one request as in clustersim), 800 ms mean lognormal
// service (sim jitter 0.6), two nodes 3x slower (a 2.4 s base), 75% of
// capacity offered (70 requests a second), requests arriving at every
// node. The service time is long so that the milliseconds of HTTP,
// forwarding and CPU contention that clustersim does not model stay small
// beside it, and the request rate low enough that 20 processes leave a
// shared 2-core machine some room.
type workload struct {
	nodes, slots, slow int
	mean               time.Duration
	sigma, slowFactor  float64
	util               float64
}

var scale = workload{nodes: 20, slots: 4, slow: 2, mean: 800 * time.Millisecond, sigma: 0.6, slowFactor: 3, util: 0.75}

const (
	founders = 3 // bootstrap_expect; the rest join as Raft non-voters past max_voters 5
	model    = "sim"
)

// node is one shoal process.
type node struct {
	name                      string
	http, gossip, raft, cache string
	dataDir, cfgPath, logPath string

	cmd  *exec.Cmd
	done chan struct{}
}

// hcl is node i's configuration. The response cache is off: every request
// is unique, so the cache could only cost CPU, and 20 Olric members on a
// shared 2-core machine would take a large share of it. The rate limit is
// far above the load, which all comes from one client address.
func (w workload) hcl(i int) string {
	base := w.mean
	if i < w.slow {
		base = time.Duration(float64(w.mean) * w.slowFactor)
	}
	return fmt.Sprintf(`http {
  drain_timeout = "1s"
}
raft {
  bootstrap_expect = %d
}
cache {
  backend = "off"
}
rate_limit {
  rpm = 100000000
}
model %q {
  backend                = "sim"
  max_size               = 1
  max_concurrent_batches = %d
  sim {
    base               = %q
    per_item           = "0s"
    token_interval     = "0s"
    default_max_tokens = 1
    jitter             = %g
    seed               = %d
  }
}
`, bootstrapExpect(i), model, w.slots, base.String(), w.sigma, i+1)
}

func bootstrapExpect(i int) int {
	if i < founders {
		return founders
	}
	return 0
}

// freePorts returns n distinct loopback ports free for TCP and UDP (gossip
// binds both). They are held until all are found, so none repeats.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var (
		ports   []int
		closers []io.Closer
	)
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		closers = append(closers, l)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		closers = append(closers, u)
		ports = append(ports, port)
	}
	return ports
}

func (n *node) start(t *testing.T, join []string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(n.dataDir, 0o700))
	logf, err := os.Create(n.logPath)
	require.NoError(t, err)
	args := []string{"node", "start", "--config", n.cfgPath, "--name", n.name, "--data-dir", n.dataDir,
		"--http-addr", n.http, "--gossip-addr", n.gossip, "--raft-addr", n.raft, "--cache-addr", n.cache}
	for _, j := range join {
		if j != n.gossip {
			args = append(args, "--join", j)
		}
	}
	cmd := exec.Command(binPath, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test killed by go test's timeout leaves no node behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// The config file decides, not the caller's SHOAL_* environment.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHOAL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	require.NoError(t, cmd.Start(), "start %s", n.name)
	n.cmd, n.done = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(n.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-n.done
		if t.Failed() {
			t.Logf("%s log tail:\n%s", n.name, logTail(n.logPath, 15))
		}
	})
}

func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var keep []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.Contains(line, "panic") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep[max(0, len(keep)-n):], "\n")
}

// health is the part of /health the test reads.
type health struct {
	Components map[string]struct {
		Data map[string]any `json:"data"`
	} `json:"components"`
}

func (h health) num(comp, key string) int {
	f, _ := h.Components[comp].Data[key].(float64)
	return int(f)
}

var probe = &http.Client{Timeout: 2 * time.Second}

func getHealth(n *node) (health, error) {
	var h health
	resp, err := probe.Get("http://" + n.http + "/health")
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	// /health answers 503 with a body while a component is down; the
	// fields the test waits on say enough either way.
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

// scrape reads a node's /metrics samples, by name with labels.
func scrape(n *node) (map[string]float64, error) {
	resp, err := probe.Get("http://" + n.http + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		f, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", n.name, line, err)
		}
		out[line[:i]] = f
	}
	return out, sc.Err()
}

// counters is what the test reads from every node's /metrics.
type counters struct {
	// msgs sums load messages sent (pushes, heartbeats, answers to pulls)
	// and pulls: what clustersim counts as load messages.
	msgs float64
	// served and waitMs are the requests each node ran and their summed
	// queue wait.
	served, waitMs []float64
	// cpu is the CPU seconds the node processes used, and self the test
	// process's (the client); -1 where /proc cannot tell.
	cpu, self float64
}

// cpuSeconds is a process's user plus system time from /proc (Linux), -1
// elsewhere.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime and stime fields 14 and 15, in clock ticks (100 Hz).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return (u + st) / 100
}

func scrapeAll(t *testing.T, nodes []*node) counters {
	t.Helper()
	var c counters
	for _, n := range nodes {
		m, err := scrape(n)
		require.NoError(t, err)
		sent, ok1 := m["inference_gossip_load_messages_sent_total"]
		pulls, ok2 := m["inference_gossip_load_pulls_sent_total"]
		require.True(t, ok1 && ok2, "%s: gossip counters missing from /metrics", n.name)
		c.msgs += sent + pulls
		c.served = append(c.served, m[`inference_batch_size_count{model="`+model+`"}`])
		c.waitMs = append(c.waitMs, m[`inference_queue_wait_ms_sum{model="`+model+`"}`])
		if c.cpu >= 0 {
			if v := cpuSeconds(n.cmd.Process.Pid); v >= 0 {
				c.cpu += v
			} else {
				c.cpu = -1
			}
		}
	}
	c.self = cpuSeconds(os.Getpid())
	return c
}

// TestScale20Processes starts 20 real shoal nodes on loopback (sampled
// dissemination: 19 peers is past gossip's AllToAllMax of 8), offers 75% of
// their capacity as Poisson arrivals at every node, and checks the routing
// p99 and the load messages per node per second against clustersim for the
// same workload. About 80 s (half of it forming the cluster); runs only with SHOAL_SCALE_TEST=1.
func TestScale20Processes(t *testing.T) {
	if os.Getenv("SHOAL_SCALE_TEST") != "1" {
		t.Skip("set SHOAL_SCALE_TEST=1 (make test-scale) to run the 20-process scale test")
	}
	w := scale
	const (
		warmup  = 10 * time.Second
		measure = 40 * time.Second
		// Margins. About 2,800 requests are measured, so the p99 rests on
		// the slowest ~28: its rank alone wanders by about ±5 (binomial),
		// some 5% in latency, and runs differ by their arrival and service
		// draws. The real path adds what clustersim does not model (it has
		// 0.5 ms hops): HTTP, forwarding, pulls answered late on a busy
		// machine, the nodes' noisy estimates of their own service time,
		// and timers that fire late when the 2 cores are shared. Those only
		// add latency, so the real p99 may exceed the prediction by 30%
		// but fall below it by 15% only. Without the service cost in the
		// load reports clustersim predicts a p99 about 33% higher, which
		// these bounds tell apart. The message rate is a count of
		// thousands and matches within a few percent; 25% is for a loaded
		// machine's late heartbeats and pulls.
		p99Over, p99Under = 0.30, 0.15
		msgMargin         = 0.25
	)
	dir := t.TempDir()
	ports := freePorts(t, 4*w.nodes)
	nodes := make([]*node, w.nodes)
	var founderGossip []string
	for i := range nodes {
		n := &node{name: fmt.Sprintf("n%02d", i),
			http: fmt.Sprintf("127.0.0.1:%d", ports[4*i]), gossip: fmt.Sprintf("127.0.0.1:%d", ports[4*i+1]),
			raft: fmt.Sprintf("127.0.0.1:%d", ports[4*i+2]), cache: fmt.Sprintf("127.0.0.1:%d", ports[4*i+3])}
		n.dataDir = filepath.Join(dir, n.name)
		n.cfgPath = filepath.Join(dir, n.name+".hcl")
		n.logPath = filepath.Join(dir, n.name+".log")
		require.NoError(t, os.WriteFile(n.cfgPath, []byte(w.hcl(i)), 0o600))
		nodes[i] = n
		if i < founders {
			founderGossip = append(founderGossip, n.gossip)
		}
	}
	// The founders bootstrap Raft among themselves before anyone else
	// joins, so all three build the same configuration.
	for _, n := range nodes[:founders] {
		n.start(t, founderGossip)
	}
	started := time.Now()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, n := range nodes[:founders] {
			h, err := getHealth(n)
			if !assert.NoError(c, err) {
				return
			}
			leader, _ := h.Components["raft"].Data["leader"].(string)
			assert.NotEmpty(c, leader, "%s: no raft leader", n.name)
		}
	}, 60*time.Second, 200*time.Millisecond, "founders elect a leader")
	for _, n := range nodes[founders:] {
		n.start(t, founderGossip)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, n := range nodes {
			h, err := getHealth(n)
			if !assert.NoError(c, err) {
				return
			}
			leader, _ := h.Components["raft"].Data["leader"].(string)
			assert.NotEmpty(c, leader, "%s: no raft leader", n.name)
			assert.Equal(c, w.nodes, h.num("gossip", "alive"), "%s: gossip alive", n.name)
			assert.Equal(c, w.nodes, h.num("gossip", "loads_known"), "%s: loads known", n.name)
			assert.Equal(c, true, h.Components["gossip"].Data["sampling"], "%s: sampling", n.name)
		}
	}, 90*time.Second, 500*time.Millisecond, "20 nodes see each other's loads in sampled dissemination")
	t.Logf("cluster of %d formed in %v", w.nodes, time.Since(started).Round(100*time.Millisecond))
	idle, idleAt := scrapeAll(t, nodes), time.Now()
	time.Sleep(3 * time.Second) // an idle window for the CPU baseline, not a wait for a state
	if idle2 := scrapeAll(t, nodes); idle.cpu >= 0 && idle2.cpu >= 0 {
		t.Logf("CPU idle: the 20 nodes %.2f cores", (idle2.cpu-idle.cpu)/time.Since(idleAt).Seconds())
	}

	capacity := 0.0
	for i := range w.nodes {
		speed := 1.0
		if i < w.slow {
			speed = w.slowFactor
		}
		capacity += float64(w.slots) / (speed * w.mean.Seconds())
	}
	rate := w.util * capacity / float64(w.nodes)

	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 256}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu       sync.Mutex
		lats     []time.Duration
		late     []time.Duration // arrival timers' lateness: how starved the machine was
		failures []string
		inflight sync.WaitGroup
		arrivals sync.WaitGroup
	)
	start := time.Now()
	measureFrom, measureTo := start.Add(warmup), start.Add(warmup+measure)
	for i, n := range nodes {
		arrivals.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 11))
			timer := time.NewTimer(0)
			defer timer.Stop()
			next := time.Now()
			for seq := 0; ; seq++ {
				// A Poisson workload generator, not synchronisation: the
				// arrival times are fixed ahead, so a late wake-up does not
				// thin the load.
				next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
				if next.After(measureTo) {
					return
				}
				timer.Reset(time.Until(next))
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
				if !next.Before(measureFrom) {
					mu.Lock()
					late = append(late, time.Since(next))
					mu.Unlock()
				}
				arrived := next
				body := fmt.Sprintf(`{"model":%q,"prompt":"scale %s %d","max_tokens":1}`, model, n.name, seq)
				inflight.Go(func() {
					req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+n.http+"/v1/completions", strings.NewReader(body))
					if err != nil {
						panic(err)
					}
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Cache-Control", "no-store")
					resp, err := client.Do(req)
					took := time.Since(arrived)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						failures = append(failures, err.Error())
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						failures = append(failures, fmt.Sprintf("%s: %d %s", n.name, resp.StatusCode, bytes.TrimSpace(b)))
						return
					}
					if !arrived.Before(measureFrom) {
						lats = append(lats, took)
					}
				})
			}
		})
	}
	// The phases are timed workload windows, not waits for a state.
	time.Sleep(time.Until(measureFrom))
	before, beforeAt := scrapeAll(t, nodes), time.Now()
	time.Sleep(time.Until(measureTo))
	after, afterAt := scrapeAll(t, nodes), time.Now()
	arrivals.Wait()
	inflight.Wait()
	msgRate := (after.msgs - before.msgs) / float64(w.nodes) / afterAt.Sub(beforeAt).Seconds()
	var perNode []string
	for i := range nodes {
		served := after.served[i] - before.served[i]
		perNode = append(perNode, fmt.Sprintf("%s %.0f (wait %.0fms)", nodes[i].name, served, (after.waitMs[i]-before.waitMs[i])/max(served, 1)))
	}
	t.Logf("served in the measured window, mean queue wait: %s", strings.Join(perNode, ", "))
	if before.cpu >= 0 && after.cpu >= 0 {
		secs := afterAt.Sub(beforeAt).Seconds()
		t.Logf("CPU in the measured window: the 20 nodes %.2f cores, the client %.2f cores (of %d)",
			(after.cpu-before.cpu)/secs, (after.self-before.self)/secs, runtime.NumCPU())
	}

	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, lats)
	total := len(lats) + len(failures)
	require.LessOrEqual(t, len(failures), total/1000, "failed requests: %d of %d, first: %v", len(failures), total, failures[:min(3, len(failures))])
	slices.Sort(lats)
	p50, p99 := lats[len(lats)/2], lats[len(lats)*99/100]
	slices.Sort(late)
	lateP99 := late[len(late)*99/100]

	sim, err := clustersim.Run(clustersim.Config{
		Nodes: w.nodes, Seed: 1, Policy: clustersim.Probe, Duration: 600 * time.Second, Warmup: 5 * time.Second,
		Slots: w.slots, MeanService: w.mean, ServiceSigma: w.sigma, Utilization: w.util,
		SlowNodes: w.slow, SlowFactor: w.slowFactor, FailFraction: 0, LossRate: 0,
		NetDelay: 500 * time.Microsecond, NetJitter: 250 * time.Microsecond,
		Fanout: gossip.DefaultFanout, Refresh: gossip.DefaultLoadInterval, ReportCost: true,
	})
	require.NoError(t, err)
	t.Logf("real: %d requests, p50 %v p99 %v, %.1f load msgs/node/s (client timer lateness p99 %v)",
		len(lats), p50.Round(time.Millisecond), p99.Round(time.Millisecond), msgRate, lateP99.Round(time.Millisecond))
	t.Logf("simulated: %d requests, p50 %v p99 %v, %.1f load msgs/node/s; real/simulated p99 %.3f, msgs %.3f",
		sim.Requests, sim.P50.Round(time.Millisecond), sim.P99.Round(time.Millisecond), sim.MsgsPerNodeSec,
		float64(p99)/float64(sim.P99), msgRate/sim.MsgsPerNodeSec)
	ratio := float64(p99) / float64(sim.P99)
	assert.True(t, ratio >= 1-p99Under && ratio <= 1+p99Over, "p99 real %v vs simulated %v: ratio %.3f outside [%.2f, %.2f]; client timer lateness p99 %v (high: the machine was starved)",
		p99, sim.P99, ratio, 1-p99Under, 1+p99Over, lateP99)
	assert.InDelta(t, 1, msgRate/sim.MsgsPerNodeSec, msgMargin, "load msgs/node/s real %.1f vs simulated %.1f", msgRate, sim.MsgsPerNodeSec)
}
