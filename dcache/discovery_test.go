package dcache

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPeerDiscoveryListsOthersOnce(t *testing.T) {
	d := &peerDiscovery{
		peers: func() []string {
			return []string{"10.0.0.2:3322", "", "10.0.0.1:3322", "10.0.0.2:3322", "10.0.0.3:3322"}
		},
		self: "10.0.0.1:3322",
		log:  slog.New(slog.DiscardHandler),
	}
	peers, err := d.DiscoverPeers()
	require.NoError(t, err)
	require.Equal(t, []string{"10.0.0.2:3322", "10.0.0.3:3322"}, peers)
}

func TestPeerDiscoveryEmptyList(t *testing.T) {
	for _, tc := range []struct {
		name string
		wait bool
	}{{"FormsAloneAtOnce", false}, {"RetriesWhileWaitingForPeers", true}} {
		t.Run(tc.name, func(t *testing.T) {
			d := &peerDiscovery{peers: func() []string { return nil }, wait: tc.wait, log: slog.New(slog.DiscardHandler)}
			peers, err := d.DiscoverPeers()
			require.Empty(t, peers)
			if tc.wait {
				require.ErrorIs(t, err, errNoPeersYet)
			} else {
				require.NoError(t, err)
			}
		})
	}
}

// TestOlricWaitsForPeersListedLate starts a member whose membership lists no peer yet, as on a
// node whose gossip has not converged. With WaitForPeers it must keep retrying, then join the
// existing cluster, instead of forming a second cluster of its own.
func TestOlricWaitsForPeersListedLate(t *testing.T) {
	skipUnderRaceWithClusteredOlric(t)
	first := startCluster(t, 1, nil)[0]

	var listed atomic.Bool
	var asked atomic.Int64
	cfg := olricTestConfig()
	cfg.WaitForPeers = true
	cfg.Peers = func() []string {
		asked.Add(1)
		if listed.Load() {
			return []string{first.MemberlistAddr()}
		}
		return nil
	}
	late, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAll(t, []*Cache{late}) })
	started := make(chan error, 1)
	go func() { started <- late.Start(context.Background()) }()

	// A start that returns early fails the test from here, not from inside
	// the condition's goroutine.
	var early error
	earlyDone := false
	require.Eventually(t, func() bool {
		select {
		case err := <-started:
			early, earlyDone = err, true
			return true
		default:
		}
		return asked.Load() >= 3
	}, waitTimeout, waitTick,
		"the member did not retry while membership listed nobody")
	require.False(t, earlyDone, "started early: %v", early)
	listed.Store(true)
	require.NoError(t, <-started)
	waitSettled(t, 2, first, late)
	require.Equal(t, coordinator(t, first), coordinator(t, late))
}
