package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/engine/kernels"
	"github.com/shoal-dev/shoal/scheduler"
)

// Defaults for zero Config fields.
const (
	DefaultMaxSequences     = 32
	DefaultKVCacheBytes     = 256 << 20
	DefaultPrefillChunk     = 32
	DefaultMaxTokens        = 128
	maxConfigSequences      = 4096
	maxConfigThreads        = 1024
	maxConfigPrefillChunk   = 1 << 16
	defaultModelSubdir      = "models/default"
	defaultCheckpointName   = "model.bin"
	defaultTokenizerName    = "tokenizer.bin"
	quantizeNone, quantInt8 = "none", "int8"
)

// Config configures a Backend.
type Config struct {
	// Checkpoint and Tokenizer are paths to a llama2.c model.bin and
	// tokenizer.bin, or Checkpoint is a GGUF file (llama architecture; F32,
	// F16 or Q8_0 tensors) whose own vocabulary is used when Tokenizer is
	// empty. Leave both empty to serve the built-in synthetic model
	// from DataDir/models/default/, generated there on first start: random
	// weights that produce word salad, not meaning. Real llama2.c weights
	// (for example stories15M.bin with llama2.c's tokenizer.bin) give real
	// text.
	Checkpoint string
	Tokenizer  string
	// DataDir holds the built-in model; required when Checkpoint is empty.
	DataDir string
	// Quantize is "none" (or "") for float32 weights, or "int8" for Q8_0
	// weights quantized at load (about 4x less weight memory).
	Quantize string
	// MaxSequences bounds the running batch; default 32.
	MaxSequences int
	// Threads is how many goroutines split each matmul; 0 means all CPUs.
	Threads int
	// KVCacheBytes bounds the KV cache of all running sequences together;
	// default 256 MiB. It must hold at least one full-length sequence.
	KVCacheBytes int64
	// PrefillChunk bounds the prompt tokens processed per step, over all
	// newcomers, so prefills do not stall running sequences; default 32.
	PrefillChunk int
	// DefaultMaxTokens is the completion length when a request sets none;
	// default 128. Completions are always bounded by seq_len.
	DefaultMaxTokens int
	// NoPrefixCache turns off keeping finished prompts' KV pages for later
	// prompts that share their prefix (on by default, within KVCacheBytes).
	NoPrefixCache bool
	// Logger receives the engine's logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports the first invalid field, wrapped in ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	gguf := strings.HasSuffix(strings.ToLower(c.Checkpoint), ".gguf")
	switch {
	case c.Checkpoint == "" && c.Tokenizer != "":
		return bad("tokenizer %q without a checkpoint", c.Tokenizer)
	case c.Checkpoint != "" && c.Tokenizer == "" && !gguf:
		return bad("checkpoint %q needs a tokenizer (only .gguf files carry their own)", c.Checkpoint)
	case c.Checkpoint == "" && c.DataDir == "":
		return bad("data_dir is required for the built-in model when no checkpoint is set")
	case c.Quantize != "" && c.Quantize != quantizeNone && c.Quantize != quantInt8:
		return bad("quantize %q: want none or int8", c.Quantize)
	case c.MaxSequences < 0 || c.MaxSequences > maxConfigSequences:
		return bad("max_sequences %d outside 0..%d", c.MaxSequences, maxConfigSequences)
	case c.Threads < 0 || c.Threads > maxConfigThreads:
		return bad("threads %d outside 0..%d", c.Threads, maxConfigThreads)
	case c.KVCacheBytes < 0:
		return bad("kv_cache_bytes %d is negative", c.KVCacheBytes)
	case c.PrefillChunk < 0 || c.PrefillChunk > maxConfigPrefillChunk:
		return bad("prefill_chunk %d outside 0..%d", c.PrefillChunk, maxConfigPrefillChunk)
	case c.DefaultMaxTokens < 0:
		return bad("default_max_tokens %d is negative", c.DefaultMaxTokens)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.MaxSequences == 0 {
		c.MaxSequences = DefaultMaxSequences
	}
	if c.Threads == 0 {
		c.Threads = runtime.NumCPU()
	}
	if c.KVCacheBytes == 0 {
		c.KVCacheBytes = DefaultKVCacheBytes
	}
	if c.PrefillChunk == 0 {
		c.PrefillChunk = DefaultPrefillChunk
	}
	if c.DefaultMaxTokens == 0 {
		c.DefaultMaxTokens = DefaultMaxTokens
	}
	if c.Quantize == "" {
		c.Quantize = quantizeNone
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Stats are cumulative counters and current gauges of a Backend.
type Stats struct {
	// TokensGenerated counts completion tokens produced.
	TokensGenerated uint64
	// PromptTokens counts prompt tokens processed (prefill).
	PromptTokens uint64
	// Steps counts batched forward passes.
	Steps uint64
	// Requests counts tasks finished, successfully or not.
	Requests uint64
	// ActiveSequences is the number of sequences admitted and running now.
	ActiveSequences int
	// MaxSequences is the configured bound on ActiveSequences.
	MaxSequences int
	// KVBytesInUse is the KV cache reserved by running sequences.
	KVBytesInUse int64
	// KVBytesAllocated is the KV cache memory allocated so far (in use or on
	// the free list); it never exceeds KVBytesBudget.
	KVBytesAllocated int64
	// KVBytesBudget is the configured bound on the KV cache.
	KVBytesBudget int64
	// PrefixCachedBytes is the KV cache held for prompt prefixes (in use
	// or evictable); with KVBytesInUse it stays within KVBytesBudget.
	PrefixCachedBytes int64
	// PrefixLookupTokens counts admitted prompt tokens looked up in the
	// prefix cache; PrefixHitTokens those whose KV was found there, which
	// skipped their prefill.
	PrefixLookupTokens uint64
	PrefixHitTokens    uint64
}

// Backend is an embedded transformer runtime with continuous batching. It
// implements scheduler.ContinuousBackend: admitted tasks join the running
// batch at the next step, every step advances all running sequences by one
// token (or a chunk of prompt) with one pass over the weights, and a
// sequence leaves as soon as it finishes or its context ends.
type Backend struct {
	cfg   Config
	log   *slog.Logger
	w     *weights
	tok   *Tokenizer
	pool  *pool
	run   *runner
	info  Info
	kinds string

	mu      sync.Mutex
	kv      kvCache
	pending []*sequence
	spare   []*sequence
	active  int
	closed  bool

	wake      chan struct{}
	room      chan struct{}
	loopDone  chan struct{}
	closeOnce sync.Once
	closeErr  error

	tokens, prompt, steps, requests atomic.Uint64

	// Step-loop state, owned by the loop goroutine.
	running []*sequence
	rowBuf  []row
}

var _ scheduler.ContinuousBackend = (*Backend)(nil)

// sequence is one admitted task's generation state. Finished sequences are
// kept for reuse, with their buffers.
type sequence struct {
	task      *scheduler.Task
	ctx       context.Context
	prompt    []int
	pos       int // positions already in the KV cache
	next      int // input token of the next decode step
	prevTok   int
	maxTokens int
	generated int
	reserved  int // KV pages reserved
	kv        kvSeq
	// hashes are the prompt's full-block hashes; the first shared of
	// kv.pages belong to the prefix cache.
	hashes []uint64
	shared int
	// donated: a block of this prompt was found cached by another
	// sequence, so no later block can join the shared pages.
	donated bool
	sampler sampler
	out     textOut
	// per-step bookkeeping
	stepRows int
	logit    int
}

// New loads the configured model (creating the built-in one under DataDir
// if needed) and starts the step loop. ctx bounds loading only; the loop
// runs until Close.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("component", "engine")
	ckpt, tokPath := cfg.Checkpoint, cfg.Tokenizer
	if ckpt == "" {
		dir := filepath.Join(cfg.DataDir, filepath.FromSlash(defaultModelSubdir))
		var err error
		ckpt, tokPath, err = ensureDefaultModel(ctx, dir, log)
		if err != nil {
			return nil, err
		}
		log.Warn("serving the built-in synthetic model: its weights are random, so its text is word salad; "+
			"configure checkpoint and tokenizer with llama2.c weights (e.g. stories15M.bin and tokenizer.bin) for real text",
			"checkpoint", ckpt)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	start := time.Now()
	w, tok, err := loadModel(ckpt, tokPath, cfg.Quantize == quantInt8)
	if err != nil {
		return nil, err
	}
	b, err := newBackend(cfg, log, w, tok)
	if err != nil {
		_ = w.close()
		return nil, err
	}
	log.Info("model loaded", "checkpoint", ckpt, "dim", w.cfg.Dim, "layers", w.cfg.Layers, "vocab", w.cfg.Vocab,
		"seq_len", w.cfg.SeqLen, "quantize", cfg.Quantize, "kernels", b.kinds, "threads", cfg.Threads,
		"kv_budget_bytes", cfg.KVCacheBytes, "took", time.Since(start))
	return b, nil
}

// newBackend starts a backend on loaded weights. cfg has its defaults.
func newBackend(cfg Config, log *slog.Logger, w *weights, tok *Tokenizer) (*Backend, error) {
	if w.cfg.Vocab < 3 {
		return nil, fmt.Errorf("%w: vocabulary of %d lacks <unk>, <s> and </s>", ErrBadHeader, w.cfg.Vocab)
	}
	kv := newKVCache(w.cfg, cfg.KVCacheBytes)
	kv.prefix = prefixCache{enabled: !cfg.NoPrefixCache, entries: map[uint64]*prefixEntry{}}
	if full := pagesFor(w.cfg.SeqLen); kv.budget < full {
		return nil, fmt.Errorf("%w: kv_cache_bytes %d holds less than one full-length sequence (%d bytes)",
			ErrInvalidConfig, cfg.KVCacheBytes, int64(full)*kv.pageBytes)
	}
	k := kernels.Best()
	p := newPool(cfg.Threads)
	b := &Backend{
		cfg: cfg, log: log, w: w, tok: tok, pool: p, kv: kv, kinds: k.Name,
		run:      newRunner(w, k, p, cfg.MaxSequences+cfg.PrefillChunk, cfg.MaxSequences),
		info:     infoFor(w.cfg),
		wake:     make(chan struct{}, 1),
		room:     make(chan struct{}, 1),
		loopDone: make(chan struct{}),
	}
	go b.loop()
	return b, nil
}

// Info describes the loaded model.
func (b *Backend) Info() Info { return b.info }

// Tokenizer returns the model's tokenizer.
func (b *Backend) Tokenizer() *Tokenizer { return b.tok }

// Stats returns the backend's counters and gauges.
func (b *Backend) Stats() Stats {
	b.mu.Lock()
	active, reserved, allocated, cached := b.active, b.kv.reserved, b.kv.allocated, b.kv.cached
	lookups, hits := b.kv.prefix.lookups, b.kv.prefix.hits
	b.mu.Unlock()
	return Stats{
		PrefixCachedBytes:  int64(cached) * b.kv.pageBytes,
		PrefixLookupTokens: lookups,
		PrefixHitTokens:    hits,
		TokensGenerated:    b.tokens.Load(),
		PromptTokens:       b.prompt.Load(),
		Steps:              b.steps.Load(),
		Requests:           b.requests.Load(),
		ActiveSequences:    active,
		MaxSequences:       b.cfg.MaxSequences,
		KVBytesInUse:       int64(reserved) * b.kv.pageBytes,
		KVBytesAllocated:   int64(allocated) * b.kv.pageBytes,
		KVBytesBudget:      int64(b.kv.budget) * b.kv.pageBytes,
	}
}

// Active is the number of sequences admitted and not yet finished.
func (b *Backend) Active() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.active
}

// Room receives a value whenever a sequence leaves.
func (b *Backend) Room() <-chan struct{} { return b.room }

// Admit offers t to the running batch. It returns false, keeping nothing,
// when MaxSequences are running or the KV budget cannot hold the task's
// longest possible run; the scheduler retries after Room. Tasks that can
// never run (prompt longer than the context, closed backend, context
// already over) are finished with an error and count as admitted.
func (b *Backend) Admit(t *scheduler.Task) bool {
	b.mu.Lock()
	closed, full := b.closed, b.active >= b.cfg.MaxSequences || b.kv.reserved >= b.kv.budget
	b.mu.Unlock()
	switch {
	case closed:
		t.Finish(scheduler.Result{}, ErrClosed)
		return true
	case full:
		return false
	}
	if err := t.Context().Err(); err != nil {
		t.Finish(scheduler.Result{}, err)
		return true
	}
	req := t.Request()
	prompt := b.tok.Encode(req.PromptText(), true, false)
	seqLen := b.w.cfg.SeqLen
	if len(prompt) > seqLen {
		t.Finish(scheduler.Result{}, fmt.Errorf("request %s: %w: %d tokens, context is %d", req.ID, ErrPromptTooLong, len(prompt), seqLen))
		return true
	}
	maxTokens := req.Params.MaxTokens
	if maxTokens <= 0 {
		maxTokens = b.cfg.DefaultMaxTokens
	}
	// As in run.c, the last position's logits still yield a token, so a
	// prompt of n tokens leaves seq_len-n+1 to generate.
	maxTokens = min(maxTokens, seqLen-len(prompt)+1)
	need := pagesFor(min(len(prompt)+maxTokens-1, seqLen))
	var hashes []uint64
	if b.kv.prefix.enabled {
		hashes = blockHashes(prompt)
	}

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		t.Finish(scheduler.Result{}, ErrClosed)
		return true
	}
	if b.active >= b.cfg.MaxSequences {
		b.mu.Unlock()
		return false
	}
	// Cached prefix pages are pinned before reserving, so making room
	// cannot evict them; the sequence reserves only the pages it writes.
	shared := b.kv.prefix.pin(hashes, len(prompt))
	need -= len(shared)
	if !b.kv.reserve(need) {
		b.kv.prefix.unpin(hashes, len(shared))
		b.mu.Unlock()
		return false
	}
	if b.kv.prefix.enabled {
		b.kv.prefix.lookups += uint64(len(prompt))
		b.kv.prefix.hits += uint64(len(shared) * kvPageTokens)
	}
	s := b.newSequence()
	b.active++
	s.task, s.ctx, s.prompt, s.maxTokens, s.reserved = t, t.Context(), prompt, maxTokens, need
	s.kv.pages = append(s.kv.pages[:0], shared...)
	s.hashes, s.shared = hashes, len(shared)
	s.pos, s.generated, s.prevTok, s.next = len(shared)*kvPageTokens, 0, prompt[len(prompt)-1], 0
	seed := rand.Uint64()
	if req.Params.Seed != nil {
		seed = uint64(*req.Params.Seed)
	}
	s.sampler.reset(req.Params.Temperature, req.Params.TopP, seed)
	s.out.reset(req.Params.Stop)
	b.pending = append(b.pending, s)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return true
}

// newSequence takes a recycled sequence or makes one. Called with b.mu held.
func (b *Backend) newSequence() *sequence {
	if n := len(b.spare); n > 0 {
		s := b.spare[n-1]
		b.spare = b.spare[:n-1]
		return s
	}
	return &sequence{}
}

// Close stops the step loop, finishing running and queued tasks with
// ErrClosed, and releases the model.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		select {
		case b.wake <- struct{}{}:
		default:
		}
		<-b.loopDone
		b.pool.close()
		b.closeErr = b.w.close()
	})
	return b.closeErr
}

