package dcache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// handles counts the DMap handles the olric store keeps.
func handles(c *Cache) int {
	m := c.st.(*olricStore).cur.Load()
	if m == nil {
		return 0
	}
	n := 0
	count := func(_, _ any) bool { n++; return true }
	m.edmaps.Range(count)
	m.cdmaps.Range(count)
	return n
}

// Namespaces are model names chosen by clients: one the node does not admit never reaches
// Olric, so random names leave no DMap behind, while the served one works as before.
func TestOlricUnadmittedNamespacesLeaveNoState(t *testing.T) {
	c := startCluster(t, 1, func(cfg *Config) {
		cfg.Namespaces = func(ns string) bool { return ns == "served" }
	})[0]
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "served", "k", []byte("v"), time.Minute))
	before := handles(c)

	for i := range 200 {
		ns := fmt.Sprintf("random-model-%d", i)
		_, ok, err := c.Get(ctx, ns, "k")
		require.NoError(t, err, "an unadmitted namespace is a miss, not a failure")
		require.False(t, ok)
		require.NoError(t, c.Set(ctx, ns, "k", []byte("v"), time.Minute))
		require.NoError(t, c.Delete(ctx, ns, "k"))
		_, err = c.Lock(ctx, ns, "k", time.Second)
		require.ErrorIs(t, err, ErrInvalidKey)
	}
	require.Equal(t, before, handles(c), "unadmitted namespaces created DMap handles")
	require.Equal(t, StatusOK, c.Health().Status)

	v, ok, err := c.Get(ctx, "served", "k")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, []byte("v"), v)

	// Purging a namespace (one no longer served, say) drops its handle as well.
	require.NoError(t, c.Purge(ctx, "served"))
	require.Equal(t, before-1, handles(c))
}

func TestLocalUnadmittedNamespacesAreMisses(t *testing.T) {
	c, err := New(Config{Backend: BackendLocal, Namespaces: func(ns string) bool { return ns == "served" }})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "other", "k", []byte("v"), time.Minute))
	_, ok, err := c.Get(ctx, "other", "k")
	require.NoError(t, err)
	require.False(t, ok)
	require.Zero(t, c.Stats().Entries)
	require.NoError(t, c.Set(ctx, "served", "k", []byte("v"), time.Minute))
	require.EqualValues(t, 1, c.Stats().Entries)
}
