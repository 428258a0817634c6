package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// The preformatted header values are shared by every response: adding to
// one response's header must not change what the next one gets.
func TestPreformattedHeaderValuesStayPut(t *testing.T) {
	first := httptest.NewRecorder()
	setCacheHeader(first, CacheHit)
	setLocalRoute(first.Header(), "least-expected")
	writeJSON(first, httptest.NewRequest(http.MethodGet, "/", nil), http.StatusOK, map[string]int{"a": 1})
	for _, k := range []string{"X-Shoal-Cache", "X-Shoal-Route", "Content-Type"} {
		first.Header().Add(k, "other")
	}
	next := httptest.NewRecorder()
	setCacheHeader(next, CacheHit)
	setLocalRoute(next.Header(), "least-expected")
	writeJSON(next, httptest.NewRequest(http.MethodGet, "/", nil), http.StatusOK, map[string]int{"a": 1})
	require.Equal(t, []string{"hit"}, next.Header()["X-Shoal-Cache"])
	require.Equal(t, []string{"local,least-expected"}, next.Header()["X-Shoal-Route"])
	require.Equal(t, []string{"application/json"}, next.Header()["Content-Type"])
	require.Equal(t, []string{"hit", "other"}, first.Header()["X-Shoal-Cache"])
}

// writeJSON's pooled buffers: concurrent answers each get their own bytes,
// as json.Marshal and a newline.
func TestWriteJSONPooledConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				v := map[string]any{"g": g, "i": i, "pad": fmt.Sprintf("%0*d", i%50, i)}
				want, err := json.Marshal(v)
				if err != nil {
					t.Error(err)
					return
				}
				rec := httptest.NewRecorder()
				writeJSON(rec, httptest.NewRequest(http.MethodPost, "/", nil), http.StatusOK, v)
				if got := rec.Body.String(); got != string(want)+"\n" {
					t.Errorf("body %q, want %q", got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A value encoding/json refuses still answers 500 with the fixed body.
func TestWriteJSONEncodeError(t *testing.T) {
	rec := httptest.NewRecorder()
	writeJSON(rec, httptest.NewRequest(http.MethodGet, "/", nil), http.StatusOK, map[string]any{"f": func() {}})
	require.Equal(t, http.StatusInternalServerError, rec.Code)
	require.Equal(t, `{"error":{"message":"response encoding failed","type":"server_error","param":null,"code":"internal_error"}}`+"\n", rec.Body.String())
}
