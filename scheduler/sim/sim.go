// Package sim is a deterministic stand-in for a GPU model server. A batch of
// n requests costs base + per_item * n^exponent, then tokens stream one per
// token interval for the whole batch at once, so batching pays the way it
// does on a GPU. The text is a deterministic function of the model, prompt
// and parameters, which makes it usable in tests, demos and capacity plans.
// Jitter, when set, multiplies each batch's cost by a lognormal draw of mean
// 1 from a seeded stream, so a cluster can have the service-time spread a
// real server has (the 20-node scale test compares it with clustersim).
package sim

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/shoal-dev/shoal/scheduler"
)

// Config shapes the simulated cost.
type Config struct {
	// Model names the model; it seeds the generated text.
	Model string
	// Base is the fixed cost of a batch (default 20ms).
	Base time.Duration
	// PerItem scales the cost of each batch member (default 8ms).
	PerItem time.Duration
	// Exponent is how the per-item cost grows with batch size: 1 is
	// linear, 0.5 makes a batch of 64 cost 3x a batch of 1 (default 0.5).
	Exponent float64
	// TokenInterval is the time per generated token step (default 2ms).
	TokenInterval time.Duration
	// DefaultMaxTokens applies when a request sets no max_tokens (default 16).
	DefaultMaxTokens int
	// Jitter is the sigma of a lognormal factor of mean 1 that multiplies
	// each batch's cost (0, the default, keeps the cost exact; 0.6 puts
	// the 99th percentile at about 4x the median).
	Jitter float64
	// Seed seeds the jitter draws (0: derived from Model), so a run is
	// repeatable; nodes given different seeds draw different sequences.
	Seed uint64
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{Base: 20 * time.Millisecond, PerItem: 8 * time.Millisecond, Exponent: 0.5, TokenInterval: 2 * time.Millisecond, DefaultMaxTokens: 16}
}

// Validate reports the first out-of-range field.
func (c Config) Validate() error {
	switch {
	case c.Base < 0:
		return fmt.Errorf("base must not be negative, got %s", c.Base)
	case c.PerItem < 0:
		return fmt.Errorf("per_item must not be negative, got %s", c.PerItem)
	case c.Exponent < 0 || c.Exponent > 2:
		return fmt.Errorf("exponent must be between 0 and 2, got %g", c.Exponent)
	case c.TokenInterval < 0:
		return fmt.Errorf("token_interval must not be negative, got %s", c.TokenInterval)
	case c.DefaultMaxTokens < 0:
		return fmt.Errorf("default_max_tokens must not be negative, got %d", c.DefaultMaxTokens)
	case !(c.Jitter >= 0 && c.Jitter <= 2):
		return fmt.Errorf("jitter must be between 0 and 2, got %g", c.Jitter)
	}
	return nil
}

// Backend is the simulated model. It implements scheduler.Backend.
type Backend struct {
	cfg Config
	// slowdown multiplies Cost (float64 bits; 0 means 1), so tests and
	// benchmarks can make a node slow down mid-run.
	slowdown atomic.Uint64

	// jitterMu guards jitter, the seeded stream of Config.Jitter draws
	// (batches run concurrently).
	jitterMu sync.Mutex
	jitter   *rand.Rand
}

// New returns a simulated backend.
func New(cfg Config) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sim %s: %w", cfg.Model, err)
	}
	if cfg.DefaultMaxTokens == 0 {
		cfg.DefaultMaxTokens = 16
	}
	b := &Backend{cfg: cfg}
	if cfg.Jitter > 0 {
		seed := cfg.Seed
		if seed == 0 {
			seed = fnv64a(fnvOffset64, cfg.Model)
		}
		b.jitter = rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	}
	return b, nil
}

// runCost is Cost(n) times a jitter draw: lognormal with sigma Jitter and
// mean 1 (mu = -sigma^2/2).
func (b *Backend) runCost(n int) time.Duration {
	d := b.Cost(n)
	if b.jitter == nil {
		return d
	}
	s := b.cfg.Jitter
	b.jitterMu.Lock()
	z := b.jitter.NormFloat64()
	b.jitterMu.Unlock()
	return time.Duration(float64(d) * math.Exp(s*z-s*s/2))
}

// Cost is the simulated compute time of a batch of n.
func (b *Backend) Cost(n int) time.Duration {
	d := b.cfg.Base + time.Duration(float64(b.cfg.PerItem)*math.Pow(float64(n), b.cfg.Exponent))
	if f := math.Float64frombits(b.slowdown.Load()); f > 0 {
		d = time.Duration(float64(d) * f)
	}
	return d
}

// SetSlowdown makes every later batch take factor times its configured
// cost (1 restores it), as a node that is throttled or shares its device.
func (b *Backend) SetSlowdown(factor float64) {
	if factor <= 0 || math.IsNaN(factor) || math.IsInf(factor, 0) {
		factor = 1
	}
	b.slowdown.Store(math.Float64bits(factor))
}

type seq struct {
	t     *scheduler.Task
	words []string
	stop  []string
	text  strings.Builder
	// emitted is how much of text the client has been sent; a tail that
	// may still grow into a stop string is held back.
	emitted int
	prompt  int
	done    bool
}

