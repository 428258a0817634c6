// Package tune searches a model's batching settings (max batch size and
// flush timeout) with short benchmark runs through the admin API, and picks
// the setting with the most throughput that keeps p95 latency under a
// target. It also turns a node's metrics and health into the performance
// guide's troubleshooting advice.
package tune

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/shoal-dev/shoal/ops/adminapi"
	"github.com/shoal-dev/shoal/ops/bench"
)

// ErrBadConfig wraps every invalid Config field.
var ErrBadConfig = errors.New("invalid tune config")

// DefaultSizes and DefaultFlushTimeouts are the search grid.
var (
	DefaultSizes         = []int{1, 2, 4, 8, 16, 32, 64, 128}
	DefaultFlushTimeouts = []time.Duration{time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond}
)

// Config describes a tuning session.
type Config struct {
	// URL is a node's base URL; Token its admin token.
	URL   string
	Token string
	// Models to tune; empty means every model of GET /admin/v1/batching.
	Models []string
	// Load is the benchmark each step runs: set Rate (open loop) or
	// Concurrency (closed loop), and optionally Endpoint, MaxTokens,
	// Stream, Prompts, APIKey, Headers. URL, Model, Requests, Duration
	// and Warmup are set by tune.
	Load bench.Config
	// P95Target is the latency p95 must stay under (default 300ms).
	P95Target time.Duration
	// MaxErrorRate is the error rate a setting may have and still win
	// (default 0.5%, the guide's target).
	MaxErrorRate float64
	// StepDuration is each step's measured time (default 10s) and
	// StepWarmup the time before it that settles queues after the change
	// (default a fifth of StepDuration, at most 2s).
	StepDuration time.Duration
	StepWarmup   time.Duration
	// Sizes and FlushTimeouts form the grid (defaults above).
	Sizes         []int
	FlushTimeouts []time.Duration
	// Exhaustive tries the whole grid instead of coarse-then-refine.
	Exhaustive bool
	// DryRun only recommends: the original settings are restored.
	DryRun bool
	// OnStep is called after each step, for live tables.
	OnStep func(model string, s Step)
	// Client is used for the admin API and metrics; nil makes one.
	Client *http.Client
	// Logger receives progress logs; nil discards them.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrBadConfig, fmt.Sprintf(format, args...)))
	}
	if c.URL == "" {
		bad("url is required")
	}
	if c.P95Target == 0 {
		c.P95Target = 300 * time.Millisecond
	}
	if c.P95Target < 0 {
		bad("p95 target must be positive, got %s", c.P95Target)
	}
	if c.MaxErrorRate == 0 {
		c.MaxErrorRate = 0.005
	}
	if c.MaxErrorRate < 0 || c.MaxErrorRate > 1 {
		bad("max error rate must be between 0 and 1, got %g", c.MaxErrorRate)
	}
	if c.StepDuration == 0 {
		c.StepDuration = 10 * time.Second
	}
	if c.StepDuration < 100*time.Millisecond {
		bad("step duration must be at least 100ms, got %s", c.StepDuration)
	}
	if c.StepWarmup == 0 {
		c.StepWarmup = min(c.StepDuration/5, 2*time.Second)
	}
	if c.StepWarmup < 0 {
		bad("step warmup must not be negative")
	}
	if len(c.Sizes) == 0 {
		c.Sizes = DefaultSizes
	}
	if len(c.FlushTimeouts) == 0 {
		c.FlushTimeouts = DefaultFlushTimeouts
	}
	c.Sizes = slices.Clone(c.Sizes)
	slices.Sort(c.Sizes)
	c.Sizes = slices.Compact(c.Sizes)
	c.FlushTimeouts = slices.Clone(c.FlushTimeouts)
	slices.Sort(c.FlushTimeouts)
	c.FlushTimeouts = slices.Compact(c.FlushTimeouts)
	for _, s := range c.Sizes {
		if s < 1 || s > 4096 {
			bad("batch sizes must be between 1 and 4096, got %d", s)
		}
	}
	for _, f := range c.FlushTimeouts {
		if f < 0 || f > time.Minute {
			bad("flush timeouts must be between 0 and 1m, got %s", f)
		}
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: 30 * time.Second}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, errors.Join(errs...)
}

