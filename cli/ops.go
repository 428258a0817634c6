package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shoal-dev/shoal/ops/bench"
	"github.com/shoal-dev/shoal/ops/top"
	"github.com/shoal-dev/shoal/ops/tune"
)

// loadFlags are the load-shaping flags bench and tune share.
type loadFlags struct {
	url         string
	model       string
	endpoint    string
	stream      bool
	concurrency int
	rate        float64
	maxTokens   int
	apiKey      string
	headers     []string
	prompts     string
	repeatRatio float64
	timeout     time.Duration
}

func (f *loadFlags) register(cmd *cobra.Command, defaultConcurrency int) {
	fl := cmd.Flags()
	nodeFlag(cmd, false, &f.url, "HTTP address of a shoal node (or any OpenAI-compatible server)")
	fl.StringVar(&f.endpoint, "endpoint", "chat", "API to drive: chat, completions or infer")
	fl.BoolVar(&f.stream, "stream", false, "stream responses (measures time to first token and inter-token latency)")
	fl.IntVar(&f.concurrency, "concurrency", defaultConcurrency, "closed loop: requests in flight, each worker sends when its last answer arrives")
	fl.Float64Var(&f.rate, "rate", 0, "open loop: send this many requests per second whatever the server does (latency counts from the scheduled send)")
	fl.IntVar(&f.maxTokens, "max-tokens", 16, "max_tokens of each request")
	fl.StringVar(&f.apiKey, "api-key", os.Getenv("SHOAL_API_KEY"), "client API key sent as a bearer token (default $SHOAL_API_KEY)")
	fl.StringArrayVar(&f.headers, "header", nil, "extra request header 'Name: value' (repeatable)")
	fl.StringVar(&f.prompts, "prompts", "", `JSONL file of prompts, one {"prompt": "..."} or {"messages": [...]} per line (default: generated, unique per run)`)
	fl.Float64Var(&f.repeatRatio, "repeat-ratio", 0, "share of requests (0..1) that repeat an earlier prompt, to exercise the response cache")
	fl.DurationVar(&f.timeout, "timeout", 30*time.Second, "per-request timeout, streaming included")
}

// config turns the flags into a bench configuration.
func (f *loadFlags) config(cmd *cobra.Command) (bench.Config, error) {
	if cmd.Flags().Changed("rate") && cmd.Flags().Changed("concurrency") {
		return bench.Config{}, usageError{errors.New("--rate (open loop) and --concurrency (closed loop) exclude each other")}
	}
	ep, err := bench.ParseEndpoint(f.endpoint)
	if err != nil {
		return bench.Config{}, usageError{fmt.Errorf("--endpoint: %w", err)}
	}
	headers := http.Header{}
	for _, h := range f.headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return bench.Config{}, usageError{fmt.Errorf("--header %q: want 'Name: value'", h)}
		}
		headers.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	cfg := bench.Config{
		URL: withScheme(f.url), Model: f.model, Endpoint: ep, Stream: f.stream, Concurrency: f.concurrency, Rate: f.rate,
		MaxTokens: f.maxTokens, APIKey: f.apiKey, Headers: headers, RepeatRatio: f.repeatRatio, Timeout: f.timeout,
	}
	if f.prompts != "" {
		file, err := os.Open(f.prompts)
		if err != nil {
			return cfg, fmt.Errorf("--prompts: %w", err)
		}
		defer file.Close()
		cfg.Prompts, err = bench.ReadPrompts(file)
		if err != nil {
			return cfg, fmt.Errorf("--prompts %s: %w", f.prompts, err)
		}
	}
	return cfg, nil
}

type benchFlags struct {
	load      loadFlags
	requests  int
	duration  time.Duration
	warmup    time.Duration
	maxFlight int
	seed      uint64
	jsonOut   string
	plotOut   string
	failOnSLO bool
	quiet     bool
}

