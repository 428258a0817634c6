package ops

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/consensus"
)

// AdminBackend is what the admin API needs from the node. Writes go
// through Raft: on a follower, Apply forwards to the leader.
type AdminBackend interface {
	// ClusterView describes members, leader, Raft configuration and load.
	ClusterView(ctx context.Context) (any, error)
	// State is the replicated state, read from the local FSM.
	State() *consensus.State
	// Apply commits a command through Raft (forwarding to the leader).
	Apply(ctx context.Context, cmd consensus.Command) error
	// ApplyLocal commits a command on this node, which must be the leader;
	// it serves forwarded writes.
	ApplyLocal(ctx context.Context, cmd consensus.Command) error
	// Batching returns the effective batching settings per local model.
	Batching() map[string]consensus.BatchingSettings
	// HasModel reports whether any member serves model.
	HasModel(model string) bool
	// Limits returns the effective limit policy.
	Limits() consensus.LimitPolicy
	// Breakers lists every breaker known to the cluster.
	Breakers() []consensus.BreakerState
	// BreakerAction forces a breaker open, closed, or resets it.
	BreakerAction(ctx context.Context, node, model, action string) error
	// Join joins the gossip cluster that addrs belong to.
	Join(ctx context.Context, addrs []string) (int, error)
	// Leave leaves the cluster gracefully.
	Leave(ctx context.Context) error
	// CacheStats and PurgeCache manage the response cache.
	CacheStats(ctx context.Context) (any, error)
	PurgeCache(ctx context.Context, model string) error
}

// Errors an AdminBackend returns that the admin API maps to statuses.
var (
	// ErrAdminNotFound answers 404.
	ErrAdminNotFound = errors.New("not found")
	// ErrAdminBadRequest answers 400.
	ErrAdminBadRequest = errors.New("bad request")
)

// StatusError carries the status and message of a forwarded admin call
// (a follower's write answered by the leader), so the client sees the
// leader's answer.
type StatusError struct {
	Status int
	Code   string
	Msg    string
}

func (e *StatusError) Error() string { return e.Msg }

// AdminConfig configures the admin API.
type AdminConfig struct {
	// Token is the bearer token; empty disables the API unless Open.
	Token string
	// Open serves without a token (dev mode).
	Open    bool
	Backend AdminBackend
	Logger  *slog.Logger
}

// Admin serves /admin/v1.
type Admin struct {
	cfg    AdminConfig
	logger *slog.Logger
	mux    *http.ServeMux
}

// NewAdmin returns the admin API handler.
func NewAdmin(cfg AdminConfig) *Admin {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Admin{cfg: cfg, logger: cfg.Logger.With("component", "admin"), mux: http.NewServeMux()}
	m := a.mux
	m.HandleFunc("GET /admin/v1/cluster", a.cluster)
	m.HandleFunc("POST /admin/v1/cluster/join", a.join)
	m.HandleFunc("POST /admin/v1/cluster/leave", a.leave)
	m.HandleFunc("GET /admin/v1/batching", a.getBatching)
	m.HandleFunc("PUT /admin/v1/batching", a.putBatching)
	m.HandleFunc("GET /admin/v1/limits", a.getLimits)
	m.HandleFunc("PUT /admin/v1/limits", a.putLimits)
	m.HandleFunc("POST /admin/v1/keys", a.putKey)
	m.HandleFunc("DELETE /admin/v1/keys/{id}", a.deleteKey)
	m.HandleFunc("GET /admin/v1/breakers", a.getBreakers)
	m.HandleFunc("POST /admin/v1/breakers/{node}/{model}/{action}", a.breakerAction)
	m.HandleFunc("GET /admin/v1/cache", a.getCache)
	m.HandleFunc("DELETE /admin/v1/cache", a.deleteCache)
	m.HandleFunc("POST /admin/v1/internal/apply", a.internalApply)
	m.HandleFunc("/admin/v1/", func(w http.ResponseWriter, r *http.Request) {
		adminError(w, http.StatusNotFound, "not_found", "no admin endpoint "+r.Method+" "+r.URL.Path)
	})
	return a
}

