package respcache

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/scheduler"
)

// lockLease bounds how long a node holds the cluster-wide lock that makes
// one node compute an answer other nodes are also missing.
const lockLease = 5 * time.Second

// Compute runs the model for a request.
type Compute func(context.Context) ([]scheduler.Result, error)

// Coalesce runs compute once per key on this node and, on an Olric cache,
// once per key across the cluster: the node holding the key's short-lease
// lock computes; the others wait for its answer to appear in the cache, and
// compute themselves if it does not within the lease. store says whether
// the answer may be stored.
func (c *Cache) Coalesce(ctx context.Context, model, key string, store bool, compute Compute) ([]scheduler.Result, error) {
	return c.flights.do(ctx, key, func(fctx context.Context) ([]scheduler.Result, error) {
		if c.cfg.Store.Backend() != dcache.BackendOlric {
			res, err := compute(fctx)
			if err == nil && store {
				c.Store(model, key, res)
			}
			return res, err
		}
		unlock, lerr := c.cfg.Store.Lock(fctx, model, "lock:"+key, lockLease)
		switch {
		case lerr == nil:
			defer func() { _ = unlock(context.WithoutCancel(fctx)) }()
			// The previous holder may have stored the answer between our
			// miss and our lock.
			if res, ok := c.Lookup(fctx, model, key); ok {
				return res, nil
			}
		case errors.Is(lerr, dcache.ErrLocked):
			if res, ok := c.waitForAnswer(fctx, model, key); ok {
				return res, nil
			}
		}
		res, err := compute(fctx)
		if err == nil && store {
			// Stored before the lock is released, so a node that takes the
			// lock next finds the answer instead of computing it again.
			c.storeSync(fctx, model, key, res)
		}
		return res, err
	})
}

// waitForAnswer polls the cache while another node computes the answer.
func (c *Cache) waitForAnswer(ctx context.Context, model, key string) ([]scheduler.Result, bool) {
	deadline := time.Now().Add(lockLease)
	backoff := 5 * time.Millisecond
	for time.Now().Before(deadline) {
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, false
		case <-t.C:
		}
		data, found, err := c.cfg.Store.Get(ctx, model, key)
		if err == nil && found {
			var a answer
			if json.Unmarshal(data, &a) == nil {
				return a.Results, true
			}
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
	return nil, false
}

// flightGroup runs one computation per key at a time; callers of the same
// key share its result. Unlike singleflight, the computation's context is
// cancelled once every caller has gone away, so a request whose clients all
// left never keeps a batch slot busy.
type flightGroup struct {
	mu    sync.Mutex
	calls map[string]*flight
}

type flight struct {
	done    chan struct{}
	res     []scheduler.Result
	err     error
	waiters int
	cancel  context.CancelFunc
}

// do runs fn for key unless a run is in flight, and waits for the result
// or for ctx to end. fn gets a context that ends when no caller waits.
func (g *flightGroup) do(ctx context.Context, key string, fn func(context.Context) ([]scheduler.Result, error)) ([]scheduler.Result, error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*flight{}
	}
	f, ok := g.calls[key]
	if !ok {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		if dl, has := ctx.Deadline(); has {
			fctx, cancel = context.WithDeadline(context.WithoutCancel(ctx), dl)
		}
		f = &flight{done: make(chan struct{}), cancel: cancel}
		g.calls[key] = f
		go func() {
			f.res, f.err = fn(fctx)
			cancel()
			g.mu.Lock()
			delete(g.calls, key)
			g.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	g.mu.Unlock()
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		g.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
		}
		g.mu.Unlock()
		return nil, ctx.Err()
	}
}
