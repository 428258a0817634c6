// Command gatewaybench measures what shoal's request path costs next to
// plain proxies, in one run on one machine: wrk drives nginx (a zero-cost
// upstream answering a fixed chat completion) directly, through HAProxy,
// through a bare Go httputil.ReverseProxy, and through shoal (pass-through
// to nginx, a zero-cost sim model, a cache hit on the local and on the
// default Olric cache backend, the latter with and without its near cache,
// one forwarding hop). The
// targets are measured in interleaved rounds so drift on a shared machine
// spreads over all of them, and it prints one table. Tools that are absent
// are skipped with a message. Run it with `make bench-gateway`.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// answer is the fixed chat completion nginx returns.
const answer = `{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop","logprobs":null}],` +
	`"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}`

const noCache = "no-cache, no-store"

// benchToken is the bench nodes' admin token, for /debug/pprof.
const benchToken = "gatewaybench-admin-token"

type options struct {
	shoal    string
	shoalFC  string
	duration time.Duration
	warmup   time.Duration
	rounds   int
	conns    int
	threads  int
	keep     bool
	only     string
	profile  string
	openRate float64
}

func main() {
	var o options
	flag.StringVar(&o.shoal, "shoal", "bin/shoal", "shoal binary to measure")
	flag.StringVar(&o.shoalFC, "shoal-fastclient", "", "a shoal binary built with -tags shoal_fasthttp (the openai backend's fasthttp upstream client prototype); its pass-through is measured on a third node")
	flag.DurationVar(&o.duration, "duration", 4*time.Second, "measured time per target and round")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load per target before its first round")
	flag.IntVar(&o.rounds, "rounds", 3, "interleaved rounds; the table shows each target's median round")
	flag.IntVar(&o.conns, "connections", 32, "wrk connections")
	flag.IntVar(&o.threads, "threads", 1, "wrk threads")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs and logs)")
	flag.StringVar(&o.only, "only", "", "measure only the paths whose name contains this (comma-separated alternatives: \"HAProxy,cache hit\")")
	flag.StringVar(&o.profile, "profile", "", "write a CPU profile of the shoal node under each shoal path's first round into this directory")
	flag.Float64Var(&o.openRate, "open-loop-rate", 0, "instead of the wrk table: open-loop latency at this many requests/s (shoal bench --rate) of a bare net/http server and shoal's zero-cost sim model, and the p99 shoal adds")
	flag.Parse()
	runner := run
	if o.openRate > 0 {
		runner = openLoop
	}
	if err := runner(o); err != nil {
		fmt.Fprintln(os.Stderr, "gatewaybench:", err)
		os.Exit(1)
	}
}

// target is one measured path.
type target struct {
	name    string
	url     string
	body    string
	headers map[string]string
	skip    string // why it is not measured, if it is not
	node    string // the shoal node wrk drives, for -profile
	// cpuOf are the process groups doing this path's work, not counting
	// nginx behind a proxy; 0 is this process (the in-process servers).
	cpuOf   []int
	results []result
}

// result is one wrk run's summary.
type result struct {
	rps      float64
	p50, p99 time.Duration
	errors   int
	requests int64
	// cpuPerReq is the CPU time cpuOf spent per answered request.
	cpuPerReq time.Duration
}

type procs struct {
	dir  string
	cmds []*exec.Cmd
}

