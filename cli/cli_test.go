package cli

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/node"
)

// The shoal binary, built once for the tests that run it as a process.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func shoalBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "shoal-cli-test-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "shoal")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/shoal-dev/shoal").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	require.NoError(t, binErr)
	return binPath
}

// parseStart parses `shoal node start` flags and layers the configuration
// exactly as the command does.
func parseStart(t *testing.T, args ...string) (node.Config, error) {
	t.Helper()
	cmd := newStartCmd()
	require.NoError(t, cmd.ParseFlags(args))
	fl := cmd.Flags()
	var f startFlags
	var err error
	for name, dst := range map[string]*string{
		"config": &f.config, "name": &f.name, "data-dir": &f.dataDir, "http-addr": &f.httpAddr,
		"gossip-addr": &f.gossipAddr, "raft-addr": &f.raftAddr, "cache-addr": &f.cacheAddr,
		"log-level": &f.logLevel, "log-format": &f.logFormat,
	} {
		*dst, err = fl.GetString(name)
		require.NoError(t, err)
	}
	f.join, err = fl.GetStringArray("join")
	require.NoError(t, err)
	f.bootstrapExpect, err = fl.GetInt("bootstrap-expect")
	require.NoError(t, err)
	f.dev, err = fl.GetBool("dev")
	require.NoError(t, err)
	cfg, err := loadConfig(cmd, &f)
	if cfg.Dev {
		t.Cleanup(func() { _ = os.RemoveAll(cfg.DataDir) })
	}
	return cfg, err
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

const precedenceHCL = `
node_name = "file-name"
data_dir  = "/tmp/from-file"
http { addr = "127.0.0.1:1111" }
raft { bootstrap_expect = 3 }
batching {
  max_size      = 8
  flush_timeout = "25ms"
}
rate_limit { rpm = 10 }
model "m" { backend = "sim" }
`

func TestConfigPrecedenceFlagEnvFileDefault(t *testing.T) {
	path := writeFile(t, "cluster.hcl", precedenceHCL)
	t.Setenv("BATCH_MAX_SIZE", "16")
	t.Setenv("RATE_LIMIT_RPM", "20")
	cfg, err := parseStart(t, "--config", path, "--name", "flag-name", "--http-addr", "127.0.0.1:2222", "--bootstrap-expect", "1")
	require.NoError(t, err)
	def := node.DefaultConfig()

	// flag over file
	require.Equal(t, "flag-name", cfg.NodeName)
	require.Equal(t, "127.0.0.1:2222", cfg.HTTP.Addr)
	require.Equal(t, 1, cfg.Raft.BootstrapExpect)
	// env over file
	require.Equal(t, 16, cfg.Batching.MaxSize)
	require.Equal(t, 20, cfg.RateLimit.RPM)
	// file over default
	require.Equal(t, "/tmp/from-file", cfg.DataDir)
	require.Equal(t, 25*time.Millisecond, cfg.Batching.FlushTimeout)
	// default where nobody spoke
	require.Equal(t, def.Batching.MaxQueue, cfg.Batching.MaxQueue)
	require.Equal(t, def.Gossip.Addr, cfg.Gossip.Addr)
	require.Equal(t, def.CircuitBreaker, cfg.CircuitBreaker)
}

func TestUnchangedFlagsDoNotOverride(t *testing.T) {
	path := writeFile(t, "cluster.hcl", precedenceHCL)
	cfg, err := parseStart(t, "--config", path)
	require.NoError(t, err)
	require.Equal(t, "file-name", cfg.NodeName)
	require.Equal(t, "127.0.0.1:1111", cfg.HTTP.Addr)
	require.Equal(t, 3, cfg.Raft.BootstrapExpect, "a flag's default never beats the file")
	require.Equal(t, 8, cfg.Batching.MaxSize)
}

func TestFlagsSetAddressesAndJoin(t *testing.T) {
	path := writeFile(t, "cluster.hcl", precedenceHCL)
	cfg, err := parseStart(t, "--config", path, "--data-dir", "/tmp/flag-dir",
		"--gossip-addr", "127.0.0.1:3333", "--raft-addr", "127.0.0.1:4444", "--cache-addr", "127.0.0.1:5555",
		"--join", "10.0.0.1:7946", "--join", "10.0.0.2:7946")
	require.NoError(t, err)
	require.Equal(t, "/tmp/flag-dir", cfg.DataDir)
	require.Equal(t, "127.0.0.1:3333", cfg.Gossip.Addr)
	require.Equal(t, "127.0.0.1:4444", cfg.Raft.Addr)
	require.Equal(t, "127.0.0.1:5555", cfg.Cache.Addr)
	require.Equal(t, []string{"10.0.0.1:7946", "10.0.0.2:7946"}, cfg.Join)
}

func TestDevNeedsNoConfigFile(t *testing.T) {
	cfg, err := parseStart(t, "--dev", "--gossip-addr", "127.0.0.1:0")
	require.NoError(t, err)
	require.True(t, cfg.Dev)
	require.Equal(t, 1, cfg.Raft.BootstrapExpect)
	require.NotEmpty(t, cfg.Models)
	require.DirExists(t, cfg.DataDir)
	require.Equal(t, "127.0.0.1:0", cfg.Gossip.Addr, "flags override the dev addresses")
	require.Equal(t, "127.0.0.1:7947", cfg.Raft.Addr)
}

// --dev serves an open admin API, so it listens on loopback only unless
// --http-addr says otherwise (as consul agent -dev does).
func TestDevBindsHTTPToLoopbackUnlessHTTPAddrSays(t *testing.T) {
	cfg, err := parseStart(t, "--dev")
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:8080", cfg.HTTP.Addr)
	cfg, err = parseStart(t, "--dev", "--http-addr", "0.0.0.0:9090")
	require.NoError(t, err)
	require.Equal(t, "0.0.0.0:9090", cfg.HTTP.Addr)
	require.Equal(t, "0.0.0.0:8080", node.DefaultConfig().HTTP.Addr, "without --dev the default stays")
}

// The README's `shoal bench --requests 1000` twice a minute fits a dev
// node's default per-client limit; a config file still sets its own.
func TestDevDefaultClientLimitFitsTheReadmeBench(t *testing.T) {
	cfg, err := parseStart(t, "--dev")
	require.NoError(t, err)
	require.GreaterOrEqual(t, cfg.RateLimit.RPM, 2000)
	cfg, err = parseStart(t, "--dev", "--config", writeFile(t, "rl.hcl", "rate_limit {\n  rpm = 50\n}\n"))
	require.NoError(t, err)
	require.Equal(t, 50, cfg.RateLimit.RPM)
}

func TestLoadConfigErrorsAreConfigErrors(t *testing.T) {
	t.Setenv("BATCH_FLUSH_TIMEOUT_MS", "soon")
	_, err := parseStart(t, "--dev")
	var ce *node.ConfigError
	require.True(t, errors.As(err, &ce), "got %T: %v", err, err)
	require.ErrorContains(t, err, "BATCH_FLUSH_TIMEOUT_MS")

	t.Setenv("BATCH_FLUSH_TIMEOUT_MS", "5")
	_, err = parseStart(t, "--name", "has space", "--dev")
	require.True(t, errors.As(err, &ce))
	require.ErrorContains(t, err, "node_name")
}

// runShoal runs the binary to completion and returns its exit status and
// standard error.
func runShoal(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(shoalBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stderr.String()
	}
	require.NoError(t, err)
	return 0, stderr.String()
}

func TestConfigErrorsExitWithStatus2(t *testing.T) {
	bad := writeFile(t, "bad.hcl", "node_name = \"x\"\nbatching {\n  flush_timeout = \"fast\"\n}\n")
	unknown := writeFile(t, "unknown.hcl", "node_name = \"x\"\nhttp { adress = \"0.0.0.0:1\" }\n")
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"bad duration", nil, []string{"node", "start", "--config", bad}, []string{"batching.flush_timeout", "bad.hcl:3"}},
		{"unknown key", nil, []string{"node", "start", "--config", unknown}, []string{"adress", "unknown.hcl:2"}},
		{"missing file", nil, []string{"node", "start", "--config", filepath.Join(t.TempDir(), "nope.hcl")}, []string{"nope.hcl"}},
		{"bad env", []string{"BATCH_MAX_SIZE=many"}, []string{"node", "start", "--dev"}, []string{"BATCH_MAX_SIZE"}},
		{"invalid value", nil, []string{"node", "start", "--dev", "--http-addr", "nowhere"}, []string{"http.addr"}},
		{"unknown flag", nil, []string{"node", "start", "--bogus"}, []string{"bogus"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := runShoal(t, tc.env, tc.args...)
			require.Equal(t, 2, code, "stderr: %s", stderr)
			for _, w := range tc.want {
				require.Contains(t, stderr, w)
			}
		})
	}
}