// Run simulates one batch.
func (b *Backend) Run(ctx context.Context, batch []*scheduler.Task) {
	if !sleep(ctx, b.runCost(len(batch))) {
		for _, t := range batch {
			// The batch context only says every task ended; each task's
			// own context says why (deadline or cancellation), which
			// decides the client's status.
			err := t.Context().Err()
			if err == nil {
				err = ctx.Err()
			}
			t.Finish(scheduler.Result{}, err)
		}
		return
	}
	seqs := make([]*seq, len(batch))
	steps := 0
	for i, t := range batch {
		req := t.Request()
		limit := req.Params.MaxTokens
		if limit <= 0 {
			limit = b.cfg.DefaultMaxTokens
		}
		prompt := req.PromptText()
		s := &seq{t: t, words: b.words(req, prompt, limit), stop: req.Params.Stop, prompt: countTokens(prompt)}
		// The whole text's room at once, not a regrowth every few words.
		n := len(s.words)
		for _, w := range s.words {
			n += len(w)
		}
		s.text.Grow(n)
		seqs[i] = s
		steps = max(steps, len(s.words))
	}
	for step := 0; step < steps; step++ {
		if b.cfg.TokenInterval > 0 && !sleep(ctx, b.cfg.TokenInterval) {
			break
		}
		for _, s := range seqs {
			if s.done {
				continue
			}
			if err := s.t.Context().Err(); err != nil {
				s.done = true
				s.t.Finish(scheduler.Result{}, err)
				continue
			}
			if step >= len(s.words) {
				continue
			}
			s.emit(step)
		}
	}
	for _, s := range seqs {
		if s.done {
			continue
		}
		if err := s.t.Context().Err(); err != nil {
			s.t.Finish(scheduler.Result{}, err)
			continue
		}
		s.finish("length")
	}
}

func (s *seq) emit(step int) {
	w := s.words[step]
	if step > 0 {
		w = " " + w
	}
	s.text.WriteString(w)
	full := s.text.String()
	cut := -1
	for _, stop := range s.stop {
		if i := strings.Index(full, stop); i >= 0 && stop != "" && (cut < 0 || i < cut) {
			cut = i
		}
	}
	if cut >= 0 {
		s.text.Reset()
		s.text.WriteString(full[:cut])
		s.finish("stop")
		return
	}
	// A stop string may span words: what could be its beginning is held
	// back, so the streamed text always equals the final text.
	if safe := len(full) - stopPrefixLen(full, s.stop); safe > s.emitted {
		s.t.Emit(full[s.emitted:safe])
		s.emitted = safe
	}
	if step == len(s.words)-1 && s.words[step] == endWord {
		s.finish("stop")
	}
}

// stopPrefixLen is the length of the longest tail of text that is a proper
// beginning of a stop string.
func stopPrefixLen(text string, stops []string) int {
	n := 0
	for _, stop := range stops {
		for k := min(len(stop)-1, len(text)); k > n; k-- {
			if strings.HasSuffix(text, stop[:k]) {
				n = k
				break
			}
		}
	}
	return n
}

func (s *seq) finish(reason string) {
	if text := s.text.String(); len(text) > s.emitted {
		s.t.Emit(text[s.emitted:])
		s.emitted = len(text)
	}
	s.done = true
	s.t.Finish(scheduler.Result{
		Text:             s.text.String(),
		FinishReason:     reason,
		PromptTokens:     s.prompt,
		CompletionTokens: countTokens(s.text.String()),
	}, nil)
}

// Close implements scheduler.Backend.
func (b *Backend) Close() error { return nil }

// endWord closes a sentence that ends before max_tokens.
const endWord = "end."

var vocabulary = strings.Fields(`the a shoal of fish swims through quiet water while light falls on
sand and stone every node answers fast when load is shared across the cluster small models run
on many cores batching makes the work cheap cache hits return at once queues stay short routers
pick the least busy peer gossip carries news raft keeps the log safe tokens flow like a river
bright silver waves turn together under the moon`)

// Words returns the deterministic output words for a request: up to limit
// of them, ending with endWord when the text finishes before the limit.
func (b *Backend) Words(req *scheduler.Request, limit int) []string {
	return b.words(req, req.PromptText(), limit)
}

// words is Words for a request whose prompt text the caller already built.
func (b *Backend) words(req *scheduler.Request, prompt string, limit int) []string {
	// FNV-1a over the model, the prompt and the sampling parameters,
	// written out so that nothing is copied to feed a hash.Hash.
	sum := fnv64a(fnvOffset64, b.cfg.Model)
	sum = fnv64a(sum, "\x00")
	sum = fnv64a(sum, prompt)
	var num [32]byte
	p := req.Params
	sum = fnv64a(sum, string(strconv.AppendFloat(num[:0], p.Temperature, 'g', -1, 64)))
	sum = fnv64a(sum, string(strconv.AppendFloat(num[:0], p.TopP, 'g', -1, 64)))
	if p.Seed != nil {
		sum = fnv64a(sum, string(strconv.AppendInt(num[:0], *p.Seed, 10)))
	}
	rng := rand.New(rand.NewPCG(sum, sum>>17|1))
	natural := 8 + rng.IntN(24)
	n := min(natural, limit)
	words := make([]string, n)
	for i := range words {
		words[i] = vocabulary[rng.IntN(len(vocabulary))]
	}
	if natural <= limit {
		words[n-1] = endWord
	}
	return words
}

const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// fnv64a continues an FNV-1a hash (hash/fnv's New64a) over s.
func fnv64a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

// countTokens is len(strings.Fields(s)) without building the fields: the
// sim counts every prompt, and a long one made a slice of all its words.
func countTokens(s string) int {
	n, inField := 0, false
	for _, r := range s {
		space := unicode.IsSpace(r)
		if !space && !inField {
			n++
		}
		inField = !space
	}
	return n
}

// sleep waits d or until ctx ends; it reports whether the full time passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