func (p *procs) start(name string, args ...string) error {
	out, err := os.Create(filepath.Join(p.dir, filepath.Base(name)+"-"+strconv.Itoa(len(p.cmds))+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so stopping it takes its workers too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p.cmds = append(p.cmds, cmd)
	return nil
}

// last is the process group of the process started last.
func (p *procs) last() int { return p.cmds[len(p.cmds)-1].Process.Pid }

func (p *procs) stop() {
	for _, c := range p.cmds {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	}
	for _, c := range p.cmds {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
}

func run(o options) error {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		fmt.Println("skip: wrk is not installed (apt-get install -y wrk); nothing to measure with")
		return nil
	}
	dir, p, done, err := workDir(o, "gatewaybench-")
	if err != nil {
		return err
	}
	defer done()

	chat := func(model string) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16,"temperature":0}`
	}
	var targets []*target
	add := func(t *target) { targets = append(targets, t) }

	nginxURL, err := startNginx(p, dir)
	direct := &target{name: "wrk -> nginx (direct)", url: nginxURL + "/v1/chat/completions", body: chat("bench")}
	if err != nil {
		fmt.Println("skip nginx:", err)
		direct.skip = err.Error()
		nginxURL = ""
	} else {
		direct.cpuOf = []int{p.last()}
	}
	add(direct)

	hap := &target{name: "HAProxy -> nginx", body: chat("bench")}
	if nginxURL == "" {
		hap.skip = "no nginx"
	} else if u, err := startHAProxy(p, dir, nginxURL); err != nil {
		fmt.Println("skip haproxy:", err)
		hap.skip = err.Error()
	} else {
		hap.url = u + "/v1/chat/completions"
		hap.cpuOf = []int{p.last()}
	}
	add(hap)

	goproxy := &target{name: "Go httputil.ReverseProxy -> nginx", body: chat("bench")}
	if nginxURL == "" {
		goproxy.skip = "no nginx"
	} else if u, stop, err := startGoProxy(nginxURL); err != nil {
		goproxy.skip = err.Error()
	} else {
		defer stop()
		goproxy.url = u + "/v1/chat/completions"
		goproxy.cpuOf = []int{0}
	}
	add(goproxy)

	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	proxyRow := func(name string, start func(string, int) (string, func(), error)) {
		if nginxURL == "" {
			add(&target{name: name, skip: "no nginx"})
			return
		}
		add(stackTarget(name, chat("bench"), func() (string, func(), error) { return start(nginxURL, o.conns) }, &stops))
	}
	proxyRow("tuned net/http proxy -> nginx", startTunedGoProxy)
	proxyRow("fasthttp proxy -> nginx", startFastProxy)

	pass := &target{name: "shoal pass-through (openai -> nginx, no-store)", body: chat("upstream"), headers: map[string]string{"Cache-Control": noCache}}
	sim := &target{name: "shoal, zero-cost sim model (no-store)", body: chat("sim0"), headers: map[string]string{"Cache-Control": noCache}}
	hit := &target{name: "shoal, cache hit", body: chat("sim0")}
	hop := &target{name: "shoal, sim model, one forwarding hop (2 nodes)", body: chat("sim0"), headers: map[string]string{"Cache-Control": noCache}}
	if _, err := os.Stat(o.shoal); err != nil {
		msg := fmt.Sprintf("no shoal binary at %s (make build)", o.shoal)
		fmt.Println("skip shoal:", msg)
		for _, t := range []*target{pass, sim, hit, hop} {
			t.skip = msg
		}
	} else {
		n := len(p.cmds)
		a, b, err := startShoal(p, dir, o.shoal, nginxURL)
		if err != nil {
			return fmt.Errorf("shoal: %w (logs in %s; -keep keeps them)", err, dir)
		}
		pa, pb := p.cmds[n].Process.Pid, p.cmds[n+1].Process.Pid
		pass.cpuOf, sim.cpuOf, hit.cpuOf, hop.cpuOf = []int{pa}, []int{pa}, []int{pa}, []int{pa, pb}
		pass.url, sim.url, hit.url, hop.url = a+"/v1/chat/completions", a+"/v1/chat/completions", a+"/v1/chat/completions", b+"/v1/chat/completions"
		pass.node, sim.node, hit.node, hop.node = a, a, a, b
		if nginxURL == "" {
			pass.skip = "no nginx"
		}
	}
	add(pass)
	if o.shoalFC != "" {
		fc := &target{name: "shoal pass-through, fasthttp upstream client", body: chat("upstream"), headers: map[string]string{"Cache-Control": noCache}}
		switch {
		case nginxURL == "":
			fc.skip = "no nginx"
		case pass.skip != "":
			fc.skip = pass.skip
		default:
			u, err := startShoalAlone(p, dir, o.shoalFC, nginxURL)
			if err != nil {
				return fmt.Errorf("shoal (fasthttp client): %w (logs in %s; -keep keeps them)", err, dir)
			}
			fc.url, fc.node, fc.cpuOf = u+"/v1/chat/completions", u, []int{p.last()}
		}
		add(fc)
	}
	add(sim)
	add(hit)
	// The default cache backend: a hit is an Olric get (owned here, but
	// bounded against a frozen owner), as users run it.
	// Its near cache (cache.near_ttl) answers a hot key from memory; without
	// it every hit is an Olric get. The GC heap floor (gc.heap_floor_bytes)
	// spares a node with a small live heap dozens of collections a second;
	// the last row shows the default without it.
	for _, v := range []struct{ name, node, near, extra string }{
		{"shoal, cache hit, Olric cache (default, near cache 1s)", "bench-olric", "", ""},
		{"shoal, cache hit, Olric cache, near cache off", "bench-olric-far", "0s", ""},
		{"shoal, cache hit, Olric cache, GC heap floor off", "bench-olric-gc", "", "gc { heap_floor_bytes = 0 }\n"},
	} {
		olricHit := &target{name: v.name, body: chat("sim0")}
		if hit.skip != "" {
			olricHit.skip = hit.skip
		} else if u, err := startShoalOlric(p, dir, o.shoal, v.node, v.near, v.extra); err != nil {
			return fmt.Errorf("shoal (olric cache): %w (logs in %s; -keep keeps them)", err, dir)
		} else {
			olricHit.url, olricHit.node, olricHit.cpuOf = u+"/v1/chat/completions", u, []int{p.last()}
		}
		add(olricHit)
	}
	add(stackTarget("cache-hit ceiling: net/http server, fixed answer", chat("sim0"), startNetFixed, &stops))
	add(stackTarget("cache-hit ceiling: net/http server, fixed answer and shoal's headers", chat("sim0"), startNetFixedHeaders, &stops))
	add(stackTarget("cache-hit ceiling: fasthttp server, fixed answer", chat("sim0"), startFastFixed, &stops))
	add(stackTarget("cache-hit ceiling: fasthttp server, net/http handler (fasthttpadaptor)", chat("sim0"), startAdaptorFixed, &stops))
	add(hop)

	for _, t := range targets {
		if o.only != "" && !containsAny(t.name, o.only) && t.skip == "" {
			t.skip = "not in -only"
		}
		if t.skip != "" {
			continue
		}
		if err := probe(t); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if o.warmup > 0 {
			if _, err := runWrk(wrk, dir, t, o, o.warmup); err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
		}
	}
	for round := 0; round < o.rounds; round++ {
		for _, t := range targets {
			if t.skip != "" {
				continue
			}
			var prof chan error
			if o.profile != "" && round == 0 && t.node != "" {
				prof = make(chan error, 1)
				go func() { prof <- cpuProfile(t.node, t.name, o, 0) }()
			}
			r, err := runWrk(wrk, dir, t, o, o.duration)
			if prof != nil {
				if perr := <-prof; perr != nil {
					fmt.Fprintln(os.Stderr, "profile:", perr)
				}
			}
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			fmt.Fprintf(os.Stderr, "round %d  %-50s %9.0f req/s\n", round+1, t.name, r.rps)
			t.results = append(t.results, r)
		}
	}
	printTable(os.Stdout, targets, o)
	return nil
}

// workDir makes the run's temporary directory (kept with -keep) and the
// process set started in it; done stops the processes and, without -keep,
// removes the directory.
func workDir(o options, prefix string) (string, *procs, func(), error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, nil, err
	}
	if o.keep {
		fmt.Println("temporary directory:", dir)
	}
	p := &procs{dir: dir}
	return dir, p, func() {
		p.stop()
		if !o.keep {
			os.RemoveAll(dir)
		}
	}, nil
}

// median is the round with the median throughput.
func (t *target) median() result {
	rs := slices.Clone(t.results)
	slices.SortFunc(rs, func(a, b result) int {
		switch {
		case a.rps < b.rps:
			return -1
		case a.rps > b.rps:
			return 1
		}
		return 0
	})
	return rs[len(rs)/2]
}

// medianCPU is the median CPU time per request over the rounds (zero when
// it was not measured).
func (t *target) medianCPU() time.Duration {
	cs := make([]time.Duration, 0, len(t.results))
	for _, r := range t.results {
		cs = append(cs, r.cpuPerReq)
	}
	slices.Sort(cs)
	if len(cs) == 0 {
		return 0
	}
	return cs[len(cs)/2]
}

func printTable(w io.Writer, targets []*target, o options) {
	ref := func(prefix string) float64 {
		for _, t := range targets {
			if strings.HasPrefix(t.name, prefix) && len(t.results) > 0 {
				return t.median().rps
			}
		}
		return 0
	}
	hap, gop := ref("HAProxy"), ref("Go httputil")
	var hapCPU time.Duration
	for _, t := range targets {
		if strings.HasPrefix(t.name, "HAProxy") && len(t.results) > 0 {
			hapCPU = t.medianCPU()
		}
	}
	fmt.Fprintf(w, "\nwrk -t%d -c%d, %s per round, %d interleaved rounds (median round shown; CPU/req: median over rounds of the\n"+
		"user+system time of the process doing the path's work, nginx not counted behind a proxy, both nodes for the hop)\n\n", o.threads, o.conns, o.duration, o.rounds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\treq/s\tp50\tp99\tvs Go proxy\tvs HAProxy\tCPU/req\tCPU/req vs HAProxy\terrors\t")
	ratio := func(v, base float64) string {
		if base == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", v/base)
	}
	for _, t := range targets {
		if len(t.results) == 0 {
			fmt.Fprintf(tw, "%s\tskipped: %s\t\t\t\t\t\t\t\t\n", t.name, t.skip)
			continue
		}
		m := t.median()
		cpu, cpuRatio := "-", "-"
		if c := t.medianCPU(); c > 0 {
			cpu = fmt.Sprintf("%.1f us", float64(c)/float64(time.Microsecond))
			cpuRatio = ratio(float64(c), float64(hapCPU))
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", t.name, m.rps, ms(m.p50), ms(m.p99), ratio(m.rps, gop), ratio(m.rps, hap), cpu, cpuRatio, m.errors)
	}
	_ = tw.Flush()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// freePort reserves a loopback port long enough to hand it to a process.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startNginx(p *procs, dir string) (string, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			return "", errors.New("nginx is not installed (apt-get install -y nginx)")
		}
		bin = "/usr/sbin/nginx"
	}
	port, err := freePort()
	if err != nil {
		return "", err
	}
	nd := filepath.Join(dir, "nginx")
	if err := os.MkdirAll(nd, 0o755); err != nil {
		return "", err
	}
	conf := fmt.Sprintf(`daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:%[2]d;
    location / {
      default_type application/json;
      return 200 '%[3]s';
    }
  }
}
`, nd, port, answer)
	path := filepath.Join(nd, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", err
	}
	if err := p.start(bin, "-e", filepath.Join(nd, "error.log"), "-p", nd, "-c", path); err != nil {
		return "", err
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", port)
	return u, waitHTTP(u+"/", 10*time.Second)
}

func startHAProxy(p *procs, dir, upstream string) (string, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr != nil {
			return "", errors.New("haproxy is not installed (apt-get install -y haproxy)")
		}
		bin = "/usr/sbin/haproxy"
	}
	port, err := freePort()
	if err != nil {
		return "", err
	}
	up := strings.TrimPrefix(upstream, "http://")
	conf := fmt.Sprintf(`global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:%d
  default_backend be
