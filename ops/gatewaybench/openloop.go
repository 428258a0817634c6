package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// openTarget is one path of the open-loop table.
type openTarget struct {
	name    string
	url     string
	node    string // the shoal node measured, for -profile
	headers []string
	// cpuOf is the process group doing the path's work (0: this process).
	cpuOf   []int
	results []openResult
}

// openResult is one `shoal bench --rate` run's summary.
type openResult struct {
	requests, errors int64
	p50, p99, max    time.Duration
	cpuPerReq        time.Duration
	// clientPerReq is the load generator's CPU per request; busy is the
	// share of the whole machine's CPU in use during the round. A p99 of a
	// round near 1.0 busy is the box's queueing, not only the node's.
	clientPerReq time.Duration
	busy         float64
}

// benchReport is the part of `shoal bench --json` read here.
type benchReport struct {
	Requests int64 `json:"requests"`
	Errors   int64 `json:"errors"`
	Latency  struct {
		P50 float64 `json:"p50_ms"`
		P99 float64 `json:"p99_ms"`
		Max float64 `json:"max_ms"`
	} `json:"latency"`
}

// openLoop measures what shoal adds to latency under open-loop load:
// `shoal bench --rate R` (latency counted from each request's scheduled
// send, unique prompts) drives a bare net/http server answering a fixed
// chat completion, then a shoal node's zero-cost sim model without the
// cache (no-store) and as users run it (each unique answer stored in
// Olric), in interleaved rounds. The same client drives every row, so
// its own send lag is in each row alike and the difference in p99 is
// shoal's.
func openLoop(o options) error {
	if _, err := os.Stat(o.shoal); err != nil {
		fmt.Printf("skip: no shoal binary at %s (make build)\n", o.shoal)
		return nil
	}
	dir, p, done, err := workDir(o, "gatewaybench-open-")
	if err != nil {
		return err
	}
	defer done()

	fixedURL, stop, err := startNetFixed()
	if err != nil {
		return fmt.Errorf("fixed-answer server: %w", err)
	}
	defer stop()
	nodeURL, err := startShoalOlric(p, dir, o.shoal, "bench-open", "", "")
	if err != nil {
		return fmt.Errorf("shoal: %w (logs in %s; -keep keeps them)", err, dir)
	}
	node := []int{p.last()}
	// The same node as users run it but without the GC heap floor
	// (gc.heap_floor_bytes = 0): what the floor is worth under this load.
	noFloorURL, err := startShoalOlric(p, dir, o.shoal, "bench-open-gc", "", "gc { heap_floor_bytes = 0 }\n")
	if err != nil {
		return fmt.Errorf("shoal: %w (logs in %s; -keep keeps them)", err, dir)
	}
	noFloor := []int{p.last()}
	// A single node on the in-process backend (cache.backend = "local"),
	// whose stored answers live on the Go heap the collector marks.
	localURL, _, err := startShoalNode(p, dir, o.shoal, "bench-open-local", "", "local", simModel("sim0"))
	if err != nil {
		return fmt.Errorf("shoal: %w (logs in %s; -keep keeps them)", err, dir)
	}
	local := []int{p.last()}
	targets := []*openTarget{
		{name: "net/http server, fixed answer (baseline)", url: fixedURL, cpuOf: []int{0}},
		{name: "shoal, zero-cost sim model (no-store)", url: nodeURL, node: nodeURL, cpuOf: node, headers: []string{"Cache-Control: " + noCache}},
		{name: "shoal, zero-cost sim model (unique answers stored, default)", url: nodeURL, node: nodeURL, cpuOf: node},
		{name: "shoal, unique answers stored, local backend", url: localURL, node: localURL, cpuOf: local},
		{name: "shoal, unique answers stored, GC heap floor off", url: noFloorURL, node: noFloorURL, cpuOf: noFloor},
	}
	// -only narrows the shoal rows; the baseline row always runs, since
	// every other row's p99 is read against it.
	if o.only != "" {
		base := targets[0]
		targets = slices.DeleteFunc(targets, func(t *openTarget) bool {
			return t != base && !containsAny(t.name, o.only)
		})
	}
	for round := 0; round < o.rounds; round++ {
		for _, t := range targets {
			var prof chan error
			if o.profile != "" && round == 0 && t.node != "" {
				prof = make(chan error, 1)
				go func() { prof <- cpuProfile(t.node, t.name, o, o.warmup) }()
			}
			r, err := runOpenLoop(o, dir, t)
			if prof != nil {
				if perr := <-prof; perr != nil {
					fmt.Fprintln(os.Stderr, "profile:", perr)
				}
			}
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			fmt.Fprintf(os.Stderr, "round %d  %-62s p99 %s\n", round+1, t.name, ms(r.p99))
			t.results = append(t.results, r)
		}
	}
	printOpenLoop(os.Stdout, targets, o)
	return nil
}

