// Package top is `shoal top`: a terminal view of a cluster (members, roles,
// models, queue depth, running batches, tokens per second, cache hit ratio
// and circuit breakers) refreshed every interval, like top for the cluster.
// It reads GET /admin/v1/cluster and /admin/v1/breakers from one node and
// each member's /metrics; rates come from the difference of two scrapes.
package top

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops/adminapi"
	"github.com/shoal-dev/shoal/ops/bench"
	"github.com/shoal-dev/shoal/ops/tune"
)

// ErrBadConfig wraps every invalid Config field.
var ErrBadConfig = errors.New("invalid top config")

// Config describes what top watches.
type Config struct {
	// URL is any member's base URL; Token its admin token.
	URL   string
	Token string
	// Interval between frames (default 1s).
	Interval time.Duration
	// Client fetches everything; nil makes one with a short timeout.
	Client *http.Client
	// Logger receives debug logs; nil discards them.
	Logger *slog.Logger
	// Keys, when set, is read for key presses while Run redraws: q (or
	// Q) quits. The CLI passes the terminal.
	Keys io.Reader
}

// ModelRow is one model on one member.
type ModelRow struct {
	Name          string  `json:"name"`
	QueueDepth    int     `json:"queue_depth"`
	ActiveBatches int     `json:"active_batches"`
	Slots         int     `json:"slots"`
	TokensPerSec  float64 `json:"tokens_per_sec"`
}

// MemberRow is one member's line.
type MemberRow struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Role  string `json:"role"`
	Addr  string `json:"addr"`
	// RequestsPerSec and TokensPerSec (completion tokens) are rates over
	// the last interval; Rated is false on the first scrape.
	RequestsPerSec float64 `json:"requests_per_sec"`
	TokensPerSec   float64 `json:"tokens_per_sec"`
	Rated          bool    `json:"rated"`
	// CacheHitRatio covers the interval's lookups, or all lookups since
	// start when the interval had none; CacheKnown is false without any.
	CacheHitRatio float64    `json:"cache_hit_ratio"`
	CacheKnown    bool       `json:"cache_known"`
	Models        []ModelRow `json:"models"`
	// Err is why the member's metrics are missing.
	Err string `json:"error,omitempty"`
}

// Frame is one refresh of the view.
type Frame struct {
	At       time.Time                `json:"at"`
	Via      string                   `json:"via"`
	Leader   string                   `json:"leader"`
	Members  []MemberRow              `json:"members"`
	Breakers []consensus.BreakerState `json:"breakers"`
	// Warnings are shown under the table (admin API missing, and so on).
	Warnings []string `json:"warnings,omitempty"`
}

// Collector builds frames, keeping the previous scrape of each member for
// rates.
type Collector struct {
	cfg   Config
	base  *url.URL
	admin *adminapi.Client
	log   *slog.Logger

	mu   sync.Mutex
	prev map[string]tune.Snapshot
	// fallback is set while the admin API is unavailable.
	fallback bool
}