// syncBuffer collects a process's output while a reader scans it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var startedLine = regexp.MustCompile(`msg="node started".* http=(\S+)`)

// process is a shoal node running as its own process.
type process struct {
	cmd    *exec.Cmd
	exited chan error
	logs   *syncBuffer
	addr   string // its HTTP address
}

// startProcess runs `shoal node start` with args and every port picked by
// the kernel, and returns once the node serves; the test's end kills it.
func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	args = append([]string{"node", "start"}, args...)
	args = append(args, "--http-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--cache-addr", "127.0.0.1:0")
	cmd := exec.Command(shoalBinary(t), args...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &process{cmd: cmd, exited: make(chan error, 1), logs: &syncBuffer{}}
	addrs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(io.TeeReader(stderr, p.logs))
		for sc.Scan() {
			if m := startedLine.FindStringSubmatch(sc.Text()); m != nil {
				addrs <- m[1]
			}
		}
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	select {
	case p.addr = <-addrs:
	case err := <-p.exited:
		t.Fatalf("shoal exited before serving: %v\n%s", err, p.logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("shoal did not start\n%s", p.logs.String())
	}
	return p
}

// metric reads one unlabelled sample from a node's /metrics.
func metric(t *testing.T, addr, name string) (float64, bool) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

// TestGCHeapFloorAsUsersRunIt starts the binary as users do, with only a
// sim model (a few MiB live): by default the collector's goal is raised to
// the 64 MiB floor, and gc.heap_floor_bytes = 0 leaves GOGC's own percent.
func TestGCHeapFloorAsUsersRunIt(t *testing.T) {
	models := `model "m" { backend = "sim" }
`
	for _, tc := range []struct {
		name, conf string
		raised     bool
	}{
		{"default", models, true},
		{"off", models + "gc { heap_floor_bytes = 0 }\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := startProcess(t, "--dev", "--config", writeFile(t, "gc.hcl", tc.conf), "--name", "gc-"+tc.name)
			var percent, goal float64
			// Requests make garbage until a collection has ended and the
			// floor has set the percent after it.
			require.Eventually(t, func() bool {
				resp, err := http.Post("http://"+n.addr+"/v1/completions", "application/json",
					strings.NewReader(`{"model":"m","prompt":"garbage","max_tokens":2}`))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				var ok1, ok2 bool
				percent, ok1 = metric(t, n.addr, "go_gc_gogc_percent")
				goal, ok2 = metric(t, n.addr, "go_memstats_next_gc_bytes")
				if !ok1 || !ok2 {
					return false
				}
				if !tc.raised {
					return true
				}
				return percent > 100
			}, 30*time.Second, 20*time.Millisecond, "percent %v, goal %v\n%s", percent, goal, n.logs.String())
			if tc.raised {
				require.GreaterOrEqual(t, goal, float64(64<<20), "the next collection waits for the floor")
				require.Contains(t, n.logs.String(), "gc heap floor")
			} else {
				require.Equal(t, 100.0, percent)
				require.NotContains(t, n.logs.String(), "gc heap floor")
			}
		})
	}
}