backend be
  server nginx %s
`, port, up)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", err
	}
	if err := p.start(bin, "-db", "-f", path); err != nil {
		return "", err
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", port)
	return u, waitHTTP(u+"/", 10*time.Second)
}

// startGoProxy serves a bare httputil.ReverseProxy in this process: the
// net/http floor on both sides with nothing else.
func startGoProxy(upstream string) (string, func(), error) {
	target, err := url.Parse(upstream)
	if err != nil {
		return "", nil, err
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}
	// wrk hangs up mid-request when a round ends; that is not news.
	rp.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Shutdown(context.Background()) }, nil
}

// shoalCommon is the configuration every bench node shares.
const shoalCommon = `
batching {
  max_size = 64
  flush_timeout = "0s"
  max_queue = 10000
}
rate_limit { rpm = 0 }
router { policy = "least-queued" }
`

func simModel(name string) string {
	return fmt.Sprintf(`
model %q {
  backend = "sim"
  max_concurrent_batches = 4
  sim {
    base = "0s"
    per_item = "0s"
    token_interval = "0s"
    default_max_tokens = 16
  }
}
`, name)
}

// upstreamModel is the pass-through model "upstream" to nginx. Chats never
// batch upstream: a batch of one, as many at once as the upstream pool
// allows.
func upstreamModel(nginxURL string) string {
	if nginxURL == "" {
		return ""
	}
	return fmt.Sprintf(`
