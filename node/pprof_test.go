package node

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// /debug/pprof follows the admin API's rules: 403 with no token
// configured, 401 without the right bearer token, open in --dev without a
// token.
func TestPprofGuard(t *testing.T) {
	get := func(h http.Handler, path, auth string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	withToken := (&Node{cfg: Config{Admin: AdminConfig{Token: "s3cret"}}}).pprofHandler()
	require.Equal(t, http.StatusUnauthorized, get(withToken, "/debug/pprof/", "").Code)
	rec := get(withToken, "/debug/pprof/heap", "Bearer wrong")
	require.Equal(t, http.StatusUnauthorized, rec.Code)
	require.Contains(t, compact(rec.Body.String()), `"code":"unauthorized"`)
	require.NotEmpty(t, rec.Header().Get("WWW-Authenticate"))
	rec = get(withToken, "/debug/pprof/", "Bearer s3cret")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, rec.Body.String(), "goroutine")

	noToken := (&Node{cfg: Config{}}).pprofHandler()
	rec = get(noToken, "/debug/pprof/", "Bearer anything")
	require.Equal(t, http.StatusForbidden, rec.Code)
	require.Contains(t, compact(rec.Body.String()), `"code":"admin_disabled"`)

	dev := (&Node{cfg: Config{Dev: true}}).pprofHandler()
	require.Equal(t, http.StatusOK, get(dev, "/debug/pprof/cmdline", "").Code)
	// A token set in --dev closes it again, as for the admin API.
	devToken := (&Node{cfg: Config{Dev: true, Admin: AdminConfig{Token: "s3cret"}}}).pprofHandler()
	require.Equal(t, http.StatusUnauthorized, get(devToken, "/debug/pprof/", "").Code)
}

// The profiles are served on the node's HTTP port.
func TestPprofOnHTTPPort(t *testing.T) {
	n := startTestNode(t, func(c *Config) { c.Admin.Token = testToken })
	do := func(auth string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, baseURL(n)+"/debug/pprof/goroutine?debug=1", nil)
		require.NoError(t, err)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := rawClient().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	status, _ := do("")
	require.Equal(t, http.StatusUnauthorized, status)
	status, body := do(testToken)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, "goroutine profile")
}

// compact drops the white space of an (indented) JSON answer.
func compact(s string) string { return strings.Join(strings.Fields(s), "") }
