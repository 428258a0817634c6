package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// WriteText prints a human-readable report ending with the SLO table.
func WriteText(w io.Writer, r Report) error {
	ew := &errWriter{w: w}
	p := ew.printf
	load := fmt.Sprintf("closed loop, concurrency %d", r.Concurrency)
	if r.Mode == "open" {
		load = fmt.Sprintf("open loop, %.1f req/s offered (achieved send rate %.1f/s, max send lag %.1fms)", r.Rate, r.SendRate, r.MaxSendLagMs)
	}
	stream := ""
	if r.Stream {
		stream = ", streaming"
	}
	p("shoal bench: %s  model %s  endpoint %s%s\n", r.URL, r.Model, r.Endpoint, stream)
	p("load:        %s\n", load)
	p("requests:    %d sent (%d ok, %d errors), %d dropped, %.2fs\n", r.Requests, r.OK, r.Errors, r.Dropped, r.Elapsed)
	p("throughput:  %.1f req/s", r.RequestsPerSec)
	if r.OutputTokens > 0 {
		p(", %.1f output tokens/s (%d tokens)", r.OutputTokensPerSec, r.OutputTokens)
	}
	p("\n")
	l := r.Latency
	p("latency:     p50 %s  p90 %s  p95 %s  p99 %s  max %s  (mean %s, %d ok)\n",
		fmtMs(l.P50), fmtMs(l.P90), fmtMs(l.P95), fmtMs(l.P99), fmtMs(l.Max), fmtMs(l.Mean), l.Count)
	if r.TTFT != nil {
		p("ttft:        p50 %s  p95 %s  p99 %s\n", fmtMs(r.TTFT.P50), fmtMs(r.TTFT.P95), fmtMs(r.TTFT.P99))
	}
	if r.InterToken != nil {
		p("inter-token: p50 %s  p99 %s\n", fmtMs(r.InterToken.P50), fmtMs(r.InterToken.P99))
	}
	if len(r.ErrorsByStatus) > 0 {
		keys := sortedKeys(r.ErrorsByStatus)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%d", k, r.ErrorsByStatus[k])
		}
		p("errors:      %s\n", strings.Join(parts, " "))
	}
	if c := r.Cause(); c != "" {
		p("cause:       %s\n", c)
	}
	if r.Cache.Seen {
		p("cache:       %.1f%% hit ratio (%d hits, %d misses, %d bypass)\n", r.Cache.HitRatio*100, r.Cache.Hits, r.Cache.Misses, r.Cache.Bypass)
	} else {
		p("cache:       no X-Shoal-Cache header seen\n")
	}
	if len(r.Nodes) > 0 {
		shares := r.NodeShares()
		keys := sortedKeys(r.Nodes)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s %.1f%% (%d)", k, shares[k]*100, r.Nodes[k])
		}
		p("nodes:       %s\n", strings.Join(parts, ", "))
	}
	p("\nSLO\n")
	tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tvalue\ttarget\tcritical\tstatus")
	for _, s := range r.SLO {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Display, s.Target, s.Critical, s.Status)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	p("overall: %s\n", Worst(r.SLO))
	return ew.err
}

// WriteJSON writes the report as indented JSON (samples left out).
func WriteJSON(w io.Writer, r Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func fmtMs(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 10:
		return fmt.Sprintf("%.0fms", v)
	}
	return fmt.Sprintf("%.1fms", v)
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// errWriter keeps the first write error so printing code stays linear.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(b []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(b)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, args ...any) {
	fmt.Fprintf(e, format, args...)
}
