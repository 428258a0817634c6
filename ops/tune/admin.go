package tune

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Errors of the admin client.
var (
	// ErrNoAdminAPI means the node answered 404 on /admin/v1: an older
	// build, or a proxy that hides the admin API.
	ErrNoAdminAPI = errors.New("node has no admin API at /admin/v1")
	// ErrUnauthorized means the admin token was missing or wrong.
	ErrUnauthorized = errors.New("admin API refused the token (pass --token or set SHOAL_ADMIN_TOKEN)")
)

// Setting is one model's batching configuration.
type Setting struct {
	MaxSize      int
	FlushTimeout time.Duration
}

func (s Setting) String() string {
	return fmt.Sprintf("max_size=%d flush=%s", s.MaxSize, s.FlushTimeout)
}

type settingJSON struct {
	MaxSize      int    `json:"max_size"`
	FlushTimeout string `json:"flush_timeout"`
}

// UnmarshalJSON reads {"max_size": N, "flush_timeout": "10ms"}; a number is
// taken as nanoseconds.
func (s *Setting) UnmarshalJSON(b []byte) error {
	var raw struct {
		MaxSize      int             `json:"max_size"`
		FlushTimeout json.RawMessage `json:"flush_timeout"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	s.MaxSize = raw.MaxSize
	s.FlushTimeout = 0
	if len(raw.FlushTimeout) == 0 || string(raw.FlushTimeout) == "null" {
		return nil
	}
	var str string
	if err := json.Unmarshal(raw.FlushTimeout, &str); err == nil {
		d, err := time.ParseDuration(str)
		if err != nil {
			return fmt.Errorf("flush_timeout: %w", err)
		}
		s.FlushTimeout = d
		return nil
	}
	var ns int64
	if err := json.Unmarshal(raw.FlushTimeout, &ns); err != nil {
		return fmt.Errorf("flush_timeout: want a duration string or nanoseconds, got %s", raw.FlushTimeout)
	}
	s.FlushTimeout = time.Duration(ns)
	return nil
}

// MarshalJSON writes the admin API's shape.
func (s Setting) MarshalJSON() ([]byte, error) {
	return json.Marshal(settingJSON{MaxSize: s.MaxSize, FlushTimeout: s.FlushTimeout.String()})
}

// ModelLoad is a member's load for one model in GET /admin/v1/cluster.
type ModelLoad struct {
	QueueDepth    int `json:"queue_depth"`
	ActiveBatches int `json:"active_batches"`
	Running       int `json:"running"`
	Slots         int `json:"slots"`
}

// GPU is a member's GPU capacity.
type GPU struct {
	Count         int `json:"count"`
	MemoryTotalMB int `json:"memory_total_mb"`
	MemoryFreeMB  int `json:"memory_free_mb"`
}

// Member is one cluster member.
type Member struct {
	Name     string               `json:"name"`
	State    string               `json:"state"`
	Role     string               `json:"role"`
	HTTPAddr string               `json:"http_addr"`
	Version  string               `json:"version"`
	Models   map[string]ModelLoad `json:"models"`
	GPU      GPU                  `json:"gpu"`
}

// Cluster is GET /admin/v1/cluster.
type Cluster struct {
	// Node is the member that answered.
	Node    string   `json:"node"`
	Leader  string   `json:"leader"`
	Members []Member `json:"members"`
}

// Breaker is one circuit breaker in GET /admin/v1/breakers.
type Breaker struct {
	Node   string `json:"node"`
	Model  string `json:"model"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

// Admin is a client of a node's admin API.
type Admin struct {
	base   string
	token  string
	client *http.Client
}

// NewAdmin returns a client for the node at baseURL; client may be nil.
func NewAdmin(baseURL, token string, client *http.Client) *Admin {
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	return &Admin{base: strings.TrimRight(baseURL, "/"), token: token, client: client}
}

// Batching returns every model's batching settings.
func (a *Admin) Batching(ctx context.Context) (map[string]Setting, error) {
	var out struct {
		Models map[string]Setting `json:"models"`
	}
	if err := a.do(ctx, http.MethodGet, "/admin/v1/batching", nil, &out); err != nil {
		return nil, fmt.Errorf("get batching: %w", err)
	}
	return out.Models, nil
}

// SetBatching applies s to model cluster-wide and returns what the node
// applied.
func (a *Admin) SetBatching(ctx context.Context, model string, s Setting) (Setting, error) {
	in := map[string]any{"model": model, "max_size": s.MaxSize, "flush_timeout": s.FlushTimeout.String()}
	var out Setting
	if err := a.do(ctx, http.MethodPut, "/admin/v1/batching", in, &out); err != nil {
		return Setting{}, fmt.Errorf("set batching of %s to %s: %w", model, s, err)
	}
	return out, nil
}

// Cluster returns the cluster view of the node.
func (a *Admin) Cluster(ctx context.Context) (Cluster, error) {
	var out Cluster
	if err := a.do(ctx, http.MethodGet, "/admin/v1/cluster", nil, &out); err != nil {
		return Cluster{}, fmt.Errorf("get cluster: %w", err)
	}
	return out, nil
}

// Breakers returns every circuit breaker the cluster tracks.
func (a *Admin) Breakers(ctx context.Context) ([]Breaker, error) {
	var out struct {
		Breakers []Breaker `json:"breakers"`
	}
	if err := a.do(ctx, http.MethodGet, "/admin/v1/breakers", nil, &out); err != nil {
		return nil, fmt.Errorf("get breakers: %w", err)
	}
	return out.Breakers, nil
}

// APIError is a non-2xx admin answer.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("%d: %s", e.Status, e.Message)
}

func (a *Admin) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return ErrUnauthorized
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		var e struct {
			Error struct {
				Message string `json:"message"`
				Code    string `json:"code"`
			} `json:"error"`
		}
		ae := &APIError{Status: resp.StatusCode, Message: strings.TrimSpace(string(data))}
		if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
			ae.Message, ae.Code = e.Error.Message, e.Error.Code
		}
		if resp.StatusCode == http.StatusNotFound && ae.Code != "model_not_found" {
			return fmt.Errorf("%w (%v)", ErrNoAdminAPI, ae)
		}
		return ae
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}
