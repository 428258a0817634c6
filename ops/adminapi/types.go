// Package adminapi is the contract of a node's /admin/v1 API: the request
// and response bodies the server writes and reads, and the one client that
// the CLI, `shoal tune` and `shoal top` use, so the two sides cannot drift.
package adminapi

import (
	"github.com/shoal-dev/shoal/consensus"
)

// Paths of the admin API.
const (
	PathCluster      = "/admin/v1/cluster"
	PathJoin         = "/admin/v1/cluster/join"
	PathLeave        = "/admin/v1/cluster/leave"
	PathBatching     = "/admin/v1/batching"
	PathLimits       = "/admin/v1/limits"
	PathEndpoints    = "/admin/v1/limits/endpoints"
	PathTenants      = "/admin/v1/limits/tenants"
	PathKeys         = "/admin/v1/keys"
	PathBreakers     = "/admin/v1/breakers"
	PathCache        = "/admin/v1/cache"
	PathCacheSetting = "/admin/v1/cache/settings"
)

// ClusterView is GET /admin/v1/cluster.
type ClusterView struct {
	// Node is the member that answered.
	Node    string             `json:"node"`
	Leader  string             `json:"leader"`
	Members []MemberView       `json:"members"`
	Raft    []consensus.Server `json:"raft"`
	Index   uint64             `json:"raft_applied_index"`
}

// MemberView is one member in GET /admin/v1/cluster.
type MemberView struct {
	Name     string                   `json:"name"`
	State    string                   `json:"state"`
	Role     string                   `json:"role"`
	HTTPAddr string                   `json:"http_addr"`
	Gossip   string                   `json:"gossip_addr"`
	RaftAddr string                   `json:"raft_addr"`
	Version  string                   `json:"version"`
	Models   map[string]ModelLoadView `json:"models"`
	GPU      GPUView                  `json:"gpu"`
	LoadAge  string                   `json:"load_age"`
}

// ModelLoadView is a member's load for one model.
type ModelLoadView struct {
	QueueDepth    int `json:"queue_depth"`
	ActiveBatches int `json:"active_batches"`
	Running       int `json:"running"`
	Slots         int `json:"slots"`
	// TokensPerSec is the member's recent generation rate, from its load report.
	TokensPerSec float64 `json:"tokens_per_sec"`
}

// GPUView is a member's GPU capacity.
type GPUView struct {
	Count          int     `json:"count"`
	MemoryTotalMB  int     `json:"memory_total_mb"`
	MemoryFreeMB   int     `json:"memory_free_mb"`
	UtilizationPct float64 `json:"utilization_pct"`
}

// JoinRequest is POST /admin/v1/cluster/join.
type JoinRequest struct {
	Addrs []string `json:"addrs"`
}

// JoinResult answers a join: how many members were contacted.
type JoinResult struct {
	Joined int `json:"joined"`
}

// BatchingList is GET /admin/v1/batching.
type BatchingList struct {
	Models map[string]consensus.BatchingSettings `json:"models"`
}

// BatchingPut is PUT /admin/v1/batching; absent fields keep their value.
type BatchingPut struct {
	Model        string `json:"model"`
	MaxSize      *int   `json:"max_size,omitempty"`
	FlushTimeout string `json:"flush_timeout,omitempty"`
}

// BatchingResult answers PUT /admin/v1/batching with what was applied.
type BatchingResult struct {
	Model        string `json:"model"`
	MaxSize      int    `json:"max_size"`
	FlushTimeout string `json:"flush_timeout"`
}

// KeyPut is POST /admin/v1/keys: the raw key is hashed by the node and
// never stored.
type KeyPut struct {
	Key    string `json:"key"`
	RPM    int    `json:"rpm"`
	TPM    int    `json:"tpm"`
	Tenant string `json:"tenant"`
}

// KeyResult answers POST /admin/v1/keys.
type KeyResult struct {
	ID     string `json:"id"`
	Prefix string `json:"prefix"`
	RPM    int    `json:"rpm"`
	TPM    int    `json:"tpm"`
	Tenant string `json:"tenant"`
}

// Deleted answers every DELETE of one named thing.
type Deleted struct {
	Deleted string `json:"deleted"`
}

// EndpointPut is PUT /admin/v1/limits/endpoints: the limit of one request
// path, cluster-wide.
type EndpointPut struct {
	Path string `json:"path"`
	consensus.EndpointLimit
}

// TenantPut is PUT /admin/v1/limits/tenants: the limits that all keys of
// one tenant share.
type TenantPut struct {
	Name string `json:"name"`
	consensus.TenantLimit
}

// BreakerList is GET /admin/v1/breakers.
type BreakerList struct {
	Breakers []consensus.BreakerState `json:"breakers"`
}

// BreakerResult answers POST /admin/v1/breakers/{node}/{model}/{action}.
type BreakerResult struct {
	Breaker string `json:"breaker"`
	Action  string `json:"action"`
}

// CacheSettingsPut is PUT /admin/v1/cache/settings; absent fields keep
// their value. The settings go through Raft and apply on every node.
type CacheSettingsPut struct {
	// DefaultTTL is a duration such as "10m".
	DefaultTTL *string `json:"default_ttl,omitempty"`
	Lowercase  *bool   `json:"lowercase,omitempty"`
	// Scope is cluster, tenant or key: who may share a cached answer.
	Scope *string `json:"scope,omitempty"`
}

// CacheSettingsView is GET /admin/v1/cache/settings and the answer of its
// PUT: the effective settings and whether they came from Raft or from this
// node's configuration file.
type CacheSettingsView struct {
	Settings consensus.CacheSettings `json:"settings"`
	// Source is "raft" once set through the admin API, else "config".
	Source string `json:"source"`
}

// Purged answers DELETE /admin/v1/cache.
type Purged struct {
	Purged bool   `json:"purged"`
	Model  string `json:"model"`
}

// Left answers POST /admin/v1/cluster/leave.
type Left struct {
	Left bool `json:"left"`
}

// Applied answers a forwarded write.
type Applied struct {
	Applied bool `json:"applied"`
}

// ErrorBody is every non-2xx answer, OpenAI-shaped.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the error inside ErrorBody.
type ErrorDetail struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Param   string `json:"param,omitempty"`
	Code    string `json:"code"`
}
