// Package admin serves a node's /admin/v1 API: it authenticates the
// operator, decodes the bodies of package adminapi, and turns each write
// into a Raft command through the node's Backend.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/ops/adminapi"
)

// Backend is what the admin API needs from the node. Writes go through
// Raft: on a follower, Apply forwards to the leader. Methods are called
// concurrently from request goroutines.
type Backend interface {
	// ClusterView describes members, leader, Raft configuration and load.
	ClusterView(ctx context.Context) (adminapi.ClusterView, error)
	// State is the replicated state, read from the local FSM.
	State() *consensus.State
	// Apply commits a command through Raft (forwarding to the leader).
	Apply(ctx context.Context, cmd consensus.Command) error
	// Batching returns the effective batching settings per local model.
	Batching() map[string]consensus.BatchingSettings
	// HasModel reports whether any member serves model.
	HasModel(model string) bool
	// Limits returns the effective limit policy.
	Limits() consensus.LimitPolicy
	// Breakers lists every breaker known to the cluster.
	Breakers() []consensus.BreakerState
	// Nodes names every node a breaker may belong to: the members and the
	// Raft servers.
	Nodes() []string
	// CacheSettings returns the effective response-cache settings and
	// whether they come from Raft.
	CacheSettings() (s consensus.CacheSettings, fromRaft bool)
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

// Errors a Backend returns that the admin API maps to statuses. They live
// in package ops so node code that must not import this server can return
// them.
var (
	// ErrNotFound answers 404.
	ErrNotFound = ops.ErrAdminNotFound
	// ErrBadRequest answers 400.
	ErrBadRequest = ops.ErrAdminBadRequest
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

// Config configures the admin API.
type Config struct {
	// Token is the bearer token; empty disables the API unless Open.
	Token string
	// Open serves without a token (dev mode).
	Open    bool
	Backend Backend
	Logger  *slog.Logger
}

// Server serves /admin/v1.
type Server struct {
	cfg    Config
	logger *slog.Logger
	mux    *http.ServeMux
}

// New returns the admin API handler.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Server{cfg: cfg, logger: cfg.Logger.With("component", "admin"), mux: http.NewServeMux()}
	m := a.mux
	m.HandleFunc("GET "+adminapi.PathCluster, a.cluster)
	m.HandleFunc("POST "+adminapi.PathJoin, a.join)
	m.HandleFunc("POST "+adminapi.PathLeave, a.leave)
	m.HandleFunc("GET "+adminapi.PathBatching, a.getBatching)
	m.HandleFunc("PUT "+adminapi.PathBatching, a.putBatching)
	m.HandleFunc("DELETE "+adminapi.PathBatching+"/{model}", a.remove(pathValue("model"), func(s string) consensus.Command { return consensus.DeleteBatching{Model: s} }))
	m.HandleFunc("GET "+adminapi.PathLimits, a.getLimits)
	m.HandleFunc("PUT "+adminapi.PathLimits, a.putLimits)
	m.HandleFunc("PUT "+adminapi.PathEndpoints, put(a, func(b adminapi.EndpointPut) consensus.Command {
		return consensus.SetEndpointLimit{Path: b.Path, Limit: b.EndpointLimit}
	}))
	m.HandleFunc("DELETE "+adminapi.PathEndpoints, a.remove(queryValue("path"), func(s string) consensus.Command { return consensus.DeleteEndpointLimit{Path: s} }))
	m.HandleFunc("PUT "+adminapi.PathTenants, put(a, func(b adminapi.TenantPut) consensus.Command {
		return consensus.PutTenant{Name: b.Name, Limit: b.TenantLimit}
	}))
	m.HandleFunc("DELETE "+adminapi.PathTenants+"/{name}", a.remove(pathValue("name"), func(s string) consensus.Command { return consensus.DeleteTenant{Name: s} }))
	m.HandleFunc("POST "+adminapi.PathKeys, a.putKey)
	m.HandleFunc("DELETE "+adminapi.PathKeys+"/{id}", a.remove(pathValue("id"), func(s string) consensus.Command { return consensus.DeleteKey{Hash: s} }))
	m.HandleFunc("GET "+adminapi.PathBreakers, a.getBreakers)
	m.HandleFunc("POST "+adminapi.PathBreakers+"/{node}/{model}/{action}", a.breakerAction)
	m.HandleFunc("GET "+adminapi.PathCache, a.getCache)
	m.HandleFunc("DELETE "+adminapi.PathCache, a.deleteCache)
	m.HandleFunc("GET "+adminapi.PathCacheSetting, a.getCacheSettings)
	m.HandleFunc("PUT "+adminapi.PathCacheSetting, a.putCacheSettings)
	m.HandleFunc("/admin/v1/", func(w http.ResponseWriter, r *http.Request) {
		adminError(w, http.StatusNotFound, "not_found", "no admin endpoint "+r.Method+" "+r.URL.Path)
	})
	return a
}

// ServeHTTP checks the bearer token, then dispatches.
func (a *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if Authorized(w, r, a.cfg.Token, a.cfg.Open, "the admin API") {
		a.mux.ServeHTTP(w, r)
	}
}

// Authorized applies the admin API's token rules to r, for the admin API
// and everything that shares them (the web UI's data, /debug/pprof): open
// when open is set (--dev without a token), 403 when no token is
// configured, 401 without the right bearer token. It answers w itself and
// returns false when r may not proceed; what names the guarded surface in
// the 403 message.
func Authorized(w http.ResponseWriter, r *http.Request, token string, open bool, what string) bool {
	if open {
		return true
	}
	if token == "" {
		adminError(w, http.StatusForbidden, "admin_disabled", what+" is disabled: set admin.token or SHOAL_ADMIN_TOKEN on every node")
		return false
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="shoal-admin"`)
		adminError(w, http.StatusUnauthorized, "unauthorized", "unauthorized")
		return false
	}
	return true
}

func adminError(w http.ResponseWriter, status int, code, msg string) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeAdminJSON(w, status, adminapi.ErrorBody{Error: adminapi.ErrorDetail{Message: msg, Type: "admin_error", Code: code}})
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
func (a *Server) fail(w http.ResponseWriter, err error) {
	var ve *consensus.ValidationError
	var se *StatusError
	switch {
	case errors.As(err, &se):
		adminError(w, se.Status, se.Code, se.Msg)
	case errors.As(err, &ve):
		adminError(w, http.StatusBadRequest, "invalid_field", err.Error())
	case errors.Is(err, consensus.ErrInvalidCommand), errors.Is(err, ErrBadRequest),
		errors.Is(err, consensus.ErrUnknownTenant), errors.Is(err, consensus.ErrTenantInUse):
		adminError(w, http.StatusBadRequest, "bad_request", err.Error())
	case errors.Is(err, ErrNotFound):
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

func (a *Server) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 10*time.Second)
}

// apply validates cmd and commits it through Raft, answering the error if
// either fails; it reports whether the caller should write its answer.
func (a *Server) apply(w http.ResponseWriter, r *http.Request, cmd consensus.Command) bool {
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

func (a *Server) cluster(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	v, err := a.cfg.Backend.ClusterView(ctx)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, v)
}

func (a *Server) join(w http.ResponseWriter, r *http.Request) {
	var body adminapi.JoinRequest
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
	writeAdminJSON(w, http.StatusOK, adminapi.JoinResult{Joined: n})
}

func (a *Server) leave(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := a.cfg.Backend.Leave(ctx); err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, adminapi.Left{Left: true})
}

func (a *Server) getBatching(w http.ResponseWriter, _ *http.Request) {
	writeAdminJSON(w, http.StatusOK, adminapi.BatchingList{Models: a.cfg.Backend.Batching()})
}

func (a *Server) putBatching(w http.ResponseWriter, r *http.Request) {
	var body adminapi.BatchingPut
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
	writeAdminJSON(w, http.StatusOK, adminapi.BatchingResult{Model: body.Model, MaxSize: cur.MaxSize, FlushTimeout: cur.FlushTimeout.String()})
}

func (a *Server) getLimits(w http.ResponseWriter, _ *http.Request) {
	writeAdminJSON(w, http.StatusOK, a.cfg.Backend.Limits())
}

// putLimits replaces the policy. API keys are kept unless the body lists
// "keys" (keys are added one by one through /admin/v1/keys, which hashes
// them).
func (a *Server) putLimits(w http.ResponseWriter, r *http.Request) {
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

func (a *Server) putKey(w http.ResponseWriter, r *http.Request) {
	var body adminapi.KeyPut
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
	writeAdminJSON(w, http.StatusOK, adminapi.KeyResult{ID: cmd.Hash, Prefix: consensus.KeyPrefix(body.Key), RPM: body.RPM, TPM: body.TPM, Tenant: body.Tenant})
}

func (a *Server) getBreakers(w http.ResponseWriter, _ *http.Request) {
	writeAdminJSON(w, http.StatusOK, adminapi.BreakerList{Breakers: a.cfg.Backend.Breakers()})
}

func (a *Server) breakerAction(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	switch action {
	case "open", "close", "reset":
	default:
		adminError(w, http.StatusBadRequest, "invalid_field", "action must be open, close or reset, got "+action)
		return
	}
	node := r.PathValue("node")
	if known := a.cfg.Backend.Nodes(); !slices.Contains(known, node) {
		adminError(w, http.StatusNotFound, "node_not_found", fmt.Sprintf("node %q is not in the cluster; known nodes: %s", node, strings.Join(known, ", ")))
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	if err := a.cfg.Backend.BreakerAction(ctx, node, r.PathValue("model"), action); err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, adminapi.BreakerResult{Breaker: consensus.BreakerKey(node, r.PathValue("model")), Action: action})
}

func (a *Server) getCache(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	v, err := a.cfg.Backend.CacheStats(ctx)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, v)
}

func (a *Server) deleteCache(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	model := r.URL.Query().Get("model")
	if err := a.cfg.Backend.PurgeCache(ctx, model); err != nil {
		a.fail(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, adminapi.Purged{Purged: true, Model: model})
}

// put serves a write whose body maps to one command, answering the body
// as applied.
func put[T any](a *Server, command func(T) consensus.Command) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var body T
		if !decode(w, r, &body) {
			return
		}
		if !a.apply(w, r, command(body)) {
			return
		}
		writeAdminJSON(w, http.StatusOK, body)
	}
}

// remove serves a DELETE of the thing name reads from the request.
func (a *Server) remove(name func(*http.Request) string, command func(string) consensus.Command) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := name(r)
		if !a.apply(w, r, command(n)) {
			return
		}
		writeAdminJSON(w, http.StatusOK, adminapi.Deleted{Deleted: n})
	}
}

func pathValue(key string) func(*http.Request) string {
	return func(r *http.Request) string { return r.PathValue(key) }
}

func queryValue(key string) func(*http.Request) string {
	return func(r *http.Request) string { return r.URL.Query().Get(key) }
}

func (a *Server) cacheSettingsView() adminapi.CacheSettingsView {
	s, fromRaft := a.cfg.Backend.CacheSettings()
	v := adminapi.CacheSettingsView{Settings: s, Source: "config"}
	if fromRaft {
		v.Source = "raft"
	}
	return v
}

func (a *Server) getCacheSettings(w http.ResponseWriter, _ *http.Request) {
	writeAdminJSON(w, http.StatusOK, a.cacheSettingsView())
}

// putCacheSettings changes the cluster's cache settings, starting from the
// effective ones so that a field left out keeps its value.
func (a *Server) putCacheSettings(w http.ResponseWriter, r *http.Request) {
	var body adminapi.CacheSettingsPut
	if !decode(w, r, &body) {
		return
	}
	cur, _ := a.cfg.Backend.CacheSettings()
	if body.DefaultTTL != nil {
		d, err := time.ParseDuration(*body.DefaultTTL)
		if err != nil {
			adminError(w, http.StatusBadRequest, "invalid_field", fmt.Sprintf("default_ttl: invalid duration %q", *body.DefaultTTL))
			return
		}
		cur.DefaultTTL = d
	}
	if body.Lowercase != nil {
		cur.Lowercase = *body.Lowercase
	}
	if body.Scope != nil {
		cur.Scope = *body.Scope
	}
	if !a.apply(w, r, consensus.SetCacheSettings{Settings: cur}) {
		return
	}
	writeAdminJSON(w, http.StatusOK, adminapi.CacheSettingsView{Settings: cur, Source: "raft"})
}