// Step is one measured setting.
type Step struct {
	Setting
	// Phase is coarse, refine or grid.
	Phase     string  `json:"phase"`
	RPS       float64 `json:"rps"`
	P50Ms     float64 `json:"p50_ms"`
	P95Ms     float64 `json:"p95_ms"`
	P99Ms     float64 `json:"p99_ms"`
	ErrorRate float64 `json:"error_rate"`
	// Feasible means p95 and the error rate met the targets.
	Feasible bool `json:"feasible"`
	// Err is set when the step could not run.
	Err string `json:"error,omitempty"`
}

// ModelResult is the outcome for one model.
type ModelResult struct {
	Model    string  `json:"model"`
	Original Setting `json:"original"`
	Steps    []Step  `json:"steps"`
	// Best is the winning step; nil when no setting met the targets.
	Best *Step `json:"best,omitempty"`
	// Applied is true when Best is now the cluster's setting.
	Applied bool `json:"applied"`
	// Note explains what was done with the result.
	Note string `json:"note"`
}

// Result is a finished tuning session.
type Result struct {
	Models []ModelResult `json:"models"`
	Advice []Advice      `json:"advice"`
}

// throughputTolerance treats throughputs this close as equal, so under an
// open-loop rate (where every good setting serves the offered rate) the
// lower p95 decides.
const throughputTolerance = 0.03

// better reports whether a beats b.
func better(a, b Step) bool {
	switch {
	case a.Feasible != b.Feasible:
		return a.Feasible
	case !a.Feasible:
		return a.P95Ms < b.P95Ms
	case a.RPS > b.RPS*(1+throughputTolerance):
		return true
	case b.RPS > a.RPS*(1+throughputTolerance):
		return false
	}
	return a.P95Ms < b.P95Ms
}

// best returns the index of the best step that ran, or -1.
func best(steps []Step) int {
	idx := -1
	for i, s := range steps {
		if s.Err != "" {
			continue
		}
		if idx < 0 || better(s, steps[idx]) {
			idx = i
		}
	}
	return idx
}

// Run tunes every model and gathers advice. The cluster's settings are left
// at the winners (or restored with DryRun, on failure, or when nothing met
// the targets).
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Result{}, err
	}
	log := cfg.Logger.With("component", "tune")
	admin := adminapi.NewClient(cfg.URL, cfg.Token, cfg.Client)
	var res Result
	obs := Observed{}
	if snap, err := Scrape(ctx, cfg.Client, cfg.URL); err == nil {
		obs.Metrics = &snap
	} else {
		log.Warn("metrics unavailable", "err", err)
	}
	if h, err := GetHealth(ctx, cfg.Client, cfg.URL); err == nil {
		obs.Health = &h
	}
	if b, err := admin.Breakers(ctx); err == nil {
		obs.Breakers = b
	}
	res.Advice = Advise(obs)

	current, err := batching(ctx, admin)
	if err != nil {
		return res, err
	}
	models := cfg.Models
	if len(models) == 0 {
		models = make([]string, 0, len(current))
		for m := range current {
			models = append(models, m)
		}
		sort.Strings(models)
	}
	for _, m := range models {
		orig, ok := current[m]
		if !ok {
			return res, fmt.Errorf("model %q: not in the node's batching settings", m)
		}
		t := &tuner{cfg: cfg, admin: admin, model: m, log: log.With("model", m)}
		mr, err := t.run(ctx, orig)
		res.Models = append(res.Models, mr)
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

type tuner struct {
	cfg   Config
	admin *adminapi.Client
	model string
	log   *slog.Logger
	steps []Step
	tried map[Setting]bool
}

func (t *tuner) run(ctx context.Context, orig Setting) (mr ModelResult, err error) {
	mr = ModelResult{Model: t.model, Original: orig}
	t.tried = map[Setting]bool{}
	restore := true
	defer func() {
		mr.Steps = t.steps
		if !restore {
			return
		}
		// Restore even when ctx was cancelled, so an interrupted search
		// does not leave a trial setting behind.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rerr := t.apply(rctx, orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore %s: %w", orig, rerr))
		}
	}()

	if t.cfg.Exhaustive {
		for _, s := range t.cfg.Sizes {
			for _, f := range t.cfg.FlushTimeouts {
				if err := t.try(ctx, Setting{s, f}, "grid"); err != nil {
					return mr, err
				}
			}
		}
	} else if err := t.adaptive(ctx); err != nil {
		return mr, err
	}
	i := best(t.steps)
	if i < 0 || !t.steps[i].Feasible {
		mr.Note = fmt.Sprintf("no setting kept p95 under %s with error rate under %.1f%%; kept %s (scale out, or lower the load)", t.cfg.P95Target, 100*t.cfg.MaxErrorRate, orig)
		if i >= 0 {
			mr.Note += fmt.Sprintf("; closest was %s with p95 %.0fms", t.steps[i].Setting, t.steps[i].P95Ms)
		}
		return mr, nil
	}
	b := t.steps[i]
	mr.Best = &b
	if t.cfg.DryRun {
		mr.Note = fmt.Sprintf("recommend %s (dry run: restored %s)", b.Setting, orig)
		return mr, nil
	}
	if err := t.apply(ctx, b.Setting); err != nil {
		return mr, err
	}
	restore = false
	mr.Applied = true
	mr.Note = fmt.Sprintf("applied %s (was %s)", b.Setting, orig)
	return mr, nil
}