func (b *Backend) loop() {
	defer close(b.loopDone)
	for {
		b.mu.Lock()
		b.running = append(b.running, b.pending...)
		clear(b.pending)
		b.pending = b.pending[:0]
		closed := b.closed
		b.mu.Unlock()
		if closed {
			for _, s := range b.running {
				b.leave(s, scheduler.Result{}, ErrClosed)
			}
			b.running = b.running[:0]
			return
		}
		b.reap()
		if len(b.running) == 0 {
			<-b.wake
			continue
		}
		b.step()
		b.compact()
	}
}

// reap removes sequences whose task context has ended.
func (b *Backend) reap() {
	for i, s := range b.running {
		if err := s.ctx.Err(); err != nil {
			b.leave(s, scheduler.Result{Text: string(s.out.text), PromptTokens: len(s.prompt), CompletionTokens: s.generated}, err)
			b.running[i] = nil
		}
	}
	b.compact()
}

func (b *Backend) compact() {
	out := b.running[:0]
	for _, s := range b.running {
		if s != nil {
			out = append(out, s)
		}
	}
	clear(b.running[len(out):])
	b.running = out
}

// step advances every running sequence: a decode step for those past their
// prompt and, in admission order, up to PrefillChunk prompt tokens for
// newcomers, all in one forward pass.
func (b *Backend) step() {
	rows := b.rowBuf[:0]
	budget := b.cfg.PrefillChunk
	nlog := 0
	prefilled := 0
	b.mu.Lock()
	for _, s := range b.running {
		s.stepRows, s.logit = 0, -1
		if s.pos < len(s.prompt) {
			n := min(budget, len(s.prompt)-s.pos)
			if n == 0 {
				continue
			}
			budget -= n
			prefilled += n
			for j := 0; j < n; j++ {
				p := s.pos + j
				lg := -1
				if p == len(s.prompt)-1 {
					lg, s.logit = nlog, nlog
					nlog++
				}
				rows = append(rows, row{kv: &s.kv, pos: p, token: s.prompt[p], logit: lg})
			}
			s.stepRows = n
		} else {
			rows = append(rows, row{kv: &s.kv, pos: s.pos, token: s.next, logit: nlog})
			s.logit = nlog
			nlog++
			s.stepRows = 1
		}
		for len(s.kv.pages) < pagesFor(s.pos+s.stepRows) {
			s.kv.pages = append(s.kv.pages, b.kv.take())
		}
	}
	b.mu.Unlock()
	b.rowBuf = rows
	if len(rows) == 0 {
		return
	}
	b.run.forward(rows)
	b.steps.Add(1)
	b.prompt.Add(uint64(prefilled))
	for i, s := range b.running {
		if s.stepRows == 0 {
			continue
		}
		s.pos += s.stepRows
		if s.pos-s.stepRows < len(s.prompt) && s.pos/kvPageTokens > s.shared && len(s.hashes) > s.shared {
			b.mu.Lock()
			b.donate(s)
			b.mu.Unlock()
		}
		if s.logit < 0 {
			continue
		}
		tok := s.sampler.sample(b.run.logitsRow(s.logit), &b.run.k)
		if b.accept(s, tok) {
			b.running[i] = nil
		}
	}
}

