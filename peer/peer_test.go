package peer

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Raft's connections pass through the mux byte for byte; peer-plane ones
// arrive without their header.
func TestMuxSplitsByFirstByte(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	m := NewMux(ln, nil)
	go m.Serve()
	defer m.Close()

	for _, tc := range []struct {
		first byte
		to    net.Listener
	}{{0x00, m.Raft()}, {0x16, m.Raft()}, {Header, m.Peer()}} {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		_, err = c.Write([]byte{tc.first, 'x', 'y'})
		require.NoError(t, err)
		got, err := tc.to.Accept()
		require.NoError(t, err)
		want := []byte{tc.first, 'x', 'y'}
		if tc.first == Header {
			want = want[1:]
		}
		buf := make([]byte, len(want))
		_, err = io.ReadFull(got, buf)
		require.NoError(t, err)
		require.Equal(t, want, buf, "first byte %#x", tc.first)
		c.Close()
		got.Close()
	}
	require.NoError(t, m.Close())
	_, err = m.Raft().Accept()
	require.ErrorIs(t, err, net.ErrClosed)
}

type members map[string]string

func (m members) Member(name, host string) bool { return m[name] == host }

func serve(t *testing.T, tlsConfig *tls.Config, mem Members) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	m := NewMux(ln, nil)
	go m.Serve()
	s := NewServer(ServerConfig{Listener: m.Peer(), TLS: tlsConfig, Members: mem,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s", r.Header.Get(HeaderFrom))
		})})
	go func() { _ = s.Serve() }()
	t.Cleanup(func() {
		_ = s.Close()
		_ = m.Close()
	})
	return ln.Addr().String()
}

// selfSignedTLS is a mutual-TLS config that accepts only its own key, as
// consensus.ClusterTLS does for the cluster key.
func selfSignedTLS(t *testing.T) *tls.Config {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	require.NoError(t, err)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
		MinVersion:   tls.VersionTLS13, ClientAuth: tls.RequireAnyClientCert, InsecureSkipVerify: true, //nolint:gosec // checked below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			if k, ok := c.PublicKey.(ed25519.PublicKey); !ok || !k.Equal(pub) {
				return fmt.Errorf("another key")
			}
			return nil
		},
	}
}

func TestWithoutTLSOnlyMembersAreServed(t *testing.T) {
	addr := serve(t, nil, members{"n1": "127.0.0.1"})
	ctx := context.Background()
	resp, err := NewClient(ClientConfig{Self: "n1"}).Post(ctx, addr, "/x", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.Status)
	require.Equal(t, "hello n1", string(resp.Body))
	resp, err = NewClient(ClientConfig{Self: "stranger"}).Post(ctx, addr, "/x", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusForbidden, resp.Status)
}

func TestWithTLSOnlyKeyHoldersGetIn(t *testing.T) {
	key := selfSignedTLS(t)
	addr := serve(t, key, nil)
	ctx := context.Background()
	resp, err := NewClient(ClientConfig{Self: "n1", TLS: key}).Post(ctx, addr, "/x", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.Status)
	_, err = NewClient(ClientConfig{Self: "n1", TLS: selfSignedTLS(t), Attempts: 1}).Post(ctx, addr, "/x", nil)
	require.ErrorIs(t, err, ErrUnreachable)
}

// A call to a peer that is gone fails after its attempts with
// ErrUnreachable.
func TestUnreachablePeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	_, err = NewClient(ClientConfig{Self: "n1"}).Post(context.Background(), addr, "/x", nil)
	require.ErrorIs(t, err, ErrUnreachable)
}

// Closing the mux while connections keep arriving is safe: no accepted
// connection is registered after Close began waiting (run under -race,
// where an Add racing the Wait is reported), and Close returns.
func TestMuxCloseWhileConnectionsArrive(t *testing.T) {
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		m := NewMux(ln, nil)
		served := make(chan struct{})
		go func() {
			defer close(served)
			m.Serve()
		}()
		stop := make(chan struct{})
		dialed := make(chan struct{})
		go func() {
			defer close(dialed)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
					_ = c.Close()
				}
			}
		}()
		require.NoError(t, m.Close())
		close(stop)
		<-dialed
		<-served
	}
}
