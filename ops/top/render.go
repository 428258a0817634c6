package top

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// clearScreen moves the cursor home and clears the terminal, so each frame
// replaces the last without scrolling.
const clearScreen = "\x1b[H\x1b[2J"

// Render writes a frame as plain text.
func Render(w io.Writer, f Frame) error {
	var b strings.Builder
	fmt.Fprintf(&b, "shoal top  %s  via %s  leader %s  members %d\n\n", f.At.Format("15:04:05"), f.Via, orDash(f.Leader), len(f.Members))
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATE\tROLE\tREQ/S\tTOK/S\tCACHE HIT\tMODEL\tQUEUE\tBATCHES\tSLOTS\tMODEL TOK/S")
	for _, m := range f.Members {
		reqs, toks := "…", "…"
		if m.Rated {
			reqs, toks = fmt.Sprintf("%.1f", m.RequestsPerSec), fmt.Sprintf("%.1f", m.TokensPerSec)
		}
		cache := "-"
		if m.CacheKnown {
			cache = fmt.Sprintf("%.1f%%", 100*m.CacheHitRatio)
		}
		if m.Err != "" {
			reqs, toks, cache = "?", "?", "?"
		}
		head := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", m.Name, orDash(m.State), orDash(m.Role), reqs, toks, cache)
		if len(m.Models) == 0 {
			fmt.Fprintf(tw, "%s\t-\t\t\t\t\n", head)
		}
		for i, md := range m.Models {
			if i > 0 {
				head = "\t\t\t\t\t"
			}
			mt := "…"
			if m.Rated {
				mt = fmt.Sprintf("%.1f", md.TokensPerSec)
			}
			slots := "-"
			if md.Slots > 0 {
				slots = fmt.Sprint(md.Slots)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", head, md.Name, md.QueueDepth, md.ActiveBatches, slots, mt)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	b.WriteString("\n")
	var notClosed []string
	for _, br := range f.Breakers {
		if br.State != "closed" {
			s := fmt.Sprintf("%s/%s %s", br.Node, br.Model, br.State)
			if br.Reason != "" {
				s += " (" + br.Reason + ")"
			}
			notClosed = append(notClosed, s)
		}
	}
	sort.Strings(notClosed)
	switch {
	case len(notClosed) > 0:
		fmt.Fprintf(&b, "breakers: %s\n", strings.Join(notClosed, ", "))
	case len(f.Breakers) == 0:
		b.WriteString("breakers: none tripped yet\n")
	default:
		fmt.Fprintf(&b, "breakers: all %d closed\n", len(f.Breakers))
	}
	for _, m := range f.Members {
		if m.Err != "" {
			fmt.Fprintf(&b, "! %s: %s\n", m.Name, m.Err)
		}
	}
	for _, warn := range f.Warnings {
		fmt.Fprintf(&b, "! %s\n", warn)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Run redraws the view every interval until ctx ends or q is pressed on
// cfg.Keys. With once it takes two scrapes an interval apart (so rates are
// real) and prints a single frame without terminal control codes.
func Run(ctx context.Context, cfg Config, w io.Writer, once bool) error {
	c, err := New(cfg)
	if err != nil {
		return err
	}
	if cfg.Keys != nil && !once {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		// The reader may block until the process ends (a terminal); the
		// goroutine then ends with it.
		go watchQuit(cfg.Keys, cancel)
	}
	if once {
		if _, err := c.Collect(ctx); err != nil {
			return err
		}
		if err := sleep(ctx, c.cfg.Interval); err != nil {
			return err
		}
		f, err := c.Collect(ctx)
		if err != nil {
			return err
		}
		return Render(w, f)
	}
	for {
		f, err := c.Collect(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if _, werr := io.WriteString(w, clearScreen); werr != nil {
			return werr
		}
		if err != nil {
			// Keep watching: the node may be restarting.
			fmt.Fprintf(w, "shoal top  %s  %v\n", time.Now().Format("15:04:05"), err)
		} else if err := Render(w, f); err != nil {
			return err
		}
		if sleep(ctx, c.cfg.Interval) != nil {
			return nil
		}
	}
}

// watchQuit calls quit when q or Q is read. The end of keys (stdin is
// /dev/null under a supervisor) is not a request to quit.
func watchQuit(keys io.Reader, quit func()) {
	buf := make([]byte, 64)
	for {
		n, err := keys.Read(buf)
		for _, b := range buf[:n] {
			if b == 'q' || b == 'Q' {
				quit()
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
