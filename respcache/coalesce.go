package respcache

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/internal/workers"
	"github.com/shoal-dev/shoal/scheduler"
)

// DefaultLockLease is how long a node holds the cluster-wide lock that
// makes one node compute an answer other nodes are also missing, before it
// renews it; a node that dies holding it blocks the key this long.
const DefaultLockLease = 5 * time.Second

// Compute runs the model for a request.
type Compute func(context.Context) ([]scheduler.Result, error)

// Coalesce runs compute once per key on this node and, on an Olric cache,
// once per key across the cluster: the node holding the key's lock
// computes, renewing the lock's lease while it does; the others wait for
// its answer to appear in the cache, or for the lock to come free (the
// holder failed, or died and its lease ran out) and then take it. Each
// caller keeps its own deadline: the shared run lives while any caller
// waits for it and is cancelled when the last one leaves. store says
// whether the answer may be stored.
func (c *Cache) Coalesce(ctx context.Context, model, key string, store bool, compute Compute) ([]scheduler.Result, error) {
	return c.flights.do(ctx, key, func(fctx context.Context) ([]scheduler.Result, error) {
		if c.cfg.Store.Alone() {
			// A node alone (or a store that is not shared) has nobody to
			// coalesce with beyond its own callers, whom the flight group
			// already joins: no lock, no second lookup.
			res, err := compute(fctx)
			if err == nil && store {
				c.Store(model, key, res)
			}
			return res, err
		}
		lock, err := c.cfg.Store.Hold(fctx, model, "lock:"+key, c.lease())
		if errors.Is(err, dcache.ErrLocked) {
			var res []scheduler.Result
			res, lock = c.waitForAnswer(fctx, model, key)
			if res != nil {
				return res, nil
			}
		}
		release := func() {}
		if lock != nil {
			stop := c.keepLease(fctx, lock)
			release = func() {
				stop()
				_ = lock.Unlock(context.WithoutCancel(fctx))
			}
			// The previous holder may have stored the answer between our
			// miss and our lock.
			if res, ok := c.Lookup(fctx, model, key); ok {
				release()
				return res, nil
			}
		}
		// Without the lock (the cache failed) the node computes on its own:
		// a broken cache costs duplicate work, never an answer.
		res, err := compute(fctx)
		if err == nil && store {
			// The store runs off the request path; the lock is released
			// after it, so a node that takes the lock next finds the answer
			// instead of computing it again.
			c.storeAsync(model, key, res, release)
		} else {
			release()
		}
		return res, err
	})
}

func (c *Cache) lease() time.Duration {
	if c.cfg.LockLease > 0 {
		return c.cfg.LockLease
	}
	return DefaultLockLease
}

// keepLease renews lock every third of its lease until stop is called, so
// a generation longer than the lease still runs once per cluster.
func (c *Cache) keepLease(ctx context.Context, lock *dcache.Held) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		lease := c.lease()
		t := time.NewTicker(lease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := lock.Renew(ctx, lease); err != nil {
				if ctx.Err() == nil {
					// Another node may now compute the same answer.
					c.cfg.Logger.Debug("renew coalescing lock", "err", err)
				}
				if errors.Is(err, dcache.ErrNotLocked) {
					return
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// waitForAnswer polls the cache while another node holds the key's lock.
// It returns the answer once stored, or the lock once it comes free without
// one; neither when ctx ends or the cache fails.
func (c *Cache) waitForAnswer(ctx context.Context, model, key string) ([]scheduler.Result, *dcache.Held) {
	backoff := 5 * time.Millisecond
	for {
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil
		case <-t.C:
		}
		near := c.nearStamp(time.Now())
		data, found, err := c.cfg.Store.Get(ctx, model, key)
		if err == nil && found {
			if res, ok := c.memo.decode(model, key, data, near); ok {
				return res, nil
			}
		}
		lock, err := c.cfg.Store.Hold(ctx, model, "lock:"+key, c.lease())
		switch {
		case err == nil:
			return nil, lock
		case !errors.Is(err, dcache.ErrLocked):
			return nil, nil
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// flightGroup runs one computation per key at a time; callers of the same
// key share its result. Unlike singleflight, each caller waits only until
// its own context ends, and the computation's context is cancelled once
// every caller has gone away, so a request whose clients all left never
// keeps a batch slot busy, and a short deadline never cuts the run short
// for a caller with a longer one.
type flightGroup struct {
	mu    sync.Mutex
	calls map[string]*flight
	// runs runs each flight: its run outlives the caller that started it
	// (the others may still wait), so it is not the caller's goroutine, and
	// a worker that ran a flight before has the stack a model call needs.
	runs *workers.Pool
}

type flight struct {
	done    chan struct{}
	res     []scheduler.Result
	err     error
	waiters int
	cancel  context.CancelFunc
}

// do runs fn for key unless a run is in flight, and waits for the result
// or for ctx to end. fn gets a context without a deadline that ends when
// no caller waits any more.
func (g *flightGroup) do(ctx context.Context, key string, fn func(context.Context) ([]scheduler.Result, error)) ([]scheduler.Result, error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*flight{}
	}
	f, ok := g.calls[key]
	if !ok {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		g.calls[key] = f
		g.runs.Go(func() {
			f.res, f.err = fn(fctx)
			cancel()
			g.mu.Lock()
			if g.calls[key] == f {
				delete(g.calls, key)
			}
			g.mu.Unlock()
			close(f.done)
		})
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
			// A caller arriving now starts a fresh run rather than
			// joining one that is being cancelled.
			if g.calls[key] == f {
				delete(g.calls, key)
			}
		}
		g.mu.Unlock()
		return nil, ctx.Err()
	}
}