// ServeHTTP checks the bearer token, then dispatches.
func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.cfg.Open {
		if a.cfg.Token == "" {
			adminError(w, http.StatusForbidden, "admin_disabled", "the admin API is disabled: set admin.token or SHOAL_ADMIN_TOKEN on every node")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(a.cfg.Token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="shoal-admin"`)
			adminError(w, http.StatusUnauthorized, "unauthorized", "unauthorized")
			return
		}
	}
	a.mux.ServeHTTP(w, r)
}

func adminError(w http.ResponseWriter, status int, code, msg string) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeAdminJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": "admin_error", "code": code}})
}

func writeAdminJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// fail maps backend errors to statuses in one place.
func (a *Admin) fail(w http.ResponseWriter, err error) {
	var ve *consensus.ValidationError
	var se *StatusError
	switch {
	case errors.As(err, &se):
		adminError(w, se.Status, se.Code, se.Msg)
	case errors.As(err, &ve):
		adminError(w, http.StatusBadRequest, "invalid_field", err.Error())
	case errors.Is(err, consensus.ErrInvalidCommand), errors.Is(err, ErrAdminBadRequest),
		errors.Is(err, consensus.ErrUnknownTenant), errors.Is(err, consensus.ErrTenantInUse):
		adminError(w, http.StatusBadRequest, "bad_request", err.Error())
	case errors.Is(err, ErrAdminNotFound):
		adminError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, consensus.ErrBreakerConflict):
		adminError(w, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, consensus.ErrNoLeader), errors.Is(err, consensus.ErrLeadershipLost), errors.Is(err, consensus.ErrNotLeader):
		adminError(w, http.StatusServiceUnavailable, "no_leader", "no Raft leader is reachable now; retry shortly: "+err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		adminError(w, http.StatusGatewayTimeout, "timeout", err.Error())
	default:
		a.logger.Warn("admin request failed", "err", err)
		adminError(w, http.StatusInternalServerError, "internal_error", err.Error())
	}
}

// decode reads a bounded JSON body, rejecting unknown fields so a typo is
// an error rather than a silently ignored setting.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		msg := err.Error()
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			msg = fmt.Sprintf("%s: expected %s, got JSON %s", te.Field, te.Type, te.Value)
		}
		adminError(w, http.StatusBadRequest, "invalid_json", "invalid request body: "+msg)
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		adminError(w, http.StatusBadRequest, "invalid_json", "request body has data after the JSON object")
		return false
	}
	return true
}

func (a *Admin) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 10*time.Second)
}

// apply validates cmd and commits it through Raft, answering the error if
// either fails; it reports whether the caller should write its answer.
func (a *Admin) apply(w http.ResponseWriter, r *http.Request, cmd consensus.Command) bool {
	if err := cmd.Validate(); err != nil {
		a.fail(w, err)
		return false
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	if err := a.cfg.Backend.Apply(ctx, cmd); err != nil {
		a.fail(w, err)
		return false
	}
	return true
}

func (a *Admin) cluster(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	v, err := a.cfg.Backend.ClusterView(ctx)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, v)
}

func (a *Admin) join(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Addrs []string `json:"addrs"`
	}
	if !decode(w, r, &body) {
		return
	}
	if len(body.Addrs) == 0 {
		adminError(w, http.StatusBadRequest, "invalid_field", "addrs must list at least one gossip address")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	n, err := a.cfg.Backend.Join(ctx, body.Addrs)
	if err != nil {
		adminError(w, http.StatusBadGateway, "join_failed", err.Error())
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"joined": n})
}

func (a *Admin) leave(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := a.cfg.Backend.Leave(ctx); err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"left": true})
}

func (a *Admin) getBatching(w http.ResponseWriter, _ *http.Request) {
	writeAdminJSON(w, http.StatusOK, map[string]any{"models": a.cfg.Backend.Batching()})
}

type batchingPut struct {
	Model        string `json:"model"`
	MaxSize      *int   `json:"max_size"`
	FlushTimeout string `json:"flush_timeout"`
}

func (a *Admin) putBatching(w http.ResponseWriter, r *http.Request) {
	var body batchingPut
	if !decode(w, r, &body) {
		return
	}
	if body.Model == "" {
		adminError(w, http.StatusBadRequest, "invalid_field", "model is required")
		return
	}
	if !a.cfg.Backend.HasModel(body.Model) {
		adminError(w, http.StatusNotFound, "model_not_found", fmt.Sprintf("model %q is not served by any member", body.Model))
		return
	}
	cur, ok := a.cfg.Backend.Batching()[body.Model]
	if !ok {
		cur = a.cfg.Backend.State().Batching[body.Model]
	}
	if body.MaxSize != nil {
		cur.MaxSize = *body.MaxSize
	}
	if body.FlushTimeout != "" {
		d, err := time.ParseDuration(body.FlushTimeout)
		if err != nil {
			adminError(w, http.StatusBadRequest, "invalid_field", fmt.Sprintf("flush_timeout: invalid duration %q", body.FlushTimeout))
			return
		}
		cur.FlushTimeout = d
	}
	cmd := consensus.SetBatching{Model: body.Model, Settings: cur}
	if !a.apply(w, r, cmd) {
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"model": body.Model, "max_size": cur.MaxSize, "flush_timeout": cur.FlushTimeout.String()})
}

func (a *Admin) getLimits(w http.ResponseWriter, _ *http.Request) {
	writeAdminJSON(w, http.StatusOK, a.cfg.Backend.Limits())
}

// putLimits replaces the policy. API keys are kept unless the body lists
// "keys" (keys are added one by one through /admin/v1/keys, which hashes
// them).
func (a *Admin) putLimits(w http.ResponseWriter, r *http.Request) {
	var body struct {
		consensus.LimitPolicy
		Keys *map[string]consensus.KeyLimit `json:"keys"`
	}
	if !decode(w, r, &body) {
		return
	}
	p := body.LimitPolicy
	cmd := consensus.SetLimitPolicy{Policy: p, KeepKeys: body.Keys == nil}
	if body.Keys != nil {
		cmd.Policy.Keys = *body.Keys
	}
	if !a.apply(w, r, cmd) {
		return
	}
	writeAdminJSON(w, http.StatusOK, a.cfg.Backend.Limits())
}

func (a *Admin) putKey(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Key    string `json:"key"`
		RPM    int    `json:"rpm"`
		TPM    int    `json:"tpm"`
		Tenant string `json:"tenant"`
	}
	if !decode(w, r, &body) {
		return
	}
	if len(body.Key) < 16 {
		adminError(w, http.StatusBadRequest, "invalid_field", "key must be at least 16 characters")
		return
	}
	cmd := consensus.NewPutKey(body.Key, consensus.KeyLimit{RPM: body.RPM, TPM: body.TPM, Tenant: body.Tenant})
	if !a.apply(w, r, cmd) {
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"id": cmd.Hash, "prefix": consensus.KeyPrefix(body.Key), "rpm": body.RPM, "tpm": body.TPM, "tenant": body.Tenant})
}

func (a *Admin) deleteKey(w http.ResponseWriter, r *http.Request) {
	cmd := consensus.DeleteKey{Hash: r.PathValue("id")}
	if !a.apply(w, r, cmd) {
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"deleted": cmd.Hash})
}

func (a *Admin) getBreakers(w http.ResponseWriter, _ *http.Request) {
	writeAdminJSON(w, http.StatusOK, map[string]any{"breakers": a.cfg.Backend.Breakers()})
}

func (a *Admin) breakerAction(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	switch action {
	case "open", "close", "reset":
	default:
		adminError(w, http.StatusBadRequest, "invalid_field", "action must be open, close or reset, got "+action)
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	if err := a.cfg.Backend.BreakerAction(ctx, r.PathValue("node"), r.PathValue("model"), action); err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"breaker": consensus.BreakerKey(r.PathValue("node"), r.PathValue("model")), "action": action})
}

func (a *Admin) getCache(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	v, err := a.cfg.Backend.CacheStats(ctx)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, v)
}

func (a *Admin) deleteCache(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	model := r.URL.Query().Get("model")
	if err := a.cfg.Backend.PurgeCache(ctx, model); err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"purged": true, "model": model})
}

// internalApply serves a follower's forwarded write: the body is a command
// encoded with consensus.EncodeCommand.
func (a *Admin) internalApply(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		adminError(w, http.StatusBadRequest, "invalid_body", err.Error())
		return
	}
	cmd, err := consensus.DecodeCommand(data)
	if err != nil {
		adminError(w, http.StatusBadRequest, "invalid_command", err.Error())
		return
	}
	if err := cmd.Validate(); err != nil {
		a.fail(w, err)
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	if err := a.cfg.Backend.ApplyLocal(ctx, cmd); err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"applied": true})
}
