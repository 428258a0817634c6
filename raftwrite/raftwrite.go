// Package raftwrite commits writes to the replicated state from any node:
// proposed here when this node leads, else sent to the leader over the peer
// plane. Each write carries an ID the FSM remembers (consensus.Once), so a
// retry never applies twice; a write follows a new leader until its
// deadline and returns once this node has applied it (read-your-write).
// Node-to-node trust is the peer plane's: never the operator's admin token.
package raftwrite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/peer"
	"github.com/shoal-dev/shoal/router"
)

// Path is where the leader takes forwarded writes on the peer plane.
const Path = "/peer/v1/apply"

// Store is the local Raft store (*consensus.Store).
type Store interface {
	Apply(ctx context.Context, cmd consensus.Command) (uint64, error)
	LeaderID() string
	LeaderAddr() string
	WaitApplied(ctx context.Context, index uint64) error
}

// Peers posts to a peer's plane by its Raft address (*peer.Client).
type Peers interface {
	Post(ctx context.Context, addr, path string, body []byte) (*peer.Response, error)
}

// Config is what a Writer needs.
type Config struct {
	Store  Store
	Peers  Peers
	Logger *slog.Logger
}

// Writer commits writes from this node and serves those forwarded to it.
type Writer struct {
	cfg Config
}

// New returns a Writer over cfg.
func New(cfg Config) *Writer {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Writer{cfg: cfg}
}

// Request is a write forwarded to the leader.
type Request struct {
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

// ServeHTTP commits a write a follower forwarded; the leader serves it on
// the peer plane at Path.
func (wr *Writer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req Request
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
	idx, err := wr.cfg.Store.Apply(ctx, req.Once)
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

// Apply commits cmd through Raft and returns once this node's own
// state reflects it (read-your-write). The write carries an ID kept across
// retries (consensus.Once): it is proposed here when this node leads, else
// sent to the leader over the peer plane, and retried, following a new
// leader, until it commits or ctx ends. A retry of a write that did commit
// is answered with its first outcome, never applied twice.
func (wr *Writer) Apply(ctx context.Context, cmd consensus.Command) error {
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
		idx, err := wr.attempt(ctx, once)
		if err == nil {
			if werr := wr.cfg.Store.WaitApplied(ctx, idx); werr != nil {
				// Committed: a success, even if this node has not caught up.
				wr.cfg.Logger.Debug("write committed; local state not caught up yet", "index", idx, "err", werr)
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

// attempt proposes once here, or forwards it to the leader Raft knows
// now; the leader's Raft address is its peer-plane address.
func (wr *Writer) attempt(ctx context.Context, once consensus.Once) (uint64, error) {
	idx, err := wr.cfg.Store.Apply(ctx, once)
	if !errors.Is(err, consensus.ErrNotLeader) {
		return idx, err
	}
	leader, addr := wr.cfg.Store.LeaderID(), wr.cfg.Store.LeaderAddr()
	if addr == "" {
		return 0, fmt.Errorf("forward write: %w", consensus.ErrNoLeader)
	}
	// A leader that dies or hangs mid-call must leave time to retry with
	// its successor.
	left := time.Until(deadlineOf(ctx))
	actx, cancel := context.WithTimeout(ctx, min(left, max(left/2, 2*time.Second)))
	defer cancel()
	body, err := json.Marshal(Request{Once: once, Timeout: time.Until(deadlineOf(actx)).Milliseconds()})
	if err != nil {
		return 0, fmt.Errorf("encode write: %w", err)
	}
	resp, err := wr.cfg.Peers.Post(actx, addr, Path, body)
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
