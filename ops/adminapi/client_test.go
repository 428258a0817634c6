package adminapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops/adminapi"
	"github.com/shoal-dev/shoal/ops/bench/benchtest"
)

const model = "sim-admin"

func start(t *testing.T) (*benchtest.Node, *adminapi.Client) {
	t.Helper()
	n := benchtest.Start(t, "admin-node", benchtest.Model{Name: model, Sim: benchtest.FastSim(), MaxSize: 8, FlushTimeout: time.Millisecond, Slots: 1})
	return n, adminapi.NewClient(n.URL, benchtest.AdminToken, nil)
}

func TestClientErrors(t *testing.T) {
	n, a := start(t)
	ctx := context.Background()

	_, err := adminapi.NewClient(n.URL, "wrong", nil).Batching(ctx)
	require.ErrorIs(t, err, adminapi.ErrUnauthorized)

	size := 4
	_, err = a.SetBatching(ctx, adminapi.BatchingPut{Model: "nope", MaxSize: &size})
	var ae *adminapi.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusNotFound, ae.Status)
	require.NotErrorIs(t, err, adminapi.ErrNoAdminAPI, "the API's own 404 names a code")

	size = 0
	_, err = a.SetBatching(ctx, adminapi.BatchingPut{Model: model, MaxSize: &size})
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusBadRequest, ae.Status)
	require.Contains(t, ae.Message, "max_size")

	size = 32
	got, err := a.SetBatching(ctx, adminapi.BatchingPut{Model: model, MaxSize: &size, FlushTimeout: "5ms"})
	require.NoError(t, err)
	require.Equal(t, adminapi.BatchingResult{Model: model, MaxSize: 32, FlushTimeout: "5ms"}, got)

	c, err := a.Cluster(ctx)
	require.NoError(t, err)
	require.Equal(t, "admin-node", c.Leader)
	require.Len(t, c.Members, 1)
	require.Contains(t, c.Members[0].Models, model)
}

func TestDeleteBatchingReturnsToConfiguredSettings(t *testing.T) {
	n, a := start(t)
	ctx := context.Background()
	size := 3
	_, err := a.SetBatching(ctx, adminapi.BatchingPut{Model: model, MaxSize: &size})
	require.NoError(t, err)
	require.Eventually(t, func() bool { s, _ := n.Scheduler().Settings(model); return s.MaxSize == 3 }, 10*time.Second, 10*time.Millisecond)

	require.NoError(t, a.DeleteBatching(ctx, model))
	require.Eventually(t, func() bool { s, _ := n.Scheduler().Settings(model); return s.MaxSize == 8 }, 10*time.Second, 10*time.Millisecond,
		"the model's configured max_size is back")
}

func TestBreakerActions(t *testing.T) {
	_, a := start(t)
	ctx := context.Background()

	res, err := a.BreakerAction(ctx, "admin-node", model, "open")
	require.NoError(t, err)
	require.Equal(t, "open", res.Action)
	br, err := a.Breakers(ctx)
	require.NoError(t, err)
	require.Len(t, br, 1)
	require.Equal(t, consensus.BreakerOpen, br[0].State)
	require.Equal(t, "opened by operator", br[0].Reason)

	for _, action := range []string{"close", "reset"} {
		_, err = a.BreakerAction(ctx, "admin-node", model, action)
		require.NoError(t, err, action)
		br, err = a.Breakers(ctx)
		require.NoError(t, err)
		require.Empty(t, br, "after %s the breaker is closed and forgotten", action)
		_, err = a.BreakerAction(ctx, "admin-node", model, "open")
		require.NoError(t, err)
	}

	_, err = a.BreakerAction(ctx, "admin-node", model, "explode")
	var ae *adminapi.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusBadRequest, ae.Status)
}

func TestBreakerOfUnknownNodeIs404NamingKnownNodes(t *testing.T) {
	_, a := start(t)
	_, err := a.BreakerAction(context.Background(), "node-2", model, "open")
	var ae *adminapi.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusNotFound, ae.Status)
	require.Equal(t, "node_not_found", ae.Code)
	require.Contains(t, ae.Message, `"node-2"`)
	require.Contains(t, ae.Message, "known nodes: admin-node")
}

func TestKeysAddAndDelete(t *testing.T) {
	_, a := start(t)
	ctx := context.Background()
	k, err := a.PutKey(ctx, adminapi.KeyPut{Key: "sk-test-0123456789abcdef", RPM: 7})
	require.NoError(t, err)
	require.Equal(t, consensus.HashKey("sk-test-0123456789abcdef"), k.ID)
	p, err := a.Limits(ctx)
	require.NoError(t, err)
	require.Equal(t, 7, p.Keys[k.ID].RPM)

	require.NoError(t, a.DeleteKey(ctx, k.ID))
	p, err = a.Limits(ctx)
	require.NoError(t, err)
	require.NotContains(t, p.Keys, k.ID)

	err = a.DeleteKey(ctx, "not-a-hash")
	var ae *adminapi.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusBadRequest, ae.Status)
}

