package node

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/gossip"
	"github.com/shoal-dev/shoal/httpapi"
	"github.com/shoal-dev/shoal/peer"
	"github.com/shoal-dev/shoal/raftwrite"
	"github.com/shoal-dev/shoal/router"
)

// peerPlane is this node's end of the peer plane (package peer): forwarded
// Raft writes travel on it, authenticated by cluster membership, never by
// the operator's admin token.
type peerPlane struct {
	mux    *peer.Mux
	srv    *peer.Server
	client *peer.Client
	// keySecret signs forwarded requests when the cluster has a gossip
	// key; without one the secret comes from Raft (forwardSecret).
	keySecret []byte
	verifier  *router.Verifier
	// forwardsServed counts inference requests peers forwarded here over
	// the plane.
	forwardsServed atomic.Int64
}

// startPeer splits the Raft listener between Raft and the peer plane and
// returns Raft's share. The plane's server starts with the cluster loop,
// once gossip is up to vet callers.
func (n *Node) startPeer(ln net.Listener) (net.Listener, error) {
	key, err := n.cfg.ClusterKey()
	if err != nil {
		return nil, err
	}
	mux := peer.NewMux(ln, n.logger)
	sc := peer.ServerConfig{Listener: mux.Peer(), Members: peerMembers{n}, Handler: n.peerRoutes(), Logger: n.logger}
	cc := peer.ClientConfig{Self: n.cfg.NodeName}
	if len(key) > 0 {
		tc, err := consensus.ClusterTLS(key)
		if err != nil {
			_ = ln.Close()
			return nil, err
		}
		sc.TLS, cc.TLS = tc, tc
		sum := sha256.Sum256(append([]byte("shoal-forward-v2\x00key\x00"), key...))
		n.peer.keySecret = sum[:]
	}
	n.peer.mux = mux
	n.peer.srv = peer.NewServer(sc)
	n.peer.client = peer.NewClient(cc)
	n.goBackground(mux.Serve)
	return mux.Raft(), nil
}

// servePeer serves the peer plane until closePeer.
func (n *Node) servePeer() {
	if err := n.peer.srv.Serve(); err != nil {
		n.logger.Error("peer plane stopped", "err", err)
	}
}

// closePeer stops the peer plane and the shared Raft port.
func (n *Node) closePeer() {
	if n.peer.srv != nil {
		_ = n.peer.srv.Close()
	}
	if n.peer.mux != nil {
		_ = n.peer.mux.Close()
	}
	if n.peer.client != nil {
		n.peer.client.Close()
	}
}

// peerMembers vets peer-plane callers without a key: the caller must be a
// gossip member (not left) or a Raft server, calling from the host it
// advertises.
type peerMembers struct{ n *Node }

func (m peerMembers) Member(name, host string) bool {
	for _, mb := range m.n.gossip.Members() {
		if mb.Name != name || mb.State == gossip.StateLeft {
			continue
		}
		if hostOf(mb.Meta.RaftAddr) == host || hostOf(mb.Addr) == host || hostOf(mb.Meta.HTTPAddr) == host {
			return true
		}
	}
	servers, err := m.n.store.Configuration()
	if err != nil {
		return false
	}
	for _, s := range servers {
		if s.ID == name && hostOf(s.Addr) == host {
			return true
		}
	}
	return false
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return h
}

func (n *Node) peerRoutes() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("POST "+raftwrite.Path, func(w http.ResponseWriter, r *http.Request) {
		// The plane serves only after the store and its writer exist
		// (runCluster starts it).
		n.writes.ServeHTTP(w, r)
	})
	m.HandleFunc("POST "+cacheGenerationPath, n.serveCacheGeneration)
	// Forwarded inference requests: the API's own handlers (a v2 call
	// arrives as the /v1/infer request its front made of it), behind the
	// same middleware as the HTTP port (request ID, X-Shoal-Node). The API
	// is wired before the plane serves (runCluster starts it).
	api := sync.OnceValue(func() http.Handler {
		inf := http.NewServeMux()
		n.api.Register(inf)
		return httpapi.Middleware(n.cfg.NodeName, n.logger, inf)
	})
	m.Handle("POST /v1/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.peer.forwardsServed.Add(1)
		// The plane authenticated the caller (TLS under the key, or a
		// member's address): its call is a forward, trusted as one.
		r.Header.Set(router.HeaderForwarded, r.Header.Get(peer.HeaderFrom))
		api().ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerCallKey{}, true)))
	}))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		peer.Error(w, http.StatusNotFound, "not_found", "no peer endpoint "+r.Method+" "+r.URL.Path)
	})
	return m
}

