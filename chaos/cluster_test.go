package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clusterConfig is what differs between scenarios.
type clusterConfig struct {
	adminToken string // empty: the admin API is off and no writes are checked
	gossipKey  string // empty: plaintext cluster ports
	// relayed: TCP between nodes goes through delaying relays (relay_test.go),
	// installed before the nodes start.
	relayed bool
}

const (
	httpPort   = 8080
	baseRPM    = 10_000_000 // rate_limit.rpm: the register's initial value, far above the load
	healthWait = 60 * time.Second
)

// proc is one shoal node process in its namespace.
type proc struct {
	idx     int
	name    string
	ip      string
	ns      string
	dataDir string
	logPath string
	cfgPath string
	peers   []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// cluster is the three nodes of one scenario.
type cluster struct {
	bin   string
	net   *network
	cfg   clusterConfig
	nodes []*proc
	dir   string
}

func newCluster(bin string, nw *network, dir string, cfg clusterConfig) (*cluster, error) {
	c := &cluster{bin: bin, net: nw, cfg: cfg, dir: dir}
	cfgPath := filepath.Join(dir, "cluster.hcl")
	if err := os.WriteFile(cfgPath, []byte(c.hcl()), 0o600); err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}
	var peers []string
	for i := range nw.nodes {
		peers = append(peers, fmt.Sprintf("%s:7946", nw.nodeIP(i)))
	}
	for i := range nw.nodes {
		p := &proc{idx: i, name: fmt.Sprintf("n%d", i+1), ip: nw.nodeIP(i), ns: nw.nodeNS(i),
			dataDir: filepath.Join(dir, fmt.Sprintf("n%d", i+1)), logPath: filepath.Join(dir, fmt.Sprintf("n%d.log", i+1)),
			cfgPath: cfgPath, peers: peers}
		c.nodes = append(c.nodes, p)
	}
	return c, nil
}

func (c *cluster) hcl() string {
	var b strings.Builder
	fmt.Fprintf(&b, `http {
  drain_timeout = "2s"
}
raft {
  bootstrap_expect = %d
}
cache {
  backend = "olric"
}
rate_limit {
  rpm = %d
}
model "sim-fast" {
  backend = "sim"
  sim {
    base               = "10ms"
    per_item           = "2ms"
    exponent           = 0.5
    token_interval     = "1ms"
    default_max_tokens = 8
  }
}
`, c.net.nodes, baseRPM)
	if c.cfg.adminToken != "" {
		fmt.Fprintf(&b, "admin {\n  token = %q\n}\n", c.cfg.adminToken)
	}
	if c.cfg.gossipKey != "" {
		fmt.Fprintf(&b, "gossip {\n  encrypt_key = %q\n}\n", c.cfg.gossipKey)
	}
	return b.String()
}

func (c *cluster) startAll() error {
	for _, p := range c.nodes {
		if err := p.start(c.bin); err != nil {
			return err
		}
	}
	return nil
}

// stopAll ends every node: SIGTERM (a drain) when graceful, else SIGKILL.
func (c *cluster) stopAll(graceful bool) {
	var wg sync.WaitGroup
	for _, p := range c.nodes {
		wg.Go(func() { p.stop(graceful) })
	}
	wg.Wait()
}

func (p *proc) start(bin string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("start %s: already running", p.name)
	}
	if err := os.MkdirAll(p.dataDir, 0o700); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	fmt.Fprintf(logf, "=== chaos: start %s at %s\n", p.name, time.Now().UTC().Format(time.RFC3339Nano))
	args := []string{"netns", "exec", p.ns, bin, "node", "start", "--config", p.cfgPath,
		"--name", p.name, "--data-dir", p.dataDir,
		"--http-addr", fmt.Sprintf("%s:%d", p.ip, httpPort),
		"--gossip-addr", p.ip + ":7946", "--raft-addr", p.ip + ":7947", "--cache-addr", p.ip + ":3320"}
	for _, peer := range p.peers {
		args = append(args, "--join", peer)
	}
	// ip netns exec execs the binary in place: the pid is the node's.
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A suite killed by go test's timeout leaves no node behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// The scenario's config decides token and key, not the caller's environment.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHOAL_ADMIN_TOKEN=") && !strings.HasPrefix(kv, "SHOAL_GOSSIP_KEY=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("signal %s: not running", p.name)
	}
	return p.cmd.Process.Signal(sig)
}

