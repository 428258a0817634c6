package bench

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// runner holds what every request of a run shares.
type runner struct {
	cfg    Config
	client *http.Client
	picker *picker
}

// Run benchmarks the server described by cfg and returns the measured
// phase's report. When ctx ends early the report covers what finished and
// the error is ctx's.
func Run(ctx context.Context, cfg Config) (Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Report{}, err
	}
	client := cfg.Client
	if client == nil {
		tr := newTransport(cfg, cfg.conns())
		defer tr.CloseIdleConnections()
		client = &http.Client{Transport: tr}
	}
	if cfg.Model == "" {
		m, err := FirstModel(ctx, client, cfg.URL, cfg.APIKey)
		if err != nil {
			return Report{}, err
		}
		cfg.Model = m
	}
	seed := cfg.Seed
	if seed == 0 {
		var b [8]byte
		_, _ = crand.Read(b[:])
		seed = binary.LittleEndian.Uint64(b[:]) | 1
	}
	r := &runner{cfg: cfg, client: client, picker: newPicker(cfg.Prompts, cfg.RepeatRatio, seed)}
	log := cfg.Logger.With("component", "bench")
	if cfg.Warmup > 0 {
		log.Debug("warmup", "duration", cfg.Warmup)
		// Warm-up is bounded by time only; its results are discarded.
		r.phase(ctx, true, 0, cfg.Warmup)
		if err := ctx.Err(); err != nil {
			return Report{}, err
		}
	}
	log.Debug("measuring", "mode", cfg.Mode(), "requests", cfg.Requests, "duration", cfg.Duration)
	agg := r.phase(ctx, false, cfg.Requests, cfg.Duration)
	return agg.report(cfg), ctx.Err()
}

// roundTripCloser is a transport whose pool Run closes when it ends.
type roundTripCloser interface {
	http.RoundTripper
	CloseIdleConnections()
}

// newTransport is a keep-alive pool sized to the load, so connection set-up
// is not measured as server latency. A plain-HTTP run without streams or a
// proxy goes through directTransport, which costs the box less CPU.
func newTransport(cfg Config, conns int) roundTripCloser {
	nt := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          conns,
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	if addr, host, ok := directAddr(cfg); ok {
		return newDirectTransport(directConfig{addr: addr, host: host, maxIdle: conns, other: nt})
	}
	return nt
}

// directAddr is the address a run can reach through directTransport, and
// the URL's host as written: plain HTTP, no streams (their events are read
// as they come, which http.Transport already does well), and no proxy for
// the URL.
func directAddr(cfg Config) (addr, host string, ok bool) {
	if cfg.Stream {
		return "", "", false
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return "", "", false
	}
	if p, err := http.ProxyFromEnvironment(&http.Request{URL: u}); err != nil || p != nil {
		return "", "", false
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	return net.JoinHostPort(u.Hostname(), port), u.Host, true
}

// phase runs one load phase and returns its aggregate.
func (r *runner) phase(ctx context.Context, warmup bool, requests int, dur time.Duration) *aggregate {
	agg := newAggregate(r.cfg.Timeout)
	start := time.Now()
	agg.start = start
	stopProgress := r.progress(agg, warmup, requests, dur)
	defer stopProgress()
	if r.cfg.Rate > 0 {
		r.openLoop(ctx, agg, start, requests, dur)
	} else {
		r.closedLoop(ctx, agg, start, requests, dur)
	}
	return agg
}

// one sends a request scheduled at `at` and records it, unless the run was
// cancelled under it (a cancelled request says nothing about the server).
func (r *runner) one(ctx context.Context, agg *aggregate, at time.Time) {
	p, _ := r.picker.next()
	res := result{scheduled: at}
	r.send(ctx, &res, p)
	if ctx.Err() != nil && !res.ok() {
		return
	}
	agg.add(&res)
}

func (r *runner) closedLoop(ctx context.Context, agg *aggregate, start time.Time, requests int, dur time.Duration) {
	var issued atomic.Int64
	var deadline time.Time
	if dur > 0 {
		deadline = start.Add(dur)
	}
	var wg sync.WaitGroup
	for range r.cfg.Concurrency {
		wg.Go(func() {
			for ctx.Err() == nil {
				if requests > 0 && issued.Add(1) > int64(requests) {
					return
				}
				now := time.Now()
				if !deadline.IsZero() && !now.Before(deadline) {
					return
				}
				r.one(ctx, agg, now)
			}
		})
	}
	wg.Wait()
}

// openLoop sends at fixed intervals from start, whatever the responses do.
// Send times are computed from the start, not from the previous send, so a
// late wake-up is caught up instead of lowering the rate.
//
// Sends go to long-lived workers, one per request in flight, started as
// the load needs them up to MaxInFlight: a goroutine per request cost the
// client a fresh stack grown again on every send (7% of its CPU), and the
// client's CPU is taken from the server it measures when both share a box.
func (r *runner) openLoop(ctx context.Context, agg *aggregate, start time.Time, requests int, dur time.Duration) {
	interval := float64(time.Second) / r.cfg.Rate
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Unbuffered: a send is taken only by a worker waiting for one, so a
	// due request never queues behind busy workers.
	jobs := make(chan time.Time)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(jobs)
	workers := 0
	for i := 0; requests == 0 || i < requests; i++ {
		offset := time.Duration(float64(i) * interval)
		if dur > 0 && offset >= dur {
			return
		}
		at := start.Add(offset)
		if wait := time.Until(at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		} else if ctx.Err() != nil {
			return
		}
		select {
		case jobs <- at:
		default:
			if workers == r.cfg.MaxInFlight {
				agg.drop(at)
				continue
			}
			workers++
			wg.Go(func() {
				r.one(ctx, agg, at)
				for at := range jobs {
					r.one(ctx, agg, at)
				}
			})
		}
	}
}

// progress reports the phase's counters periodically until stopped.
func (r *runner) progress(agg *aggregate, warmup bool, requests int, dur time.Duration) (stop func()) {
	if r.cfg.Progress == nil {
		return func() {}
	}
	snap := func() Progress {
		done, errs := agg.counts()
		return Progress{Warmup: warmup, Done: done, Errors: errs, Total: int64(requests), Elapsed: time.Since(agg.start), Duration: dur}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.cfg.Progress(snap())
			case <-quit:
				return
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
		r.cfg.Progress(snap())
	}
}

// FirstModel asks GET /v1/models for the first model the server lists.
func FirstModel(ctx context.Context, client *http.Client, baseURL, apiKey string) (string, error) {
	models, err := Models(ctx, client, baseURL, apiKey)
	if err != nil {
		return "", err
	}
	if len(models) == 0 || models[0] == "" {
		return "", ErrNoModel
	}
	return models[0], nil
}

// Models lists the model IDs of GET /v1/models in the server's order.
func Models(ctx context.Context, client *http.Client, baseURL, apiKey string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/v1/models", nil)
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("list models: %s: %s", resp.Status, b)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, fmt.Errorf("list models: decode: %w", err)
	}
	ids := make([]string, len(list.Data))
	for i, d := range list.Data {
		ids[i] = d.ID
	}
	return ids, nil
}