// New validates cfg and returns a collector.
func New(cfg Config) (*Collector, error) {
	u, err := url.Parse(strings.TrimRight(cfg.URL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: url must be http(s)://host[:port], got %q", ErrBadConfig, cfg.URL)
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	if cfg.Interval < 10*time.Millisecond {
		return nil, fmt.Errorf("%w: interval must be at least 10ms, got %s", ErrBadConfig, cfg.Interval)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 5 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.URL = u.String()
	return &Collector{cfg: cfg, base: u, admin: adminapi.NewClient(cfg.URL, cfg.Token, cfg.Client),
		log: cfg.Logger.With("component", "top"), prev: map[string]tune.Snapshot{}}, nil
}

// Collect gathers one frame; calls must not overlap. It fails only when the
// node at URL cannot be reached at all; a member that cannot be scraped
// gets an Err.
func (c *Collector) Collect(ctx context.Context) (Frame, error) {
	f := Frame{At: time.Now(), Via: c.cfg.URL}
	c.fallback = false
	cl, err := c.admin.Cluster(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return f, ctx.Err()
		}
		// Without the admin API top still shows the node it talks to.
		h, herr := tune.GetHealth(ctx, c.cfg.Client, c.cfg.URL)
		if herr != nil {
			return f, fmt.Errorf("cluster view: %w; health: %w", err, herr)
		}
		f.Warnings = append(f.Warnings, fmt.Sprintf("cluster view unavailable (%v); showing %s only", err, h.Node))
		c.fallback = true
		cl = adminapi.ClusterView{Node: h.Node, Members: []adminapi.MemberView{{Name: h.Node, State: h.Status, Role: "?", HTTPAddr: c.base.Host}}}
	}
	f.Leader = cl.Leader
	if br, err := c.admin.Breakers(ctx); err == nil {
		f.Breakers = br
	} else if ctx.Err() == nil && len(f.Warnings) == 0 {
		f.Warnings = append(f.Warnings, fmt.Sprintf("breakers unavailable: %v", err))
	}
	rows := make([]MemberRow, len(cl.Members))
	var wg sync.WaitGroup
	for i, m := range cl.Members {
		wg.Go(func() { rows[i] = c.member(ctx, cl.Node, m) })
	}
	wg.Wait()
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	f.Members = rows
	return f, nil
}

// memberURL is where a member's HTTP port is reached from here. The member
// answering is reached through URL itself, and an unspecified host
// (0.0.0.0) takes URL's host.
func (c *Collector) memberURL(via string, m adminapi.MemberView) string {
	if m.Name == via || m.HTTPAddr == "" {
		return c.cfg.URL
	}
	host, port, err := net.SplitHostPort(m.HTTPAddr)
	if err != nil {
		return c.base.Scheme + "://" + m.HTTPAddr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = c.base.Hostname()
	}
	return c.base.Scheme + "://" + net.JoinHostPort(host, port)
}

func (c *Collector) member(ctx context.Context, via string, m adminapi.MemberView) MemberRow {
	row := MemberRow{Name: m.Name, State: m.State, Role: m.Role, Addr: m.HTTPAddr}
	for name, l := range m.Models {
		row.Models = append(row.Models, ModelRow{Name: name, QueueDepth: l.QueueDepth, ActiveBatches: l.ActiveBatches, Slots: l.Slots})
	}
	snap, err := tune.Scrape(ctx, c.cfg.Client, c.memberURL(via, m))
	if err != nil {
		row.Err = err.Error()
		sortModels(row.Models)
		return row
	}
	c.mu.Lock()
	prev, had := c.prev[m.Name]
	c.prev[m.Name] = snap
	c.mu.Unlock()

	// Without the cluster view (the fallback) the models come from
	// /v1/models and their load from the metrics.
	if c.fallback {
		depth := snap.By("inference_queue_depth", "model", nil)
		batches := snap.By("inference_active_batches", "model", nil)
		names, err := bench.Models(ctx, c.cfg.Client, c.cfg.URL, "")
		if err != nil {
			row.Err = err.Error()
		}
		for _, name := range names {
			row.Models = append(row.Models, ModelRow{Name: name, QueueDepth: int(depth[name]), ActiveBatches: int(batches[name])})
		}
	}
	completion := tune.Labels{"type": "completion"}
	hits, misses := snap.Sum("inference_cache_hits_total", nil), snap.Sum("inference_cache_misses_total", nil)
	if had {
		if dt := snap.At.Sub(prev.At).Seconds(); dt > 0 {
			row.Rated = true
			row.RequestsPerSec = rate(snap.Sum("inference_requests_total", nil), prev.Sum("inference_requests_total", nil), dt)
			row.TokensPerSec = rate(snap.Sum("inference_tokens_total", completion), prev.Sum("inference_tokens_total", completion), dt)
			now, before := snap.By("inference_tokens_total", "model", completion), prev.By("inference_tokens_total", "model", completion)
			for i := range row.Models {
				row.Models[i].TokensPerSec = rate(now[row.Models[i].Name], before[row.Models[i].Name], dt)
			}
		}
		dh := hits - prev.Sum("inference_cache_hits_total", nil)
		dm := misses - prev.Sum("inference_cache_misses_total", nil)
		if dh >= 0 && dm >= 0 && dh+dm > 0 {
			hits, misses = dh, dm
		}
	}
	if hits+misses > 0 {
		row.CacheKnown, row.CacheHitRatio = true, hits/(hits+misses)
	}
	sortModels(row.Models)
	return row
}

// rate is a counter's increase per second; a reset (restart) counts from 0.
func rate(now, before, dt float64) float64 {
	if now < before {
		before = 0
	}
	return (now - before) / dt
}

func sortModels(ms []ModelRow) {
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
}
