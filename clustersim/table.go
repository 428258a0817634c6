package clustersim

import (
	"fmt"
	"io"
	"time"
)

// Durations of simulated time per cluster size for the scaling table:
// long enough for a stable p99 (tens of thousands of measured requests),
// short enough that 10,000 nodes run in seconds.
var tableDurations = map[int]time.Duration{
	10:    600 * time.Second,
	100:   300 * time.Second,
	1000:  40 * time.Second,
	10000: 10 * time.Second,
}

// DurationFor is the simulated time the scaling table uses for n nodes.
func DurationFor(n int) time.Duration {
	if d, ok := tableDurations[n]; ok {
		return d
	}
	// About 3 million request-seconds, between 10 s and 600 s.
	return min(max(time.Duration(3e6/float64(n))*time.Second/1000, 10*time.Second), 600*time.Second)
}

// Variant is one row kind of the table: a policy and its parameters.
type Variant func(*Config)

// Policy is the Variant that only sets the policy.
func Policy(p string) Variant { return func(c *Config) { c.Policy = p } }

// DefaultVariants are the rows of the README table. Omniscient comes first:
// the other rows are compared with it.
func DefaultVariants() []Variant {
	return []Variant{
		Policy(Omniscient),
		Policy(AllToAll),
		Policy(Epidemic),
		func(c *Config) { c.Policy, c.MaxAge = Epidemic, 200*time.Millisecond },
		func(c *Config) { c.Policy, c.Fanout = Probe, 3 }, // gossip.DefaultFanout
	}
}

// Table runs every variant at every size from base and writes a markdown
// table to w, one row per run, in order. It returns the results.
func Table(w io.Writer, base Config, sizes []int, variants []Variant) ([]Result, error) {
	fmt.Fprintln(w, "| nodes | policy | p50 | p99 | p99 vs omniscient | imbalance (CV) | msgs/node/s | retries | sim time | wall |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	var out []Result
	for _, n := range sizes {
		var omni time.Duration
		for _, v := range variants {
			cfg := base
			cfg.Nodes = n
			v(&cfg)
			if cfg.Duration == 0 {
				cfg.Duration = DurationFor(n)
			}
			r, err := Run(cfg)
			if err != nil {
				return out, fmt.Errorf("%d nodes, %s: %w", n, cfg.Policy, err)
			}
			if cfg.Policy == Omniscient {
				omni = r.P99
			}
			rel := "-"
			if omni > 0 {
				rel = fmt.Sprintf("%+.1f%%", 100*(float64(r.P99)/float64(omni)-1))
			}
			fmt.Fprintf(w, "| %d | %s | %.3f s | %.3f s | %s | %.3f | %.1f | %d | %v | %.1f s |\n", n, label(r.Config), r.P50.Seconds(), r.P99.Seconds(),
				rel, r.Imbalance, r.MsgsPerNodeSec, r.Retries, r.Config.Duration, r.Wall.Seconds())
			out = append(out, r)
		}
	}
	return out, nil
}

func label(c Config) string {
	if c.Policy == Probe {
		return fmt.Sprintf("probe 2 + heartbeat k=%d/%v", c.Fanout, c.Refresh)
	}
	if c.Policy == Epidemic {
		l := fmt.Sprintf("epidemic k=%d/%v +%d", c.Fanout, c.Interval, c.Piggyback)
		if c.MaxAge > 0 {
			l += fmt.Sprintf(" max age %v", c.MaxAge)
		}
		return l
	}
	return c.Policy
}