model "upstream" {
  backend = "openai"
  max_size = 1
  max_concurrent_batches = 256
  openai {
    url = "%s/v1"
    model = "bench"
    max_conns = 256
  }
}
`, nginxURL)
}

// startShoalNode starts one node on four fresh ports serving models,
// joining join when set (else bootstrapping its own Raft), and returns its
// HTTP base URL and its gossip address.
func startShoalNode(p *procs, dir, bin, name, join, cacheBackend, models string, cacheLines ...string) (httpURL, gossip string, err error) {
	ports := make([]int, 4)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return "", "", err
		}
	}
	nd := filepath.Join(dir, name)
	if err := os.MkdirAll(nd, 0o755); err != nil {
		return "", "", err
	}
	joinLine := ""
	if join != "" {
		joinLine = fmt.Sprintf("join = [%q]\n", join)
	}
	conf := fmt.Sprintf(`node_name = %q
data_dir = %q
%s
admin { token = %q }
http { addr = "127.0.0.1:%d" }
gossip { addr = "127.0.0.1:%d" }
raft {
  addr = "127.0.0.1:%d"
  bootstrap_expect = 1
}
cache {
  addr = "127.0.0.1:%d"
  backend = %q
%s}
%s%s`, name, nd, joinLine, benchToken, ports[0], ports[1], ports[2], ports[3], cacheBackend, strings.Join(cacheLines, ""), shoalCommon, models)
	path := filepath.Join(nd, "shoal.hcl")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", "", err
	}
	// A joining node does not bootstrap a Raft of its own.
	args := []string{"node", "start", "--config", path, "--log-level", "warn"}
	if join != "" {
		args = append(args, "--bootstrap-expect", "0")
	}
	if err := p.start(bin, args...); err != nil {
		return "", "", err
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	if err := waitHealthy(u, 60*time.Second); err != nil {
		return "", "", err
	}
	return u, fmt.Sprintf("127.0.0.1:%d", ports[1]), nil
}

// startShoalAlone starts a single node of bin serving only the
// pass-through model.
func startShoalAlone(p *procs, dir, bin, nginxURL string) (string, error) {
	u, _, err := startShoalNode(p, dir, bin, "bench-fc", "", "local", upstreamModel(nginxURL))
	return u, err
}

// startShoalOlric starts a single node serving the zero-cost sim model
// with the default cache backend, Olric (the other nodes use the local
// backend, which has no Olric call on a hit), cache.near_ttl nearTTL
// ("" for the default) and the top-level configuration extra.
func startShoalOlric(p *procs, dir, bin, name, nearTTL, extra string) (string, error) {
	var lines []string
	if nearTTL != "" {
		lines = append(lines, fmt.Sprintf("  near_ttl = %q\n", nearTTL))
	}
	u, _, err := startShoalNode(p, dir, bin, name, "", "olric", extra+simModel("sim0"), lines...)
	return u, err
}

// startShoal starts a two-node cluster: a serves the pass-through model
// "upstream" (when there is an nginx) and the zero-cost sim model "sim0";
// b serves only a model nobody asks for, so b forwards every sim0 request
// to a.
func startShoal(p *procs, dir, bin, nginxURL string) (a, b string, err error) {
	a, gossip, err := startShoalNode(p, dir, bin, "bench-a", "", "local", upstreamModel(nginxURL)+simModel("sim0"))
	if err != nil {
		return "", "", err
	}
	if b, _, err = startShoalNode(p, dir, bin, "bench-b", gossip, "local", simModel("other")); err != nil {
		return "", "", err
	}
	// b serves sim0 by forwarding once it has learnt that a serves it.
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodPost, b+"/v1/chat/completions", strings.NewReader(`{"model":"sim0","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Cache-Control", noCache)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.HasPrefix(resp.Header.Get("X-Shoal-Route"), "forward") {
				return a, b, nil
			}
		}
		if time.Now().After(deadline) {
			return "", "", errors.New("node b never forwarded sim0 to node a")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func waitHTTP(u string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get(u)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not come up: %w", u, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitHealthy(u string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get(u + "/health")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy within %s", u, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probe sends the target's request once and wants a 200.
func probe(t *target) error {
	req, err := http.NewRequest(http.MethodPost, t.url, strings.NewReader(t.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range t.headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe: status %d: %s", resp.StatusCode, b)
	}
	return nil
}

func runWrk(wrk, dir string, t *target, o options, d time.Duration) (result, error) {
	var lua strings.Builder
	lua.WriteString("wrk.method = \"POST\"\n")
	fmt.Fprintf(&lua, "wrk.body = %s\n", strconv.Quote(t.body))
	lua.WriteString("wrk.headers[\"Content-Type\"] = \"application/json\"\n")
	for k, v := range t.headers {
		fmt.Fprintf(&lua, "wrk.headers[%s] = %s\n", strconv.Quote(k), strconv.Quote(v))
	}
	script := filepath.Join(dir, "post.lua")
	if err := os.WriteFile(script, []byte(lua.String()), 0o644); err != nil {
		return result{}, err
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	cpu0 := cpuTime(t.cpuOf)
	out, err := exec.Command(wrk, "-t"+strconv.Itoa(o.threads), "-c"+strconv.Itoa(o.conns), "-d"+strconv.Itoa(secs)+"s",
		"--latency", "-s", script, t.url).CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk: %w: %s", err, out)
	}
	cpu := cpuTime(t.cpuOf) - cpu0
	r, err := parseWrk(string(out))
	if err == nil && r.requests > 0 && len(t.cpuOf) > 0 {
		r.cpuPerReq = cpu / time.Duration(r.requests)
	}
	return r, err
}

var (
	rpsRe  = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	pctRe  = regexp.MustCompile(`^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)\s*$`)
	reqsRe = regexp.MustCompile(`(\d+) requests in `)
	errsRe = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	sockRe = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func parseWrk(out string) (result, error) {
	var r result
	m := rpsRe.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk output: %s", out)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := reqsRe.FindStringSubmatch(out); m != nil {
		r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		pm := pctRe.FindStringSubmatch(sc.Text())
		if pm == nil {
			continue
		}
		v, _ := strconv.ParseFloat(pm[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[pm[3]]
		d := time.Duration(v * float64(unit))
		if pm[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if m := errsRe.FindStringSubmatch(out); m != nil {
		r.errors, _ = strconv.Atoi(m[1])
	}
	if m := sockRe.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(s)
			r.errors += n
		}
	}
	return r, nil
}

// cpuProfile saves a CPU profile of the shoal node at nodeURL, taken
// after delay for most of one measured round, as name's profile.
func cpuProfile(nodeURL, name string, o options, delay time.Duration) error {
	time.Sleep(delay)
	secs := max(1, int(o.duration/time.Second)-1)
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", nodeURL, secs), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+benchToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d", req.URL, resp.StatusCode)
	}
	if err := os.MkdirAll(o.profile, 0o755); err != nil {
		return err
	}
	slug := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(name))
	f, err := os.Create(filepath.Join(o.profile, slug+".cpu.pb.gz"))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// containsAny reports whether name contains any of only's comma-separated
// alternatives.
func containsAny(name, only string) bool {
	for alt := range strings.SplitSeq(only, ",") {
		if alt != "" && strings.Contains(name, alt) {
			return true
		}
	}
	return false
}