func TestSIGTERMDrainsInFlightRequestAndExits0(t *testing.T) {
	// A dev node whose only model takes 1.5s a batch, so a request is
	// surely in flight when the signal comes. Every port is picked by the
	// kernel.
	cfgPath := writeFile(t, "slow.hcl", `model "slow" {
  backend = "sim"
  sim {
    base           = "1500ms"
    per_item       = "0s"
    token_interval = "0s"
  }
}
`)
	n := startProcess(t, "--dev", "--config", cfgPath, "--name", "sigterm-node")
	cmd, exited, logs, addr := n.cmd, n.exited, n.logs, n.addr

	type result struct {
		status int
		body   string
		err    error
	}
	answered := make(chan result, 1)
	go func() {
		c := &http.Client{Timeout: 60 * time.Second}
		resp, err := c.Post("http://"+addr+"/v1/completions", "application/json", strings.NewReader(`{"model":"slow","prompt":"finish me","max_tokens":3}`))
		if err != nil {
			answered <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answered <- result{status: resp.StatusCode, body: string(b)}
	}()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `inference_active_batches{model="slow"} 1`)
	}, 30*time.Second, 5*time.Millisecond, "request in flight")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case r := <-answered:
		require.NoError(t, r.err)
		require.Equal(t, http.StatusOK, r.status, "the in-flight request finished: %s", r.body)
		require.Contains(t, r.body, `"text_completion"`)
	case <-time.After(60 * time.Second):
		t.Fatalf("in-flight request not answered\n%s", logs.String())
	}
	select {
	case err := <-exited:
		require.NoError(t, err, "exit status 0 after draining\n%s", logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("shoal did not exit after SIGTERM\n%s", logs.String())
	}
	require.Contains(t, logs.String(), "draining")
	_, err := http.Get("http://" + addr + "/health")
	require.Error(t, err, "the port is closed after exit")
}
