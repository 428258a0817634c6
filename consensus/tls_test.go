package consensus

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// tlsLayer is a raft stream layer on loopback, mutual TLS from secret (nil:
// plain TCP), whose accepted connections echo five bytes.
func tlsLayer(t *testing.T, secret []byte, echo bool) *streamLayer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var cfg *tls.Config
	if secret != nil {
		cfg, err = clusterTLS(secret)
		require.NoError(t, err)
	}
	l := newStreamLayer(ln, ln.Addr(), cfg)
	t.Cleanup(func() { _ = l.Close() })
	if echo {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 5)
					if _, err := io.ReadFull(c, buf); err == nil {
						_, _ = c.Write(buf)
					}
				}()
			}
		}()
	}
	return l
}

// roundTrip writes five bytes on c and reads the echo.
func roundTrip(c net.Conn) (string, error) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return "", err
	}
	buf := make([]byte, 5)
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

func TestRaftTLSAdmitsOnlyHoldersOfTheSecret(t *testing.T) {
	srv := tlsLayer(t, []byte("cluster secret a"), true)
	addr := raft.ServerAddress(srv.Addr().String())

	requireEcho := func(t *testing.T) {
		c, err := tlsLayer(t, []byte("cluster secret a"), false).Dial(addr, 5*time.Second)
		require.NoError(t, err)
		defer c.Close()
		got, err := roundTrip(c)
		require.NoError(t, err)
		require.Equal(t, "hello", got)
	}
	t.Run("same secret", requireEcho)

	t.Run("another secret: the client refuses the server", func(t *testing.T) {
		_, err := tlsLayer(t, []byte("cluster secret b"), false).Dial(addr, 5*time.Second)
		require.ErrorContains(t, err, "another cluster secret")
	})

	t.Run("another secret: the server refuses a client that skips checking", func(t *testing.T) {
		cfg, err := clusterTLS([]byte("cluster secret b"))
		require.NoError(t, err)
		cfg.VerifyPeerCertificate = nil
		raw, err := net.DialTimeout("tcp", string(addr), 5*time.Second)
		require.NoError(t, err)
		c := tls.Client(raw, cfg)
		defer c.Close()
		got, err := roundTrip(c)
		require.Error(t, err, "the server echoed %q to a client with another secret", got)
	})

	t.Run("plain TCP gets nothing", func(t *testing.T) {
		c, err := tlsLayer(t, nil, false).Dial(addr, 5*time.Second)
		require.NoError(t, err, "TCP connects; the TLS handshake is what fails")
		defer c.Close()
		got, err := roundTrip(c)
		require.Error(t, err, "the server echoed %q without TLS", got)
	})

	t.Run("a silent client does not stall others", func(t *testing.T) {
		silent, err := net.DialTimeout("tcp", string(addr), 5*time.Second)
		require.NoError(t, err)
		defer silent.Close()
		requireEcho(t)
	})
}

// Three servers sharing a secret form a cluster over mutual TLS and
// replicate; a server with another secret can be added to the
// configuration but never receives the log.
func TestRaftOverTLSReplicatesOnlyToHoldersOfTheSecret(t *testing.T) {
	c := mustNewCluster(t, 3, func(cfg *Config) { cfg.Secret = []byte("cluster secret") })
	leader := c.waitLeader()
	_, err := leader.store.Apply(ctxT(t), setBatching("m", 7))
	require.NoError(t, err)
	st := c.waitConverged()
	require.Equal(t, 7, st.Batching["m"].MaxSize)

	outsider := c.addNode("outsider", func(cfg *Config) { cfg.Secret = []byte("another secret") })
	ctx, cancel := context.WithTimeout(ctxT(t), 3*time.Second)
	defer cancel()
	_ = leader.store.Join(ctx, outsider.id, outsider.addr)
	_, err = leader.store.Apply(ctxT(t), setBatching("m", 9))
	require.NoError(t, err, "the members still commit without the outsider")
	want := leader.store.State().Index
	waitFor(t, func() bool {
		for _, n := range c.nodes[:3] {
			if n.store.State().Index < want {
				return false
			}
		}
		return true
	}, "the members applied the last entry")
	require.Never(t, func() bool { return outsider.store.State().Index > 0 }, time.Second, 20*time.Millisecond,
		"the outsider received the log")
}

// Shutdown closes the log store only after every inbound handler has
// returned; waitInbound is how it knows.
func TestStreamLayerWaitsForInboundHandlers(t *testing.T) {
	srv := tlsLayer(t, nil, false)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := srv.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := tlsLayer(t, nil, false).Dial(raft.ServerAddress(srv.Addr().String()), 5*time.Second)
	require.NoError(t, err)
	defer client.Close()
	handler := <-accepted

	require.NoError(t, srv.Close(), "closes the listener and the connections under the handler")
	require.False(t, srv.waitInbound(50*time.Millisecond), "the handler has not returned yet")
	_, err = handler.Read(make([]byte, 1))
	require.Error(t, err, "the handler sees its connection closed")
	_ = handler.Close() // as raft's handleConn does when it returns (the socket is already closed)
	require.True(t, srv.waitInbound(5*time.Second))
}