func newBenchCmd() *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark a node: throughput, latency percentiles, TTFT, cache hits, per-node share and the SLO table",
		Long: `bench sends load to a node and reports requests/s, p50/p95/p99/max latency (HDR
histogram), errors by status, time to first token and inter-token latency
with --stream, the cache hit ratio (X-Shoal-Cache), the share served by each
node (X-Shoal-Node), and the SLO table of the performance guide.

Closed loop (--concurrency N) keeps N requests in flight. Open loop (--rate R)
sends R requests per second on a fixed schedule and measures latency from the
scheduled send time, so a slow server cannot hide its latency by slowing the
client down.`,
		Example: `  shoal bench --node http://localhost:8080 --requests 1000 --concurrency 50
  shoal bench --rate 200 --duration 30s --stream --json out.json --plot latency.png
  shoal bench --repeat-ratio 0.6 --fail-on-slo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBench(cmd, &f) },
	}
	f.load.register(cmd, 10)
	fl := cmd.Flags()
	fl.StringVar(&f.load.model, "model", "", "model to request (default: the first of GET /v1/models)")
	fl.IntVar(&f.requests, "requests", 1000, "measured requests (with --duration, whichever ends first)")
	fl.DurationVar(&f.duration, "duration", 0, "measure for this long (alone: no request limit)")
	fl.DurationVar(&f.warmup, "warmup", 0, "run the same load this long first and discard it")
	fl.IntVar(&f.maxFlight, "max-in-flight", 0, "open loop: most requests outstanding; sends over it are dropped and counted (default: rate x timeout, 100..10000)")
	fl.Uint64Var(&f.seed, "seed", 0, "seed of prompt selection (default random)")
	fl.StringVar(&f.jsonOut, "json", "", "write the report as JSON to this file ('-' for stdout)")
	fl.StringVar(&f.plotOut, "plot", "", "write a PNG of latency over time and the latency CDF to this file")
	fl.BoolVar(&f.failOnSLO, "fail-on-slo", false, "exit with status 1 when an SLO row is FAIL (past its critical threshold)")
	fl.BoolVar(&f.quiet, "quiet", false, "no progress output")
	return cmd
}

func runBench(cmd *cobra.Command, f *benchFlags) error {
	cfg, err := f.load.config(cmd)
	if err != nil {
		return err
	}
	cfg.Requests, cfg.Duration, cfg.Warmup, cfg.MaxInFlight, cfg.Seed = f.requests, f.duration, f.warmup, f.maxFlight, f.seed
	if cmd.Flags().Changed("duration") && !cmd.Flags().Changed("requests") {
		cfg.Requests = 0
	}
	if strings.HasSuffix(f.plotOut, "/") {
		return usageError{fmt.Errorf("--plot %q: want a file name", f.plotOut)}
	}
	stderr := cmd.ErrOrStderr()
	var prog *progress
	if !f.quiet {
		prog = newProgress(stderr)
		cfg.Progress = prog.update
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, runErr := bench.Run(ctx, cfg)
	if prog != nil {
		prog.finish()
	}
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return runErr
	}
	text := cmd.OutOrStdout()
	if f.jsonOut == "-" {
		text = stderr
	}
	if err := bench.WriteText(text, rep); err != nil {
		return err
	}
	if f.jsonOut != "" {
		if err := writeOut(cmd, f.jsonOut, func(w io.Writer) error { return bench.WriteJSON(w, rep) }); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
	}
	if f.plotOut != "" {
		if err := writeOut(cmd, f.plotOut, func(w io.Writer) error { return bench.WritePlot(w, rep) }); err != nil {
			return fmt.Errorf("--plot: %w", err)
		}
		fmt.Fprintf(stderr, "plot written to %s\n", f.plotOut)
	}
	if runErr != nil {
		return fmt.Errorf("interrupted: the report covers the requests that finished")
	}
	if f.failOnSLO && bench.Worst(rep.SLO) == bench.StatusFail {
		var failed []string
		for _, s := range rep.SLO {
			if s.Status == bench.StatusFail {
				failed = append(failed, fmt.Sprintf("%s %s (critical %s)", s.Name, s.Display, s.Critical))
			}
		}
		return fmt.Errorf("SLO failed: %s", strings.Join(failed, "; "))
	}
	return nil
}

// writeOut writes to path, or stdout for "-", replacing the file only
// when the whole content was written.
func writeOut(cmd *cobra.Command, path string, write func(io.Writer) error) error {
	if path == "-" {
		return write(cmd.OutOrStdout())
	}
	tmp := path + ".tmp"
	file, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := write(file); err != nil {
		file.Close()
		os.Remove(tmp)
		return err
	}
	if err := file.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// progress shows a bar on a terminal and a line every few seconds
// elsewhere (CI logs).
type progress struct {
	w        io.Writer
	tty      bool
	bar      *progressbar.ProgressBar
	warmup   bool
	lastLine time.Time
}

func newProgress(w io.Writer) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progress{w: w, tty: tty}
}

func (p *progress) update(s bench.Progress) {
	phase := "measuring"
	if s.Warmup {
		phase = "warming up"
	}
	if !p.tty {
		if time.Since(p.lastLine) >= 2*time.Second || (p.warmup != s.Warmup) {
			fmt.Fprintf(p.w, "bench: %s: %d done, %d errors, %.1fs\n", phase, s.Done, s.Errors, s.Elapsed.Seconds())
			p.lastLine = time.Now()
		}
		p.warmup = s.Warmup
		return
	}
	if p.bar == nil || p.warmup != s.Warmup {
		p.finish()
		p.warmup = s.Warmup
		total, unit := s.Total, "req"
		if total == 0 {
			total, unit = s.Duration.Milliseconds(), "ms"
		}
		p.bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(p.w), progressbar.OptionSetDescription(phase),
			progressbar.OptionShowCount(), progressbar.OptionSetItsString(unit), progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(), progressbar.OptionSetPredictTime(true))
	}
	v := s.Done
	if s.Total == 0 {
		v = min(s.Elapsed.Milliseconds(), s.Duration.Milliseconds())
	}
	_ = p.bar.Set64(v)
	if s.Errors > 0 {
		p.bar.Describe(fmt.Sprintf("%s (%d errors)", phase, s.Errors))
	}
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	}
}

type tuneFlags struct {
	load       loadFlags
	token      string
	models     []string
	p95        time.Duration
	maxErrors  float64
	dryRun     bool
	step       time.Duration
	stepWarmup time.Duration
	sizes      []int
	flushes    []time.Duration
	exhaustive bool
	jsonOut    string
}

func newTuneCmd() *cobra.Command {
	var f tuneFlags
	cmd := &cobra.Command{
		Use:   "tune",
		Short: "Search batching settings per model for the most throughput with p95 under a target, and apply the winner",
		Long: `tune reads the node's metrics, health and breakers and prints the performance