// stop ends the process and waits for it; a drain that outlasts 15 s is
// cut short with SIGKILL.
func (p *proc) stop(graceful bool) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	if graceful {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	} else {
		_ = cmd.Process.Kill()
		<-done
	}
	p.mu.Lock()
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
}

func (p *proc) url(path string) string { return fmt.Sprintf("http://%s:%d%s", p.ip, httpPort, path) }

// healthReport is the part of /health the suite reads.
type healthReport struct {
	Status     string `json:"status"`
	Node       string `json:"node"`
	Components map[string]struct {
		Status string         `json:"status"`
		Detail string         `json:"detail"`
		Data   map[string]any `json:"data"`
	} `json:"components"`
}

func (h healthReport) leader() (string, bool) {
	r := h.Components["raft"].Data
	l, _ := r["leader"].(string)
	is, _ := r["is_leader"].(bool)
	return l, is
}

func (h healthReport) num(comp, key string) int {
	f, _ := h.Components[comp].Data[key].(float64)
	return int(f)
}

var healthClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableKeepAlives: true}}

func getHealth(ctx context.Context, p *proc) (healthReport, error) {
	var h healthReport
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url("/health"), nil)
	if err != nil {
		return h, err
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return h, fmt.Errorf("health %s: %w", p.name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return h, fmt.Errorf("health %s: %w", p.name, err)
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return h, fmt.Errorf("health %s: %w", p.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return h, fmt.Errorf("health %s: status %d", p.name, resp.StatusCode)
	}
	return h, nil
}

// fullHealth reports whether every node is up and whole: 200 and "ok",
// every member alive in gossip, the same Raft leader everywhere, and the
// Olric cache ok with every node a member. The reason names what is not.
func (c *cluster) fullHealth(ctx context.Context) (bool, string) {
	n := len(c.nodes)
	var reasons []string
	leaders := map[string]bool{}
	for _, p := range c.nodes {
		h, err := getHealth(ctx, p)
		if err != nil {
			reasons = append(reasons, err.Error())
			continue
		}
		l, _ := h.leader()
		leaders[l] = true
		if l == "" {
			reasons = append(reasons, p.name+": no raft leader")
		}
		if a := h.num("gossip", "alive"); a != n {
			reasons = append(reasons, fmt.Sprintf("%s: gossip alive %d/%d", p.name, a, n))
		}
		cache := h.Components["cache"]
		if cache.Status != "ok" || h.num("cache", "members") != n {
			reasons = append(reasons, fmt.Sprintf("%s: cache %s members %d/%d %s", p.name, cache.Status, h.num("cache", "members"), n, cache.Detail))
		}
		if h.Status != "ok" {
			var bad []string
			for name, comp := range h.Components {
				if comp.Status != "ok" {
					bad = append(bad, name+"="+comp.Status)
				}
			}
			sort.Strings(bad)
			reasons = append(reasons, fmt.Sprintf("%s: status %s (%s)", p.name, h.Status, strings.Join(bad, ",")))
		}
	}
	if len(leaders) > 1 {
		reasons = append(reasons, fmt.Sprintf("leaders disagree: %v", leaders))
	}
	return len(reasons) == 0, strings.Join(reasons, "; ")
}

var errNotHealthy = errors.New("not fully healthy")

// waitFullHealth polls until fullHealth holds, and says how long it took.
func (c *cluster) waitFullHealth(ctx context.Context, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	last := ""
	for {
		ok, reason := c.fullHealth(ctx)
		if ok {
			return time.Since(start), nil
		}
		if ctx.Err() == nil || last == "" {
			last = reason // a probe cut short by the deadline says nothing about the node
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("%w after %s: %s", errNotHealthy, limit, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// leader finds the node that says it leads, among the running ones,
// asking again for up to 10 s (a loaded node can miss a probe's deadline).
func (c *cluster) leader(ctx context.Context) (*proc, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, p := range c.nodes {
			if !p.running() {
				continue
			}
			if h, err := getHealth(ctx, p); err == nil {
				if _, is := h.leader(); is {
					return p, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, errors.New("no node says it leads (10s)")
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

// logTail returns the warnings and errors of a node's log, last n lines.
func logTail(p *proc, n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	var keep []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.HasPrefix(line, "=== chaos") || strings.Contains(line, "panic") {
			keep = append(keep, line)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}
