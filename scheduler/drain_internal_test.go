package scheduler

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

type finishingBackend struct{}

func (finishingBackend) Run(_ context.Context, batch []*Task) {
	for _, t := range batch {
		t.Finish(Result{}, nil)
	}
}
func (finishingBackend) Close() error { return nil }

// A Submit that saw "not draining" just before Drain began reaches enqueue
// only after the queue was failed and the dispatcher stopped; it must be
// refused, not parked in a queue nobody serves.
func TestEnqueueAfterDrainIsRejected(t *testing.T) {
	s := New(Config{})
	require.NoError(t, s.AddModel("m", finishingBackend{}, Settings{MaxSize: 1, MaxQueue: 10, Slots: 1}))
	s.mu.RLock()
	m := s.models["m"]
	s.mu.RUnlock()
	require.NoError(t, s.Drain(t.Context()))
	err := m.enqueue(NewTask(t.Context(), &Request{Model: "m"}))
	require.ErrorIs(t, err, ErrDraining)
	require.Zero(t, m.load().QueueDepth)
}
