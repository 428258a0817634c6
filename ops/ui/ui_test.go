package ui_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/ops/ui"
)

const token = "ui-test-token-0123456789"

func serve(t *testing.T, cfg ui.Config) *httptest.Server {
	t.Helper()
	if cfg.Metrics == nil {
		cfg.Metrics = ops.NewMetrics().Registry
	}
	srv := httptest.NewServer(ui.New(cfg))
	t.Cleanup(srv.Close)
	return srv
}

type answer struct {
	status int
	header http.Header
	body   string
}

func get(t *testing.T, method, url string, header map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// The page must load without the token (it holds the login field), with
// explicit types, and revalidate so a new binary's files are picked up.
func TestStaticFilesHaveTypesAndCachingHeaders(t *testing.T) {
	srv := serve(t, ui.Config{Token: token})
	for _, tc := range []struct{ path, ctype, contains string }{
		{"/ui/", "text/html; charset=utf-8", `id="members"`},
		{"/ui/index.html", "text/html; charset=utf-8", `<script src="/ui/app.js"`},
		{"/ui/app.js", "text/javascript; charset=utf-8", "/admin/v1/cluster"},
		{"/ui/app.css", "text/css; charset=utf-8", "#chart"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			a := get(t, http.MethodGet, srv.URL+tc.path, nil)
			require.Equal(t, http.StatusOK, a.status)
			require.Equal(t, tc.ctype, a.header.Get("Content-Type"))
			require.Equal(t, "no-cache", a.header.Get("Cache-Control"))
			require.Equal(t, "nosniff", a.header.Get("X-Content-Type-Options"))
			require.Contains(t, a.header.Get("Content-Security-Policy"), "default-src 'self'")
			require.Contains(t, a.body, tc.contains)
			etag := a.header.Get("ETag")
			require.NotEmpty(t, etag)

			again := get(t, http.MethodGet, srv.URL+tc.path, map[string]string{"If-None-Match": etag})
			require.Equal(t, http.StatusNotModified, again.status)
			require.Empty(t, again.body)

			head := get(t, http.MethodHead, srv.URL+tc.path, nil)
			require.Equal(t, http.StatusOK, head.status)
			require.Empty(t, head.body)
		})
	}

	a := get(t, http.MethodGet, srv.URL+"/ui", nil)
	require.Equal(t, http.StatusMovedPermanently, a.status)
	require.Equal(t, "/ui/", a.header.Get("Location"))

	a = get(t, http.MethodGet, srv.URL+"/ui/nothing.js", nil)
	require.Equal(t, http.StatusNotFound, a.status)
	require.Contains(t, a.body, `"code":"not_found"`)

	a = get(t, http.MethodPost, srv.URL+"/ui/", nil)
	require.Equal(t, http.StatusMethodNotAllowed, a.status)
	require.Equal(t, "GET, HEAD", a.header.Get("Allow"))
}

// The UI works offline: nothing it serves refers to another origin.
func TestPageLoadsNothingFromElsewhere(t *testing.T) {
	srv := serve(t, ui.Config{Open: true})
	for _, p := range []string{"/ui/", "/ui/app.js", "/ui/app.css"} {
		a := get(t, http.MethodGet, srv.URL+p, nil)
		require.Equal(t, http.StatusOK, a.status)
		require.NotContains(t, a.body, "http://", p)
		require.NotContains(t, a.body, "https://", p)
		require.NotContains(t, a.body, "//cdn", p)
	}
}

// The UI's JSON follows the admin API's token rules.
func TestAPIFollowsAdminTokenRules(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    ui.Config
		header string
		status int
		code   string
	}{
		{"token configured, none sent", ui.Config{Token: token}, "", http.StatusUnauthorized, "unauthorized"},
		{"token configured, wrong one", ui.Config{Token: token}, "Bearer nope", http.StatusUnauthorized, "unauthorized"},
		{"token configured, not bearer", ui.Config{Token: token}, token, http.StatusUnauthorized, "unauthorized"},
		{"token configured, right one", ui.Config{Token: token}, "Bearer " + token, http.StatusOK, ""},
		{"dev, open", ui.Config{Open: true}, "", http.StatusOK, ""},
		{"no token, not dev", ui.Config{}, "Bearer " + token, http.StatusForbidden, "admin_disabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := serve(t, tc.cfg)
			h := map[string]string{}
			if tc.header != "" {
				h["Authorization"] = tc.header
			}
			a := get(t, http.MethodGet, srv.URL+"/ui/api/metrics", h)
			require.Equal(t, tc.status, a.status, a.body)
			require.Equal(t, "application/json", a.header.Get("Content-Type"))
			require.Equal(t, "no-store", a.header.Get("Cache-Control"))
			if tc.code != "" {
				var e struct {
					Error struct{ Message, Type, Code string }
				}
				require.NoError(t, json.Unmarshal([]byte(a.body), &e), a.body)
				require.Equal(t, tc.code, e.Error.Code)
				require.NotEmpty(t, e.Error.Message)
			}
			if tc.status == http.StatusUnauthorized {
				require.Equal(t, `Bearer realm="shoal-admin"`, a.header.Get("WWW-Authenticate"))
			}
		})
	}
	srv := serve(t, ui.Config{Open: true})
	require.Equal(t, http.StatusNotFound, get(t, http.MethodGet, srv.URL+"/ui/api/nothing", nil).status)
}

