package tune

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteText prints each model's steps as a table, the decision, and the
// advice.
func WriteText(w io.Writer, res Result, p95Target string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, m := range res.Models {
		fmt.Fprintf(tw, "model %s (was %s, p95 target %s)\n", m.Model, m.Original, p95Target)
		fmt.Fprintln(tw, "phase\tmax_size\tflush\treq/s\tp50\tp95\tp99\terrors\tmeets target\t")
		for _, s := range m.Steps {
			mark := ""
			if m.Best != nil && s.Setting == m.Best.Setting {
				mark = "  <- best"
			}
			if s.Err != "" {
				fmt.Fprintf(tw, "%s\t%d\t%s\tfailed: %s\t\t\t\t\t\t%s\n", s.Phase, s.MaxSize, s.FlushTimeout, s.Err, mark)
				continue
			}
			ok := "no"
			if s.Feasible {
				ok = "yes"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%.1f\t%.0fms\t%.0fms\t%.0fms\t%.2f%%\t%s\t%s\n",
				s.Phase, s.MaxSize, s.FlushTimeout, s.RPS, s.P50Ms, s.P95Ms, s.P99Ms, 100*s.ErrorRate, ok, mark)
		}
		fmt.Fprintf(tw, "=> %s\n\n", m.Note)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return WriteAdvice(w, res.Advice)
}

// WriteAdvice prints the troubleshooting advice, or that there is none.
func WriteAdvice(w io.Writer, advice []Advice) error {
	if len(advice) == 0 {
		_, err := fmt.Fprintln(w, "advice: no symptom from the troubleshooting guide in the node's metrics and health")
		return err
	}
	if _, err := fmt.Fprintln(w, "advice:"); err != nil {
		return err
	}
	for _, a := range advice {
		if _, err := fmt.Fprintf(w, "- %s\n", a.Symptom); err != nil {
			return err
		}
		for _, s := range a.Steps {
			if _, err := fmt.Fprintf(w, "    * %s\n", s); err != nil {
				return err
			}
		}
	}
	return nil
}
