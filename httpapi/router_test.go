package httpapi

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The Router answers every request as the ServeMux with the same routes
// would: its map lookup only takes requests the mux would give the same
// handler, and leaves escaped, unclean and prefix paths to the mux.
func TestRouterAnswersAsTheMuxWould(t *testing.T) {
	mux := http.NewServeMux()
	rt := NewRouter()
	named := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, name+" "+r.Method+" "+r.URL.Path)
		}
	}
	for _, reg := range []interface {
		HandleFunc(string, func(http.ResponseWriter, *http.Request))
	}{mux, rt} {
		reg.HandleFunc("/v1/chat/completions", named("chat"))
		reg.HandleFunc("/v2", named("v2"))
		reg.HandleFunc("/v2/", named("v2 tree"))
		reg.HandleFunc("GET /health", named("health"))
		reg.HandleFunc("/admin/{rest...}", named("admin"))
		reg.HandleFunc("/", NotFound)
	}
	require.Len(t, rt.exact, 2, "only plain exact paths take the map lookup")
	for _, target := range []string{
		"/v1/chat/completions", "/v1/chat/completions?x=1", "/v1/chat/completions/",
		"/v1//chat/completions", "/v1/./chat/completions", "/v1/chat/../chat/completions",
		"/v1/chat%2Fcompletions", "/v1/chat/%63ompletions", "/V1/chat/completions",
		"/v2", "/v2/", "/v2/models/x", "/v2%2F", "/health", "/admin/x", "/nothing",
	} {
		for _, method := range []string{http.MethodPost, http.MethodGet, http.MethodConnect} {
			want := httptest.NewRecorder()
			mux.ServeHTTP(want, httptest.NewRequest(method, target, strings.NewReader("{}")))
			got := httptest.NewRecorder()
			rt.ServeHTTP(got, httptest.NewRequest(method, target, strings.NewReader("{}")))
			require.Equal(t, want.Code, got.Code, "%s %s", method, target)
			require.Equal(t, want.Body.String(), got.Body.String(), "%s %s", method, target)
			require.Equal(t, want.Header().Get("Location"), got.Header().Get("Location"), "%s %s", method, target)
		}
	}
}