func TestMetricsSummaryFromRegistry(t *testing.T) {
	m := ops.NewMetrics()
	for i := 0; i < 90; i++ {
		m.ObserveRequest("a", "/v1/infer", 200, 20*time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		m.ObserveRequest("a", "/v1/infer", 503, 900*time.Millisecond)
	}
	m.ObserveRequest("b", "/v1/chat/completions", 200, 3*time.Millisecond)
	m.QueueDepth("a", 7)
	m.BatchStarted("a", 4)
	m.TokenRate.WithLabelValues("a").Set(42.5)
	srv := serve(t, ui.Config{Node: "n1", Open: true, Metrics: m.Registry})

	a := get(t, http.MethodGet, srv.URL+"/ui/api/metrics", nil)
	require.Equal(t, http.StatusOK, a.status, a.body)
	var s ui.Summary
	require.NoError(t, json.Unmarshal([]byte(a.body), &s))
	require.Equal(t, "n1", s.Node)
	require.InDelta(t, time.Now().UnixMilli(), s.TimeMs, 60000)
	require.Len(t, s.Models, 2)

	ma := s.Models["a"]
	require.NotNil(t, ma)
	require.Equal(t, 100.0, ma.Requests)
	require.Equal(t, 10.0, ma.Errors)
	require.Equal(t, 100.0, ma.Count)
	require.Equal(t, 7.0, ma.QueueDepth)
	require.Equal(t, 1.0, ma.ActiveBatches)
	require.Equal(t, 42.5, ma.TokensPerSec)
	// 90 at 20ms land in the (10,25] bucket, 10 at 900ms in (750,1000].
	require.Greater(t, ma.P50Ms, 10.0)
	require.LessOrEqual(t, ma.P50Ms, 25.0)
	require.Greater(t, ma.P95Ms, 750.0)
	require.LessOrEqual(t, ma.P95Ms, 1000.0)
	require.Len(t, ma.Buckets, len(ma.UpperMs))

	require.Equal(t, 101.0, s.Total.Requests)
	require.Equal(t, 10.0, s.Total.Errors)
	require.Equal(t, 101.0, s.Total.Count)
	require.Equal(t, 101.0, s.Total.Buckets[len(s.Total.Buckets)-1])
}

// A model label can be a client's string; the summary stays bounded.
func TestMetricsSummaryIsBounded(t *testing.T) {
	m := ops.NewMetrics()
	for i := 0; i < 400; i++ {
		m.ObserveRequest(fmt.Sprintf("m%03d", i), "/v1/infer", 404, time.Millisecond)
	}
	s := ui.Summarize("n", time.Now(), mustGather(t, m))
	require.Len(t, s.Models, 256)
	require.Equal(t, 400.0, s.Total.Requests)
}

func mustGather(t *testing.T, m *ops.Metrics) []*dto.MetricFamily {
	t.Helper()
	f, err := m.Registry.Gather()
	require.NoError(t, err)
	return f
}

func TestQuantileMatchesHistogramQuantile(t *testing.T) {
	upper := []float64{10, 20, 40}
	for _, tc := range []struct {
		q, count float64
		cum      []float64
		want     float64
	}{
		{0.5, 0, []float64{0, 0, 0}, 0},
		{0.5, 10, []float64{10, 10, 10}, 5},
		{0.5, 10, []float64{0, 10, 10}, 15},
		{0.95, 20, []float64{10, 10, 20}, 38},
		{0.99, 10, []float64{0, 0, 5}, 40}, // in +Inf: the highest finite bound
		{0.25, 4, []float64{1, 1, 4}, 10},
	} {
		require.InDelta(t, tc.want, ui.Quantile(tc.q, upper, tc.cum, tc.count), 1e-9, "%+v", tc)
	}
	require.Zero(t, ui.Quantile(0.5, upper, []float64{1}, 1), "mismatched lengths")
}