// accept handles a sampled token and reports whether the sequence left.
func (b *Backend) accept(s *sequence, tok int) bool {
	if tok == TokenBOS || tok == TokenEOS {
		return b.complete(s, "stop")
	}
	s.generated++
	b.tokens.Add(1)
	piece := b.tok.Decode(s.prevTok, tok)
	s.prevTok, s.next = tok, tok
	emit, stopped := s.out.add(piece)
	s.task.Emit(emit)
	switch {
	case stopped:
		return b.complete(s, "stop")
	case s.generated >= s.maxTokens:
		return b.complete(s, "length")
	}
	return false
}

// complete finishes a sequence normally.
func (b *Backend) complete(s *sequence, reason string) bool {
	emit, stopped := s.out.flush()
	s.task.Emit(emit)
	if stopped {
		reason = "stop"
	}
	b.leave(s, scheduler.Result{Text: string(s.out.text), FinishReason: reason, PromptTokens: len(s.prompt), CompletionTokens: s.generated}, nil)
	return true
}

// leave frees a sequence's KV cache, finishes its task and signals Room.
// The bookkeeping comes first so that whoever sees the task done also sees
// the room it left.
func (b *Backend) leave(s *sequence, res scheduler.Result, err error) {
	task := s.task
	if err != nil && !errors.Is(err, ErrClosed) {
		b.log.Debug("sequence ended", "request", task.Request().ID, "err", err)
	}
	b.requests.Add(1)
	b.mu.Lock()
	b.donate(s)
	b.kv.prefix.unpin(s.hashes, s.shared)
	b.kv.release(s.kv.pages[s.shared:], s.reserved)
	clear(s.kv.pages)
	s.kv.pages = s.kv.pages[:0]
	s.task, s.ctx, s.prompt, s.hashes, s.shared, s.donated = nil, nil, nil, nil, 0, false
	b.active--
	b.spare = append(b.spare, s)
	b.mu.Unlock()
	task.Finish(res, err)
	select {
	case b.room <- struct{}{}:
	default:
	}
}

// donate hands a sequence's computed full prompt blocks to the prefix
// cache as soon as prefill has passed them, so prompts sharing the prefix
// reuse it while this one is still running: each page becomes a cache
// entry the sequence keeps pinned (it joins the shared pages, and leaves the
// sequence's reservation for the cache's count). It stops at the first block
// another sequence cached meanwhile, since shared pages must lead the
// sequence's page list. Called with b.mu held.
func (b *Backend) donate(s *sequence) {
	c := &b.kv.prefix
	if !c.enabled || s.donated {
		return
	}
	end := min(len(s.hashes), s.pos/kvPageTokens, len(s.kv.pages))
	for s.shared < end {
		h := s.hashes[s.shared]
		if _, ok := c.entries[h]; ok {
			s.donated = true
			return
		}
		c.entries[h] = &prefixEntry{hash: h, page: s.kv.pages[s.shared], refs: 1}
		s.shared++
		s.reserved--
		b.kv.reserved--
		b.kv.cached++
	}
}