// refineShare and refineMax pick the sizes whose flush timeouts are
// searched: those within 10% of the best coarse throughput, at most three.
const (
	refineShare = 0.10
	refineMax   = 3
)

// adaptive measures every size at the shortest flush timeout (coarse), then
// every other flush timeout at the best few sizes (refine). Size moves
// throughput most and can peak narrowly, so every size is tried; the flush
// timeout mostly trades latency for fuller batches, so it is only searched
// where it can change the winner.
func (t *tuner) adaptive(ctx context.Context) error {
	flushes := t.cfg.FlushTimeouts
	for _, size := range t.cfg.Sizes {
		if err := t.try(ctx, Setting{size, flushes[0]}, "coarse"); err != nil {
			return err
		}
	}
	ranked := make([]Step, 0, len(t.steps))
	for _, s := range t.steps {
		if s.Err == "" {
			ranked = append(ranked, s)
		}
	}
	if len(ranked) == 0 {
		return nil
	}
	sort.SliceStable(ranked, func(i, j int) bool { return better(ranked[i], ranked[j]) })
	top := ranked[0]
	for i, s := range ranked {
		if i >= refineMax || (i > 0 && (s.Feasible != top.Feasible || s.RPS < top.RPS*(1-refineShare))) {
			break
		}
		for _, f := range flushes[1:] {
			if err := t.try(ctx, Setting{s.MaxSize, f}, "refine"); err != nil {
				return err
			}
		}
	}
	return nil
}

// try measures one setting unless it was measured already. Only ctx errors
// stop the search; a failed step is recorded and skipped.
func (t *tuner) try(ctx context.Context, s Setting, phase string) error {
	if t.tried[s] {
		return nil
	}
	t.tried[s] = true
	st := Step{Setting: s, Phase: phase}
	if err := t.apply(ctx, s); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		st.Err = err.Error()
		t.record(st)
		return nil
	}
	load := t.cfg.Load
	load.URL, load.Model = t.cfg.URL, t.model
	load.Requests, load.Duration, load.Warmup = 0, t.cfg.StepDuration, t.cfg.StepWarmup
	load.Progress = nil
	if load.Logger == nil {
		load.Logger = t.cfg.Logger
	}
	rep, err := bench.Run(ctx, load)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		st.Err = err.Error()
		t.record(st)
		return nil
	}
	st.RPS, st.P50Ms, st.P95Ms, st.P99Ms, st.ErrorRate = rep.RequestsPerSec, rep.Latency.P50, rep.Latency.P95, rep.Latency.P99, rep.ErrorRate
	st.Feasible = rep.OK > 0 && st.P95Ms <= float64(t.cfg.P95Target)/float64(time.Millisecond) && st.ErrorRate <= t.cfg.MaxErrorRate
	t.record(st)
	return nil
}

func (t *tuner) record(st Step) {
	t.log.Info("step", "setting", st.Setting.String(), "rps", st.RPS, "p95_ms", st.P95Ms, "feasible", st.Feasible, "err", st.Err)
	t.steps = append(t.steps, st)
	if t.cfg.OnStep != nil {
		t.cfg.OnStep(t.model, st)
	}
}

// apply sets s and waits until the node reports it, so the next
// measurement does not straddle the change.
func (t *tuner) apply(ctx context.Context, s Setting) error {
	if err := setBatching(ctx, t.admin, t.model, s); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		cur, err := batching(ctx, t.admin)
		if err != nil {
			return err
		}
		if cur[t.model] == s {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("set batching of %s: node still reports %s, not %s, after 10s", t.model, cur[t.model], s)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
