package consensus

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// silentPeer listens where a stopped server was and accepts connections but never answers,
// as a peer whose container is gone or frozen looks to a dialer: raft's RPCs to it wait out
// the transport's 10s I/O timeout.
type silentPeer struct {
	ln       net.Listener
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

func newSilentPeer(t *testing.T, addr string) *silentPeer {
	t.Helper()
	var ln net.Listener
	require.Eventually(t, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "listen on %s", addr)
	p := &silentPeer{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			p.accepted.Add(1)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			_ = c.Close()
		}
	})
	return p
}

// TestLastServerShutdownDoesNotWaitOnGonePeers stops the servers of a 3-node cluster one after
// another, as docker-compose stop does. The last one, still leading, is talking to peers that
// no longer answer; its Shutdown must not wait for those RPCs to time out (10s).
func TestLastServerShutdownDoesNotWaitOnGonePeers(t *testing.T) {
	c := mustNewCluster(t, 3)
	leader := c.waitLeader()
	var peers []*silentPeer
	for _, n := range c.nodes {
		if n != leader {
			c.stop(n)
			peers = append(peers, newSilentPeer(t, n.addr))
		}
	}
	// The leader has reached a silent peer and waits for its answer.
	require.Eventually(t, func() bool {
		return peers[0].accepted.Load() > 0 && peers[1].accepted.Load() > 0
	}, 10*time.Second, 10*time.Millisecond, "the leader did not dial its gone peers")

	start := time.Now()
	require.NoError(t, leader.store.Shutdown())
	leader.store = nil
	took := time.Since(start)
	t.Logf("last server's Shutdown took %s", took)
	// Generous for a loaded machine, well under raft's 10s RPC timeout that it waited before.
	require.Less(t, took, 4*time.Second, "Shutdown waited on RPCs to peers that are gone")
}