guide's advice for any symptom, then for each model measures batching settings
(max batch size x flush timeout) with short benchmark runs at the load you
name, applying each through PUT /admin/v1/batching. It tries every size at the
shortest flush timeout, then every flush timeout at the best sizes
(--exhaustive: the whole grid), prints what it tried, and applies the setting
with the most throughput whose p95 stays under --p95 (with --dry-run it only
recommends and restores the original settings). An interrupted search
restores the original settings too.`,
		Example: `  shoal tune --node http://localhost:8080 --token $SHOAL_ADMIN_TOKEN --concurrency 64
  shoal tune --rate 200 --p95 250ms --model sim-fast --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTune(cmd, &f) },
	}
	f.load.register(cmd, 32)
	fl := cmd.Flags()
	fl.StringVar(&f.token, "token", os.Getenv("SHOAL_ADMIN_TOKEN"), "admin API token (default $SHOAL_ADMIN_TOKEN)")
	fl.StringSliceVar(&f.models, "model", nil, "model to tune (repeatable; default every model)")
	fl.DurationVar(&f.p95, "p95", 300*time.Millisecond, "p95 latency target a setting must meet")
	fl.Float64Var(&f.maxErrors, "max-error-rate", 0.005, "error rate a setting may have and still win")
	fl.BoolVar(&f.dryRun, "dry-run", false, "only recommend; restore the original settings after the search")
	fl.DurationVar(&f.step, "step-duration", 10*time.Second, "measured time per setting")
	fl.DurationVar(&f.stepWarmup, "step-warmup", 0, "settling time after each change (default step-duration/5, at most 2s)")
	fl.IntSliceVar(&f.sizes, "sizes", tune.DefaultSizes, "max batch sizes to try")
	fl.DurationSliceVar(&f.flushes, "flush-timeouts", tune.DefaultFlushTimeouts, "flush timeouts to try")
	fl.BoolVar(&f.exhaustive, "exhaustive", false, "try the whole grid instead of sizes first, then flush timeouts at the best sizes")
	fl.StringVar(&f.jsonOut, "json", "", "write the result as JSON to this file ('-' for stdout)")
	return cmd
}

