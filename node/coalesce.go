package node

import (
	"context"
	"sync"

	"github.com/shoal-dev/shoal/scheduler"
)

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