// runOpenLoop runs one `shoal bench --rate` against t.
func runOpenLoop(o options, dir string, t *openTarget) (openResult, error) {
	out := filepath.Join(dir, "open.json")
	args := []string{"bench", "--node", t.url, "--model", "sim0", "--rate", fmt.Sprint(o.openRate),
		"--duration", o.duration.String(), "--requests", "0", "--warmup", o.warmup.String(), "--quiet", "--json", out}
	for _, h := range t.headers {
		args = append(args, "--header", h)
	}
	cmd := exec.Command(o.shoal, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	before := cpuTime(t.cpuOf)
	busy0, total0 := boxTicks()
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return openResult{}, fmt.Errorf("shoal bench: %w", err)
	}
	spent := cpuTime(t.cpuOf) - before
	busy1, total1 := boxTicks()
	client := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	raw, err := os.ReadFile(out)
	if err != nil {
		return openResult{}, err
	}
	var rep benchReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		return openResult{}, fmt.Errorf("shoal bench report: %w", err)
	}
	msDur := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	r := openResult{requests: rep.Requests, errors: rep.Errors, p50: msDur(rep.Latency.P50), p99: msDur(rep.Latency.P99), max: msDur(rep.Latency.Max),
		busy: busyShare(busy0, total0, busy1, total1)}
	// The warmup's requests are served too: spread the CPU over all sent.
	if sent := float64(rep.Requests) * float64(time.Since(start)) / float64(o.duration); sent > 0 {
		r.cpuPerReq = time.Duration(float64(spent) / sent)
		r.clientPerReq = time.Duration(float64(client) / sent)
	}
	return r, nil
}

// printOpenLoop prints each target's median-p99 round and its p99 over the
// baseline's median round.
func printOpenLoop(w io.Writer, targets []*openTarget, o options) {
	median := func(t *openTarget) openResult {
		rs := slices.Clone(t.results)
		slices.SortFunc(rs, func(a, b openResult) int { return cmp.Compare(a.p99, b.p99) })
		return rs[len(rs)/2]
	}
	fmt.Fprintf(w, "\nshoal bench --rate %.0f, %s per round after %s warmup, unique prompts, %d interleaved rounds (median p99 round shown);\n",
		o.openRate, o.duration, o.warmup, o.rounds)
	fmt.Fprintf(w, "latency counts from each request's scheduled send; CPU/req is the serving process's, warmup included;\n")
	fmt.Fprintf(w, "client is shoal bench's own CPU/req; busy is the machine's CPU in use over the round (near 100%%, the p99 is the box's queueing)\n\n")
	fmt.Fprintf(w, "%62s %9s %7s %9s %9s %9s %11s %12s %12s %6s\n", "path", "requests", "errors", "p50", "p99", "max", "p99 added", "CPU/req", "client", "busy")
	base := median(targets[0])
	for _, t := range targets {
		m := median(t)
		added := "-"
		if t != targets[0] {
			added = fmt.Sprintf("%+.2f ms", float64(m.p99-base.p99)/float64(time.Millisecond))
		}
		var p99s []string
		for _, r := range t.results {
			p99s = append(p99s, ms(r.p99))
		}
		fmt.Fprintf(w, "%62s %9d %7d %9s %9s %9s %11s %9.1f us %9.1f us %5.0f%%   (p99 by round: %v)\n",
			t.name, m.requests, m.errors, ms(m.p50), ms(m.p99), ms(m.max), added, float64(m.cpuPerReq)/float64(time.Microsecond),
			float64(m.clientPerReq)/float64(time.Microsecond), 100*m.busy, p99s)
	}
}
