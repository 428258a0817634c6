package upcall

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestCheckBaseURL(t *testing.T) {
	for raw, want := range map[string]string{
		"http://127.0.0.1:8000":    "",
		"https://models.example/":  "",
		"":                         "url must be set",
		"ftp://host":               "http(s) URL with a host",
		"http://":                  "http(s) URL with a host",
		"http://host/v1?x=1":       "without query or fragment",
		"http://host/v1#frag":      "without query or fragment",
		"http://host:bad-port/v1x": "url \"http://host:bad-port/v1x\"",
	} {
		err := CheckBaseURL(raw)
		if want == "" {
			require.NoError(t, err, raw)
			continue
		}
		require.ErrorContains(t, err, want, raw)
	}
}

func TestClipKeepsRunesWhole(t *testing.T) {
	require.Equal(t, "héllo", Clip("héllo", 10))
	require.Equal(t, "h", Clip("hé", 2), "a cut inside é backs off to its start")
	require.Equal(t, "\uFFFDx", Clip("\xffx", 10), "invalid bytes become U+FFFD")
	out := Clip("\x80\x80\x80\x80\x80\x80", 4)
	require.True(t, utf8.ValidString(out))
	require.LessOrEqual(t, len(out), 4*len("\uFFFD"))
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":                              0,
		"7":                             7 * time.Second,
		" 12 ":                          12 * time.Second,
		"0":                             0,
		"-3":                            0,
		"1.5":                           0,
		"soon":                          0,
		"99999999999999999999":          MaxRetryAfter,
		"86400":                         MaxRetryAfter,
		"Fri, 27 Nov 2026 12:00:30 GMT": 30 * time.Second,
		"Fri, 27 Nov 2026 11:00:00 GMT": 0,
		"Sat, 28 Nov 2026 12:00:00 GMT": MaxRetryAfter,
	} {
		require.Equal(t, want, RetryAfter(in, now), "%q", in)
	}
}

// FuzzRetryAfter: whatever an upstream sends, the wait handed to our
// clients is between zero and MaxRetryAfter.
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"7", "0", "-1", "1.5", "", "Fri, 27 Nov 2026 12:00:30 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
		"Sun Nov  6 08:49:37 1994", "99999999999999999999", "+5", " 3 ", "\x00", "Mon, 01 Jan 10000 00:00:00 GMT"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d := RetryAfter(v, now)
		if d < 0 || d > MaxRetryAfter {
			t.Fatalf("%q: %v out of [0, %v]", v, d, MaxRetryAfter)
		}
	})
}

func TestPosterSendsWhatNewPostBuilds(t *testing.T) {
	var got []http.Header
	var bodies []string
	mux := http.NewServeMux()
	mux.HandleFunc("/old", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/v1/chat", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/v1/chat", func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		got, bodies = append(got, r.Header.Clone()), append(bodies, string(raw))
		w.WriteHeader(http.StatusTeapot)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	rt := NewTransport(time.Minute, 4)
	defer rt.CloseIdleConnections()
	p := NewPoster(&http.Client{Transport: rt}, rt, "k")
	userURL, err := url.Parse(srv.URL)
	require.NoError(t, err)
	userURL.User = url.UserPassword("u", "pw")
	for _, tc := range []struct {
		name, url, wantAuth string
	}{
		{"direct", srv.URL + "/v1/chat", "Bearer k"},
		{"redirect followed by the client", srv.URL + "/old", "Bearer k"},
		{"userinfo through the client", userURL.String() + "/v1/chat", "Bearer k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, bodies = nil, nil
			e, err := NewEndpoint(tc.url)
			require.NoError(t, err)
			resp, err := p.Post(context.Background(), e, map[string]int{"a": 1}, true, "rid")
			require.NoError(t, err)
			CloseBody(resp.Body)
			require.Equal(t, http.StatusTeapot, resp.StatusCode)
			require.Len(t, got, 1)
			require.Equal(t, `{"a":1}`, bodies[0])
			require.Equal(t, "application/json", got[0].Get("Content-Type"))
			require.Equal(t, "text/event-stream", got[0].Get("Accept"))
			require.Equal(t, "rid", got[0].Get("X-Request-ID"))
			require.Equal(t, tc.wantAuth, got[0].Get("Authorization"))
		})
	}
	// Without an API key, userinfo becomes Basic auth, as http.Client does it.
	e, err := NewEndpoint(userURL.String() + "/v1/chat")
	require.NoError(t, err)
	got = nil
	resp, err := NewPoster(&http.Client{Transport: rt}, rt, "").Post(context.Background(), e, 1, false, "")
	require.NoError(t, err)
	CloseBody(resp.Body)
	require.Len(t, got, 1)
	require.Equal(t, "application/json", got[0].Get("Accept"))
	require.Empty(t, got[0].Get("X-Request-ID"))
	user, pw, ok := (&http.Request{Header: got[0]}).BasicAuth()
	require.True(t, ok)
	require.Equal(t, "u:pw", user+":"+pw)
}
