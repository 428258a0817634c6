//go:build unix

package dcache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// startHelperMember runs an olric member in a child process (this test binary in helper
// mode) and returns it with its memberlist address.
func startHelperMember(t testing.TB, peers ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperPeersEnv+"="+strings.Join(peers, ","))
	// The helper's own log (and, under -race, Olric v0.7.0's known race report when the
	// helper is the coordinator) is shown only if the test fails.
	var stderr syncBuffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("helper member stderr:\n%s", stderr.String())
		}
	})

	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if addr, ok := strings.CutPrefix(s.Text(), "READY "); ok {
				line <- addr
				return
			}
		}
		close(line)
	}()
	select {
	case addr, ok := <-line:
		require.True(t, ok, "helper member exited before it was ready")
		return cmd, addr
	case <-time.After(waitTimeout):
		t.Fatal("helper member not ready")
		return nil, ""
	}
}

// TestOlricFrozenPeerBoundsLookups freezes (SIGSTOP) the process of the member that owns part
// of the keys: lookups of those keys get no answer at all, the worst case for a cache in the
// request path. Every Get must still return within LookupTimeout (plus scheduling slack) with
// ErrUnavailable, and Health must say degraded; once the peer is gone, lookups work again.
func TestOlricFrozenPeerBoundsLookups(t *testing.T) {
	// The helper starts first, so it is the coordinator and this process never runs Olric's
	// racy routing-table push with two members (see skipUnderRaceWithClusteredOlric).
	child, childAddr := startHelperMember(t)

	var peers atomic.Pointer[[]string]
	peers.Store(&[]string{childAddr})
	cfg := olricTestConfig()
	cfg.Peers = func() []string { return *peers.Load() }
	cfg.LookupTimeout = 100 * time.Millisecond
	cfg.OpTimeout = 200 * time.Millisecond
	cfg.HealthWindow = 500 * time.Millisecond
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAll(t, []*Cache{c}) })
	ctx := context.Background()
	require.NoError(t, c.Start(ctx))
	waitSettled(t, 2, c)

	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprint("key", i)
		_, _, err := c.Get(ctx, "m", keys[i])
		require.NoError(t, err, "lookups answer while the peer runs")
	}

	require.NoError(t, child.Process.Signal(syscall.SIGSTOP))
	var (
		wg          sync.WaitGroup
		mu          sync.Mutex
		slowest     time.Duration
		unavailable int
		other       []error
	)
	for _, k := range keys {
		wg.Go(func() {
			start := time.Now()
			_, _, err := c.Get(ctx, "m", k)
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, took)
			switch {
			case errors.Is(err, ErrUnavailable):
				unavailable++
			case err != nil:
				other = append(other, err)
			}
		})
	}
	wg.Wait()
	// Olric's own read timeout is 3s and a frozen peer never answers: anything near it means
	// the lookup was not bounded.
	require.Less(t, slowest, 2*time.Second, "a lookup waited on the frozen peer")
	require.Empty(t, other)
	require.Positive(t, unavailable, "no key of %d was owned by the frozen peer", len(keys))
	require.Positive(t, c.Stats().Timeouts)
	h := c.Health()
	require.Equal(t, StatusDegraded, h.Status)
	require.Contains(t, h.Detail, "no answer within")

	// The peer dies and leaves shoal's membership; Olric notices and takes its partitions back.
	require.NoError(t, child.Process.Kill())
	peers.Store(&[]string{})
	require.Eventually(t, func() bool {
		if c.Members() != 1 {
			return false
		}
		for _, k := range keys {
			if _, _, err := c.Get(ctx, "m", k); err != nil {
				return false
			}
		}
		return true
	}, waitTimeout, 50*time.Millisecond)
	require.NoError(t, c.Set(ctx, "m", "after", []byte("v"), time.Minute))
	require.Eventually(t, func() bool { return c.Health().Status == StatusOK }, waitTimeout, waitTick)
}
