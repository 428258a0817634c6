package node

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/gossip"
	"github.com/shoal-dev/shoal/peer"
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
}

// Peer-plane paths.
const peerApplyPath = "/peer/v1/apply"

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
	m.HandleFunc("POST "+peerApplyPath, n.peerApply)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		peer.Error(w, http.StatusNotFound, "not_found", "no peer endpoint "+r.Method+" "+r.URL.Path)
	})
	return m
}

// applyRequest is a write forwarded to the leader.
type applyRequest struct {
	Once consensus.Once `json:"once"`
	// Timeout is how long the caller still waits, in milliseconds.
	Timeout int64 `json:"timeout_ms"`
}

type applyResponse struct {
	Index uint64 `json:"index"`
}

// Peer-plane error codes of peerApply, read back by forwardWrite.
const (
	codeNotLeader      = "not_leader"
	codeUnavailable    = "unavailable"
	codeInvalid        = "invalid_command"
	codeBreaker        = "breaker_conflict"
	codeUnknownTenant  = "unknown_tenant"
	codeTenantInUse    = "tenant_in_use"
	codeEarlierFailed  = "earlier_attempt_failed"
	codeApplyTimedOut  = "timeout"
	maxForwardedWait   = 30 * time.Second
	defaultForwardWait = 10 * time.Second
)