// forwardSecret is the key forwarded inference requests are signed with:
// derived from the gossip key when there is one, else from the secret the
// first leader stored in Raft (seedClusterSecret); nil until that is known.
// Never the admin token: node-to-node trust comes from the cluster.
func (n *Node) forwardSecret() []byte {
	if n.peer.keySecret != nil {
		return n.peer.keySecret
	}
	s := n.store.State().ClusterSecret
	if len(s) == 0 {
		return nil
	}
	sum := sha256.Sum256(append([]byte("shoal-forward-v2\x00raft\x00"), s...))
	return sum[:]
}

// seedClusterSecret stores a random cluster secret in Raft, once, on the
// leader of a cluster without a gossip key.
func (n *Node) seedClusterSecret(ctx context.Context) {
	if n.peer.keySecret != nil || !n.store.IsLeader() || len(n.store.State().ClusterSecret) > 0 {
		return
	}
	secret := make([]byte, consensus.ClusterSecretLen)
	if _, err := rand.Read(secret); err != nil {
		n.logger.Warn("cluster secret", "err", err)
		return
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := n.store.Apply(actx, consensus.SetClusterSecret{Secret: secret}); err != nil && ctx.Err() == nil {
		n.logger.Warn("seed cluster secret", "err", err)
	}
}

// peerCallKey marks a request's context as served by the peer plane.
type peerCallKey struct{}

// dialPeer connects to a peer's plane, for the request forwarder.
func (n *Node) dialPeer(ctx context.Context, network, addr string) (net.Conn, error) {
	c := n.peer.client
	if c == nil {
		return nil, fmt.Errorf("dial peer %s: peer plane not started", addr)
	}
	return c.Dial(ctx, network, addr)
}

// trustedForward reports whether a request claiming to be forwarded by a
// peer really is, so a client cannot skip routing and rate limits by
// setting the header itself. One the peer plane served is: the plane
// authenticated its caller. Current nodes forward nothing through the HTTP
// port; a forward arriving there (from an older node during a rolling
// upgrade) must be signed: the signature must cover this request (method,
// path, body, this node as target), be recent and never seen before. Until
// the cluster has agreed on a secret (the first seconds of a cluster
// without a gossip key) none is trusted.
func (n *Node) trustedForward(r *http.Request, body []byte) bool {
	if fromPeer, _ := r.Context().Value(peerCallKey{}).(bool); fromPeer {
		return true
	}
	secret := n.forwardSecret()
	if secret == nil {
		// No signing key agreed yet (the first seconds of a cluster without
		// a gossip key): nothing on the HTTP port can prove it is a peer, and
		// a member's address is no proof (a client may share its host).
		return false
	}
	if err := n.peer.verifier.Verify(secret, r, body, time.Now()); err != nil {
		// A client setting the header is noise (debug); a stale or
		// replayed signature means clock skew between nodes or a replay.
		level := slog.LevelWarn
		if errors.Is(err, router.ErrBadSignature) {
			level = slog.LevelDebug
		}
		n.logger.Log(r.Context(), level, "refused a forwarded request's signature; serving it as a new request",
			"from", r.Header.Get(router.HeaderForwarded), "remote", r.RemoteAddr, "err", err)
		return false
	}
	return true
}

// applyCommand commits cmd through Raft from this node (raftwrite.Writer):
// once, following the leader, read-your-write.
func (n *Node) applyCommand(ctx context.Context, cmd consensus.Command) error {
	return n.writes.Apply(ctx, cmd)
}
