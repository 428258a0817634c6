package ops

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestHealthAggregatesComponents(t *testing.T) {
	for _, tc := range []struct {
		name       string
		components map[string]Component
		want       string
		code       int
	}{
		{"all ok", map[string]Component{"a": {Status: StatusOK, Critical: true}, "b": {Status: StatusOK}}, StatusOK, http.StatusOK},
		{"optional part down degrades", map[string]Component{"a": {Status: StatusOK, Critical: true}, "cache": {Status: StatusUnavailable}}, StatusDegraded, http.StatusOK},
		{"critical part degraded degrades", map[string]Component{"scheduler": {Status: StatusDegraded, Critical: true}}, StatusDegraded, http.StatusOK},
		{"critical part down", map[string]Component{"scheduler": {Status: StatusUnavailable, Critical: true}, "b": {Status: StatusDegraded}}, StatusUnavailable, http.StatusServiceUnavailable},
		{"nothing registered", nil, StatusOK, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHealth("n1")
			for name, c := range tc.components {
				h.Register(name, func() Component { return c })
			}
			rep := h.Report()
			require.Equal(t, tc.want, rep.Status)
			require.Equal(t, "n1", rep.Node)
			require.Len(t, rep.Components, len(tc.components))

			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/health", nil))
			require.Equal(t, tc.code, rec.Code)
			require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
			require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
			if tc.code == http.StatusServiceUnavailable {
				require.NotEmpty(t, rec.Header().Get("Retry-After"))
			}
			var body Report
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body))
			require.Equal(t, tc.want, body.Status)
		})
	}
}

func TestHealthRegisterReplacesCheck(t *testing.T) {
	h := NewHealth("n1")
	h.Register("x", func() Component { return Component{Status: StatusUnavailable, Critical: true} })
	h.Register("x", func() Component { return Component{Status: StatusOK, Detail: "fine", Data: map[string]any{"k": 1}} })
	rep := h.Report()
	require.Equal(t, StatusOK, rep.Status)
	require.Equal(t, "fine", rep.Components["x"].Detail)
}

func TestHealthHeadHasNoBody(t *testing.T) {
	h := NewHealth("n1")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/health", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Zero(t, rec.Body.Len())
}

func TestHealthConcurrentRegisterAndReport(t *testing.T) {
	h := NewHealth("n1")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			h.Register("c", func() Component { return Component{Status: StatusOK} })
		}
	}()
	for i := 0; i < 200; i++ {
		_ = h.Report()
	}
	<-done
}
