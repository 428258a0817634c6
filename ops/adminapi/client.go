package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/consensus"
)

// Errors of the client.
var (
	// ErrNoAdminAPI means the node answered 404 for the API itself: an
	// older build, or a proxy that hides /admin/v1.
	ErrNoAdminAPI = errors.New("node has no admin API at /admin/v1")
	// ErrUnauthorized means the admin token was missing or wrong, or the
	// node's admin API is off (403).
	ErrUnauthorized = errors.New("admin API refused the token (pass --token or set SHOAL_ADMIN_TOKEN)")
)

// APIError is a non-2xx answer of the admin API. It matches
// ErrUnauthorized for 401 and 403 and ErrNoAdminAPI for a 404 that did not
// come from the API itself.
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

// Is lets errors.Is match the sentinel errors by status.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
	case ErrNoAdminAPI:
		// The API's own 404s carry a code; a bare 404 is someone else's.
		return e.Status == http.StatusNotFound && e.Code == ""
	}
	return false
}

// Client calls one node's /admin/v1 API.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient returns a client for the node at baseURL ("host:port" means
// http://host:port); hc may be nil.
func NewClient(baseURL, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 60 * time.Second}
	}
	base := strings.TrimRight(baseURL, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{base: base, token: token, http: hc}
}

// Base is the node's base URL.
func (c *Client) Base() string { return c.base }

// Do sends in as JSON (nil for no body) and decodes the answer into out
// (nil to drop it; *json.RawMessage keeps it as is).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, c.base+path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		ae := &APIError{Status: resp.StatusCode, Message: strings.TrimSpace(string(data))}
		var e ErrorBody
		if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
			ae.Message, ae.Code = e.Error.Message, e.Error.Code
		}
		if errors.Is(ae, ErrUnauthorized) {
			return fmt.Errorf("%s %s: %w: %w", method, path, ErrUnauthorized, ae)
		}
		return fmt.Errorf("%s %s: %w", method, path, ae)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Cluster returns the members, leader and Raft configuration.
func (c *Client) Cluster(ctx context.Context) (ClusterView, error) {
	var v ClusterView
	return v, c.Do(ctx, http.MethodGet, PathCluster, nil, &v)
}

// Join tells the node to join the cluster that addrs belong to.
func (c *Client) Join(ctx context.Context, addrs []string) (JoinResult, error) {
	var v JoinResult
	return v, c.Do(ctx, http.MethodPost, PathJoin, JoinRequest{Addrs: addrs}, &v)
}

// Leave makes the node leave the cluster gracefully.
func (c *Client) Leave(ctx context.Context) error {
	return c.Do(ctx, http.MethodPost, PathLeave, nil, nil)
}

// Batching returns every model's batching settings.
func (c *Client) Batching(ctx context.Context) (map[string]consensus.BatchingSettings, error) {
	var v BatchingList
	return v.Models, c.Do(ctx, http.MethodGet, PathBatching, nil, &v)
}

// SetBatching changes a model's batching cluster-wide.
func (c *Client) SetBatching(ctx context.Context, put BatchingPut) (BatchingResult, error) {
	var v BatchingResult
	return v, c.Do(ctx, http.MethodPut, PathBatching, put, &v)
}

// DeleteBatching drops a model's cluster-wide batching, so every node
// returns to its configured settings.
func (c *Client) DeleteBatching(ctx context.Context, model string) error {
	return c.Do(ctx, http.MethodDelete, PathBatching+"/"+url.PathEscape(model), nil, nil)
}

// Limits returns the effective rate-limit policy.
func (c *Client) Limits(ctx context.Context) (consensus.LimitPolicy, error) {
	var v consensus.LimitPolicy
	return v, c.Do(ctx, http.MethodGet, PathLimits, nil, &v)
}

// SetEndpointLimit sets one request path's cluster-wide limit and returns
// what was applied.
func (c *Client) SetEndpointLimit(ctx context.Context, put EndpointPut) (EndpointPut, error) {
	var v EndpointPut
	return v, c.Do(ctx, http.MethodPut, PathEndpoints, put, &v)
}

// DeleteEndpointLimit removes one request path's limit.
func (c *Client) DeleteEndpointLimit(ctx context.Context, path string) error {
	return c.Do(ctx, http.MethodDelete, PathEndpoints+"?path="+url.QueryEscape(path), nil, nil)
}

// PutTenant adds or replaces a tenant's limits and returns what was
// applied.
func (c *Client) PutTenant(ctx context.Context, put TenantPut) (TenantPut, error) {
	var v TenantPut
	return v, c.Do(ctx, http.MethodPut, PathTenants, put, &v)
}

// DeleteTenant removes a tenant that no key names.
func (c *Client) DeleteTenant(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, PathTenants+"/"+url.PathEscape(name), nil, nil)
}

// PutKey registers an API key.
func (c *Client) PutKey(ctx context.Context, put KeyPut) (KeyResult, error) {
	var v KeyResult
	return v, c.Do(ctx, http.MethodPost, PathKeys, put, &v)
}

// DeleteKey removes an API key by its id (hash).
func (c *Client) DeleteKey(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, PathKeys+"/"+url.PathEscape(id), nil, nil)
}

// Breakers returns every circuit breaker the cluster tracks.
func (c *Client) Breakers(ctx context.Context) ([]consensus.BreakerState, error) {
	var v BreakerList
	return v.Breakers, c.Do(ctx, http.MethodGet, PathBreakers, nil, &v)
}

// BreakerAction forces a breaker open or closed, or resets it.
func (c *Client) BreakerAction(ctx context.Context, node, model, action string) (BreakerResult, error) {
	var v BreakerResult
	path := PathBreakers + "/" + url.PathEscape(node) + "/" + url.PathEscape(model) + "/" + url.PathEscape(action)
	return v, c.Do(ctx, http.MethodPost, path, nil, &v)
}

// CacheSettings returns the effective response-cache settings.
func (c *Client) CacheSettings(ctx context.Context) (CacheSettingsView, error) {
	var v CacheSettingsView
	return v, c.Do(ctx, http.MethodGet, PathCacheSetting, nil, &v)
}

// SetCacheSettings changes the response-cache settings on every node.
func (c *Client) SetCacheSettings(ctx context.Context, put CacheSettingsPut) (CacheSettingsView, error) {
	var v CacheSettingsView
	return v, c.Do(ctx, http.MethodPut, PathCacheSetting, put, &v)
}

// PurgeCache drops cached answers: all, or one model's.
func (c *Client) PurgeCache(ctx context.Context, model string) (Purged, error) {
	path := PathCache
	if model != "" {
		path += "?model=" + url.QueryEscape(model)
	}
	var v Purged
	return v, c.Do(ctx, http.MethodDelete, path, nil, &v)
}
