package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
)

// targets is the set of nodes clients may use: the healthy ones.
type targets struct {
	v atomic.Pointer[[]*proc]
	n atomic.Uint64
}

func (t *targets) set(ps ...*proc) { t.v.Store(&ps) }

// pick returns the next target, round robin, and another one for the retry.
func (t *targets) pick() (*proc, *proc) {
	ps := *t.v.Load()
	if len(ps) == 0 {
		return nil, nil
	}
	i := int(t.n.Add(1))
	return ps[i%len(ps)], ps[(i+1)%len(ps)]
}

// stats accumulates the client side of a scenario.
type stats struct {
	mu       sync.Mutex
	total    int
	failed   int
	lat      []time.Duration
	failures map[string]int
}

func (s *stats) add(d time.Duration, failure string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total++
	if failure != "" {
		s.failed++
		if s.failures == nil {
			s.failures = map[string]int{}
		}
		if len(s.failures) < 20 {
			s.failures[failure]++
		}
		return
	}
	s.lat = append(s.lat, d)
}

func (s *stats) errPct() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total == 0 {
		return 0
	}
	return 100 * float64(s.failed) / float64(s.total)
}

func (s *stats) p99() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lat) == 0 {
		return 0
	}
	l := slices.Clone(s.lat)
	slices.Sort(l)
	return l[(len(l)*99)/100]
}

// load sends chat requests to the targets from a few closed-loop workers,
// bounded in time by ctx and in count by maxRequests. Half the prompts are
// cacheable (temperature 0, a small set), half not. A failed request is
// retried once on another target, as the README tells clients to.
type load struct {
	tg      *targets
	st      *stats
	workers int
	client  *http.Client
}

const maxRequests = 400_000

func newLoad(tg *targets, st *stats) *load {
	return &load{tg: tg, st: st, workers: 6, client: &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: 30 * time.Second},
	}}
}

// run blocks until ctx ends.
func (l *load) run(ctx context.Context) {
	var wg sync.WaitGroup
	var sent atomic.Int64
	for w := range l.workers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil && sent.Add(1) < maxRequests; i++ {
				body := l.body(w, i)
				start := time.Now()
				a, b := l.tg.pick()
				if a == nil {
					time.Sleep(50 * time.Millisecond) // no target: not a sync point
					continue
				}
				failure := l.once(ctx, a, body)
				if failure != "" && ctx.Err() == nil {
					failure = l.once(ctx, b, body)
				}
				if ctx.Err() != nil {
					return // the window closed mid-request: neither success nor failure
				}
				l.st.add(time.Since(start), failure)
			}
		})
	}
	wg.Wait()
}

func (l *load) body(worker, i int) []byte {
	temp := 0.0
	prompt := fmt.Sprintf("chaos prompt %d", i%40)
	if i%2 == 1 {
		temp, prompt = 0.8, fmt.Sprintf("chaos prompt w%d i%d", worker, i)
	}
	b, _ := json.Marshal(map[string]any{
		"model":       "sim-fast",
		"messages":    []map[string]string{{"role": "user", "content": prompt}},
		"max_tokens":  8,
		"temperature": temp,
	})
	return b
}

// once sends one request; it returns "" on success, else what went wrong.
func (l *load) once(ctx context.Context, p *proc, body []byte) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url("/v1/chat/completions"), bytes.NewReader(body))
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		return "transport error"
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("status %d", resp.StatusCode)
	}
	return ""
}

// register is porcupine's model of rate_limit default_rpm, written by PUT
// /admin/v1/limits and read by GET /admin/v1/limits.
type regInput struct {
	write bool
	value int
}

var registerModel = porcupine.Model{
	Init: func() any { return baseRPM },
	Step: func(state, input, output any) (bool, any) {
		in := input.(regInput)
		if in.write {
			return true, in.value
		}
		return output.(int) == state.(int), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(regInput)
		if in.write {
			return fmt.Sprintf("write(%d)", in.value)
		}
		return fmt.Sprintf("read() -> %d", output.(int))
	},
}

// admin writes increasing values to the register through the targets (so
// followers forward to the leader) and reads it on the leader, recording
// a history for porcupine. A write that fails may still have been applied:
// it is recorded as pending forever (Return at infinity).
type admin struct {
	c      *cluster
	tg     *targets
	token  string
	client *http.Client
	start  time.Time

	mu      sync.Mutex
	history []porcupine.Operation
	next    int
	acked   []int
	failed  int
	refused int
	refusal string
	whyFail map[string]int // unknown-outcome writes by cause
}

func newAdmin(c *cluster, tg *targets) *admin {
	return &admin{c: c, tg: tg, token: c.cfg.adminToken, start: time.Now(), next: baseRPM,
		client: &http.Client{Timeout: 3 * time.Second}}
}

func (a *admin) now() int64 { return int64(time.Since(a.start)) }

func (a *admin) record(op porcupine.Operation) {
	a.mu.Lock()
	a.history = append(a.history, op)
	a.mu.Unlock()
}