// peerApply commits a write a follower forwarded.
func (n *Node) peerApply(w http.ResponseWriter, r *http.Request) {
	var req applyRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		peer.Error(w, http.StatusBadRequest, codeInvalid, "decode write: "+err.Error())
		return
	}
	wait := defaultForwardWait
	if req.Timeout > 0 {
		wait = min(time.Duration(req.Timeout)*time.Millisecond, maxForwardedWait)
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	idx, err := n.store.Apply(ctx, req.Once)
	var ve *consensus.ValidationError
	switch {
	case err == nil:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(applyResponse{Index: idx})
	case errors.Is(err, consensus.ErrNotLeader), errors.Is(err, consensus.ErrNoLeader):
		peer.Error(w, http.StatusMisdirectedRequest, codeNotLeader, err.Error())
	case errors.Is(err, consensus.ErrLeadershipLost), errors.Is(err, consensus.ErrShutdown):
		peer.Error(w, http.StatusServiceUnavailable, codeUnavailable, err.Error())
	case errors.As(err, &ve), errors.Is(err, consensus.ErrInvalidCommand):
		peer.Error(w, http.StatusBadRequest, codeInvalid, err.Error())
	case errors.Is(err, consensus.ErrBreakerConflict):
		peer.Error(w, http.StatusConflict, codeBreaker, err.Error())
	case errors.Is(err, consensus.ErrUnknownTenant):
		peer.Error(w, http.StatusConflict, codeUnknownTenant, err.Error())
	case errors.Is(err, consensus.ErrTenantInUse):
		peer.Error(w, http.StatusConflict, codeTenantInUse, err.Error())
	case errors.Is(err, consensus.ErrEarlierAttemptFailed):
		peer.Error(w, http.StatusConflict, codeEarlierFailed, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		peer.Error(w, http.StatusGatewayTimeout, codeApplyTimedOut, err.Error())
	default:
		peer.Error(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

// applyCommand commits cmd through Raft and returns once this node's own
// state reflects it (read-your-write). The write carries an ID kept across
// retries (consensus.Once): it is proposed here when this node leads, else
// sent to the leader over the peer plane, and retried, following a new
// leader, until it commits or ctx ends. A retry of a write that did commit
// is answered with its first outcome, never applied twice.
func (n *Node) applyCommand(ctx context.Context, cmd consensus.Command) error {
	if err := cmd.Validate(); err != nil {
		return err
	}
	once, err := consensus.NewOnce(router.NewID(), cmd)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, consensus.DefaultApplyTimeout)
		defer cancel()
	}
	backoff := 20 * time.Millisecond
	for {
		idx, err := n.applyAttempt(ctx, once)
		if err == nil {
			if werr := n.store.WaitApplied(ctx, idx); werr != nil {
				// Committed: a success, even if this node has not caught up.
				n.logger.Debug("write committed; local state not caught up yet", "index", idx, "err", werr)
			}
			return nil
		}
		if !retryableWrite(err) || ctx.Err() != nil {
			if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
				return fmt.Errorf("write %s: %w (last attempt: %w)", once.ID, ctx.Err(), err)
			}
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("write %s: %w (last attempt: %w)", once.ID, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// retryableWrite says whether a write may be tried again: nothing was
// decided about it (no leader, leader changed or unreachable, an attempt's
// own time ran out).
func retryableWrite(err error) bool {
	return errors.Is(err, consensus.ErrNoLeader) || errors.Is(err, consensus.ErrNotLeader) ||
		errors.Is(err, consensus.ErrLeadershipLost) || errors.Is(err, errAttemptTimedOut)
}

var errAttemptTimedOut = errors.New("write attempt timed out")

// applyAttempt proposes once here, or forwards it to the leader Raft knows
// now; the leader's Raft address is its peer-plane address.
func (n *Node) applyAttempt(ctx context.Context, once consensus.Once) (uint64, error) {
	idx, err := n.store.Apply(ctx, once)
	if !errors.Is(err, consensus.ErrNotLeader) {
		return idx, err
	}
	leader, addr := n.store.LeaderID(), n.store.LeaderAddr()
	if addr == "" {
		return 0, fmt.Errorf("forward write: %w", consensus.ErrNoLeader)
	}
	// A leader that dies or hangs mid-call must leave time to retry with
	// its successor.
	left := time.Until(deadlineOf(ctx))
	actx, cancel := context.WithTimeout(ctx, min(left, max(left/2, 2*time.Second)))
	defer cancel()
	body, err := json.Marshal(applyRequest{Once: once, Timeout: time.Until(deadlineOf(actx)).Milliseconds()})
	if err != nil {
		return 0, fmt.Errorf("encode write: %w", err)
	}
	resp, err := n.peer.client.Post(actx, addr, peerApplyPath, body)
	if err != nil {
		if ctx.Err() == nil && actx.Err() != nil {
			return 0, fmt.Errorf("forward write to leader %s: %w", leader, errAttemptTimedOut)
		}
		return 0, fmt.Errorf("forward write to leader %s: %w: %w", leader, consensus.ErrNoLeader, err)
	}
	if resp.Status == http.StatusOK {
		var ar applyResponse
		if err := resp.Decode(&ar); err != nil {
			return 0, fmt.Errorf("leader %s answer: %w", leader, err)
		}
		return ar.Index, nil
	}
	msg, code := resp.ErrorMessage()
	msg = "leader " + leader + ": " + msg
	switch code {
	case codeNotLeader:
		return 0, fmt.Errorf("%s: %w", msg, consensus.ErrNotLeader)
	case codeUnavailable:
		return 0, fmt.Errorf("%s: %w", msg, consensus.ErrLeadershipLost)
	case codeApplyTimedOut:
		return 0, fmt.Errorf("%s: %w", msg, errAttemptTimedOut)
	case codeInvalid:
		return 0, fmt.Errorf("%s: %w", msg, consensus.ErrInvalidCommand)
	case codeBreaker:
		return 0, fmt.Errorf("%s: %w", msg, consensus.ErrBreakerConflict)
	case codeUnknownTenant:
		return 0, fmt.Errorf("%s: %w", msg, consensus.ErrUnknownTenant)
	case codeTenantInUse:
		return 0, fmt.Errorf("%s: %w", msg, consensus.ErrTenantInUse)
	case codeEarlierFailed:
		return 0, fmt.Errorf("%s: %w", msg, consensus.ErrEarlierAttemptFailed)
	}
	if resp.Status == http.StatusForbidden {
		return 0, fmt.Errorf("%s (is this node's address one the cluster knows?)", msg)
	}
	return 0, errors.New(msg)
}

func deadlineOf(ctx context.Context) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(consensus.DefaultApplyTimeout)
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

// trustedForward reports whether a request claiming to be forwarded by a
// peer really is, so a client cannot skip routing and rate limits by
// setting the header itself: its signature must cover this request (method,
// path, body, this node as target), be recent and never seen before. Until
// the cluster has agreed on a secret (the first seconds of a cluster
// without a gossip key) it falls back to the sender's address being a
// member's.
func (n *Node) trustedForward(r *http.Request, body []byte) bool {
	secret := n.forwardSecret()
	if secret == nil {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			return false
		}
		for _, m := range n.gossip.Alive() {
			if m.Name != n.cfg.NodeName && hostOf(m.Meta.HTTPAddr) == host {
				return true
			}
		}
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