func runTune(cmd *cobra.Command, f *tuneFlags) error {
	load, err := f.load.config(cmd)
	if err != nil {
		return err
	}
	cfg := tune.Config{
		URL: withScheme(f.load.url), Token: f.token, Models: f.models, Load: load, P95Target: f.p95, MaxErrorRate: f.maxErrors,
		StepDuration: f.step, StepWarmup: f.stepWarmup, Sizes: f.sizes, FlushTimeouts: f.flushes,
		Exhaustive: f.exhaustive, DryRun: f.dryRun,
	}
	stderr := cmd.ErrOrStderr()
	cfg.OnStep = func(model string, s tune.Step) {
		if s.Err != "" {
			fmt.Fprintf(stderr, "tune: %s %s: failed: %s\n", model, s.Setting, s.Err)
			return
		}
		fmt.Fprintf(stderr, "tune: %s %-26s %8.1f req/s  p95 %6.0fms  errors %.2f%%\n", model, s.Setting, s.RPS, s.P95Ms, 100*s.ErrorRate)
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, runErr := tune.Run(ctx, cfg)
	text := cmd.OutOrStdout()
	if f.jsonOut == "-" {
		text = stderr
	}
	if len(res.Models) > 0 || len(res.Advice) > 0 {
		if err := tune.WriteText(text, res, f.p95.String()); err != nil {
			return err
		}
	}
	if f.jsonOut != "" {
		err := writeOut(cmd, f.jsonOut, func(w io.Writer) error {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(res)
		})
		if err != nil {
			return fmt.Errorf("--json: %w", err)
		}
	}
	if errors.Is(runErr, tune.ErrBadConfig) {
		return usageError{runErr}
	}
	return runErr
}

func newTopCmd() *cobra.Command {
	var (
		cfg  top.Config
		once bool
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Live view of the cluster: members, roles, models, queues, batches, tokens/s, cache hits, breakers",
		Long:  "top redraws a view of the cluster every interval; press q (or Ctrl-C) to quit.",
		Example: `  shoal top --node http://localhost:8080 --token $SHOAL_ADMIN_TOKEN
  shoal top --once`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if !once {
				keys, restore := terminalKeys(os.Stdin)
				defer restore()
				cfg.Keys = keys
			}
			cfg.URL = withScheme(cfg.URL)
			err := top.Run(ctx, cfg, cmd.OutOrStdout(), once)
			if errors.Is(err, top.ErrBadConfig) {
				return usageError{err}
			}
			return err
		},
	}
	fl := cmd.Flags()
	nodeFlag(cmd, false, &cfg.URL, "HTTP address of any cluster member")
	fl.StringVar(&cfg.Token, "token", os.Getenv("SHOAL_ADMIN_TOKEN"), "admin API token (default $SHOAL_ADMIN_TOKEN)")
	fl.DurationVar(&cfg.Interval, "interval", time.Second, "refresh interval")
	fl.BoolVar(&once, "once", false, "print one frame (rates over one interval) and exit")
	return cmd
}