func (a *admin) do(ctx context.Context, method string, p *proc, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.url(path), rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// run writes and reads every 100 ms until ctx ends.
func (a *admin) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			a.write(ctx)
			sleepCtx(ctx, 100*time.Millisecond)
		}
	})
	wg.Go(func() {
		for ctx.Err() == nil {
			a.leaderRead(ctx)
			sleepCtx(ctx, 100*time.Millisecond)
		}
	})
	wg.Wait()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (a *admin) write(ctx context.Context) {
	p, _ := a.tg.pick()
	if p == nil {
		return
	}
	a.mu.Lock()
	a.next++
	v := a.next
	a.mu.Unlock()
	call := a.now()
	// The write's own context is not the scenario's: a write cut off by the
	// end of the window would be ambiguous for no reason.
	wctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	code, body, err := a.do(wctx, http.MethodPut, p, "/admin/v1/limits", map[string]any{"default_rpm": v})
	ret := a.now()
	op := porcupine.Operation{ClientId: 0, Input: regInput{write: true, value: v}, Call: call, Output: 0, Return: ret}
	switch {
	case err == nil && code == http.StatusOK:
		a.mu.Lock()
		a.acked = append(a.acked, v)
		a.mu.Unlock()
	case err == nil && code >= 400 && code < 500:
		a.mu.Lock()
		a.refused++
		a.refusal = fmt.Sprintf("%d %s", code, bytes.TrimSpace(body))
		a.mu.Unlock()
		return // refused before Raft: never applied
	default:
		op.Return = math.MaxInt64
		why := "transport error or timeout"
		if err == nil {
			why = fmt.Sprintf("status %d", code)
		}
		a.mu.Lock()
		a.failed++
		if a.whyFail == nil {
			a.whyFail = map[string]int{}
		}
		a.whyFail[why]++
		a.mu.Unlock()
	}
	a.record(op)
}

// readAt reads the register on p: its local FSM state.
func (a *admin) readAt(ctx context.Context, p *proc) (int, error) {
	code, body, err := a.do(ctx, http.MethodGet, p, "/admin/v1/limits", nil)
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("read limits on %s: status %d", p.name, code)
	}
	var pol struct {
		DefaultRPM int `json:"default_rpm"`
	}
	if err := json.Unmarshal(body, &pol); err != nil {
		return 0, fmt.Errorf("read limits on %s: %w", p.name, err)
	}
	return pol.DefaultRPM, nil
}

// leaderRead reads on a target that says it leads before and after the
// read; a read whose node lost the lead in between is dropped.
func (a *admin) leaderRead(ctx context.Context) {
	ps := *a.tg.v.Load()
	for _, p := range ps {
		call := a.now()
		h, err := getHealth(ctx, p)
		if err != nil {
			continue
		}
		if _, is := h.leader(); !is {
			continue
		}
		v, err := a.readAt(ctx, p)
		if err != nil {
			return
		}
		h, err = getHealth(ctx, p)
		if err != nil {
			return
		}
		if _, is := h.leader(); !is {
			return
		}
		a.record(porcupine.Operation{ClientId: 1, Input: regInput{}, Call: call, Output: v, Return: a.now()})
		return
	}
}

// verdict is the write check of a scenario.
type verdict struct {
	acked, failed, lost int
	refused             int
	refusal             string
	whyFail             map[string]int
	result              porcupine.CheckResult
	finals              map[string]int
	detail              string
}

// check waits (up to 15 s) for every running node to hold the same value,
// records a final read on each, counts acknowledged writes above the lowest
// final value as lost, and runs porcupine over the whole history.
func (a *admin) check(ctx context.Context) verdict {
	var v verdict
	deadline := time.Now().Add(15 * time.Second)
	for {
		v.finals = map[string]int{}
		same := true
		first := -1
		for _, p := range a.c.nodes {
			if !p.running() {
				continue
			}
			val, err := a.readAt(ctx, p)
			if err != nil {
				same = false
				continue
			}
			v.finals[p.name] = val
			if first >= 0 && val != first {
				same = false
			}
			first = val
		}
		if same && len(v.finals) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // waiting for followers to apply; bounded by the deadline
	}
	for _, p := range a.c.nodes {
		if !p.running() {
			continue
		}
		call := a.now()
		if val, err := a.readAt(ctx, p); err == nil {
			a.record(porcupine.Operation{ClientId: 2 + p.idx, Input: regInput{}, Call: call, Output: val, Return: a.now()})
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	v.acked, v.failed = len(a.acked), a.failed
	v.refused, v.refusal, v.whyFail = a.refused, a.refusal, maps.Clone(a.whyFail)
	low := math.MaxInt
	for _, f := range v.finals {
		low = min(low, f)
	}
	for _, w := range a.acked {
		if w > low {
			v.lost++
		}
	}
	res, info := porcupine.CheckOperationsVerbose(registerModel, prune(a.history), 30*time.Second)
	v.result = res
	if res == porcupine.Illegal {
		v.detail = describeIllegal(info)
	}
	return v
}

// prune drops the writes of unknown outcome whose value no read returned.
// Such a write, pending forever, can always be placed after every other
// operation, so the history is linearizable with it exactly when it is
// without; and each one kept multiplies porcupine's search.
func prune(history []porcupine.Operation) []porcupine.Operation {
	seen := map[int]bool{}
	for _, op := range history {
		if !op.Input.(regInput).write {
			seen[op.Output.(int)] = true
		}
	}
	out := make([]porcupine.Operation, 0, len(history))
	for _, op := range history {
		in := op.Input.(regInput)
		if in.write && op.Return == math.MaxInt64 && !seen[in.value] {
			continue
		}
		out = append(out, op)
	}
	return out
}

// describeIllegal names the longest linearizable prefix's end, for the log.
func describeIllegal(info porcupine.LinearizationInfo) string {
	parts := info.PartialLinearizations()
	if len(parts) == 0 || len(parts[0]) == 0 {
		return "no linearization"
	}
	longest := parts[0][0]
	for _, p := range parts[0] {
		if len(p) > len(longest) {
			longest = p
		}
	}
	return fmt.Sprintf("longest linearizable prefix: %d operations", len(longest))
}

// sortedFailures lists a scenario's client failures, most frequent first.
func (s *stats) sortedFailures() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	type kv struct {
		k string
		v int
	}
	var l []kv
	for k, v := range s.failures {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v })
	out := ""
	for _, e := range l {
		out += fmt.Sprintf("%s x%d; ", e.k, e.v)
	}
	return out
}
