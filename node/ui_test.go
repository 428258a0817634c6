package node

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// The node mounts the UI on its HTTP port with the admin API's token rules:
// the page itself always loads (it holds the token field), its data is open
// in dev and refused when the node has no admin token.
func TestWebUIMountedWithAdminTokenRules(t *testing.T) {
	for _, tc := range []struct {
		name   string
		dev    bool
		status int
	}{
		{"dev without a token: open", true, http.StatusOK},
		{"no token outside dev: disabled", false, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := startTestNode(t, func(c *Config) { c.Dev = tc.dev })
			page := send(t, http.MethodGet, baseURL(n)+"/ui/", nil, nil)
			require.Equal(t, http.StatusOK, page.status)
			require.Equal(t, "text/html; charset=utf-8", page.header.Get("Content-Type"))
			require.Contains(t, string(page.body), `id="members"`)

			data := send(t, http.MethodGet, baseURL(n)+"/ui/api/metrics", nil, nil)
			require.Equal(t, tc.status, data.status, string(data.body))
			admin := send(t, http.MethodGet, baseURL(n)+"/admin/v1/cluster", nil, nil)
			require.Equal(t, tc.status, admin.status, "the UI and the admin API must agree: %s", admin.body)
		})
	}
}
