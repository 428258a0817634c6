package upcall

import (
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