func TestEndpointLimitsAndTenants(t *testing.T) {
	_, a := start(t)
	ctx := context.Background()
	p, err := a.Limits(ctx)
	require.NoError(t, err)
	require.Empty(t, p.Endpoints)

	_, err = a.SetEndpointLimit(ctx, adminapi.EndpointPut{Path: "/v1/chat/completions", EndpointLimit: consensus.EndpointLimit{RPM: 60, RPH: 1000}})
	require.NoError(t, err)
	_, err = a.PutTenant(ctx, adminapi.TenantPut{Name: "acme", TenantLimit: consensus.TenantLimit{RPM: 100, TPM: 5000}})
	require.NoError(t, err)
	_, err = a.PutKey(ctx, adminapi.KeyPut{Key: "sk-acme-0123456789abcdef", Tenant: "acme"})
	require.NoError(t, err)
	p, err = a.Limits(ctx)
	require.NoError(t, err)
	require.Equal(t, consensus.EndpointLimit{RPM: 60, RPH: 1000}, p.Endpoints["/v1/chat/completions"])
	require.Equal(t, consensus.TenantLimit{RPM: 100, TPM: 5000}, p.Tenants["acme"])

	err = a.DeleteTenant(ctx, "acme")
	var ae *adminapi.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusBadRequest, ae.Status, "a tenant a key names stays")
	require.NoError(t, a.DeleteKey(ctx, consensus.HashKey("sk-acme-0123456789abcdef")))
	require.NoError(t, a.DeleteTenant(ctx, "acme"))
	require.NoError(t, a.DeleteEndpointLimit(ctx, "/v1/chat/completions"))
	p, err = a.Limits(ctx)
	require.NoError(t, err)
	require.Empty(t, p.Endpoints)
	require.Empty(t, p.Tenants)

	_, err = a.SetEndpointLimit(ctx, adminapi.EndpointPut{Path: "no-slash", EndpointLimit: consensus.EndpointLimit{RPM: 1}})
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusBadRequest, ae.Status)
}

func TestCacheStatsAndPurge(t *testing.T) {
	_, a := start(t)
	ctx := context.Background()
	var stats map[string]any
	require.NoError(t, a.Do(ctx, http.MethodGet, adminapi.PathCache, nil, &stats))
	require.Equal(t, "admin-node", stats["node"])
	require.Contains(t, stats, "hit_ratio")
	p, err := a.PurgeCache(ctx, model)
	require.NoError(t, err)
	require.Equal(t, adminapi.Purged{Purged: true, Model: model}, p)
}

// Cache settings set through one node apply on every node.
func TestCacheSettingsReplicateToEveryNode(t *testing.T) {
	nodes := benchtest.StartCluster(t, 2, benchtest.Model{Name: model, Sim: benchtest.FastSim(), MaxSize: 8, FlushTimeout: time.Millisecond, Slots: 1})
	ctx := context.Background()
	a1 := adminapi.NewClient(nodes[0].URL, benchtest.AdminToken, nil)
	a2 := adminapi.NewClient(nodes[1].URL, benchtest.AdminToken, nil)
	v, err := a2.CacheSettings(ctx)
	require.NoError(t, err)
	require.Equal(t, "config", v.Source)
	require.Equal(t, 2*time.Hour, v.Settings.DefaultTTL)

	ttl, scope := "10m", consensus.CacheScopeTenant
	// The follower forwards; either node may be the leader.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		_, err := a2.SetCacheSettings(ctx, adminapi.CacheSettingsPut{DefaultTTL: &ttl, Scope: &scope})
		assert.NoError(c, err)
	}, 20*time.Second, 100*time.Millisecond)
	for _, a := range []*adminapi.Client{a1, a2} {
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			v, err := a.CacheSettings(ctx)
			assert.NoError(c, err)
			assert.Equal(c, "raft", v.Source)
			assert.Equal(c, 10*time.Minute, v.Settings.DefaultTTL)
			assert.Equal(c, consensus.CacheScopeTenant, v.Settings.Scope)
		}, 10*time.Second, 20*time.Millisecond, a.Base())
	}

	bad := "forever"
	_, err = a1.SetCacheSettings(ctx, adminapi.CacheSettingsPut{Scope: &bad})
	var ae *adminapi.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusBadRequest, ae.Status)
}

// Without admin.token and outside dev mode the admin API is off (403);
// in dev mode without a token it is open.
func TestAdminOffWithoutTokenOpenInDev(t *testing.T) {
	m := benchtest.Model{Name: model, Sim: benchtest.FastSim(), MaxSize: 8, FlushTimeout: time.Millisecond, Slots: 1}
	cfg := benchtest.Config(t, "no-token", m)
	cfg.Admin.Token = ""
	off := benchtest.StartConfig(t, cfg)
	_, err := adminapi.NewClient(off.URL, "", nil).Limits(context.Background())
	var ae *adminapi.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusForbidden, ae.Status)
	require.Equal(t, "admin_disabled", ae.Code)
	require.ErrorIs(t, err, adminapi.ErrUnauthorized)

	cfg = benchtest.Config(t, "dev", m)
	cfg.Admin.Token = ""
	cfg.Dev = true
	dev := benchtest.StartConfig(t, cfg)
	a := adminapi.NewClient(dev.URL, "", nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v, err := a.Cluster(context.Background())
		assert.NoError(c, err)
		assert.Equal(c, "dev", v.Leader)
	}, 20*time.Second, 20*time.Millisecond)
	_, err = a.Limits(context.Background())
	require.NoError(t, err)
}

// A server that is not shoal (or a proxy hiding /admin/v1) answers a bare
// 404: the client says there is no admin API rather than "not found".
func TestBare404IsNoAdminAPI(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	_, err := adminapi.NewClient(srv.URL, "", nil).Cluster(context.Background())
	require.ErrorIs(t, err, adminapi.ErrNoAdminAPI)
	require.NotErrorIs(t, err, adminapi.ErrUnauthorized)
}
