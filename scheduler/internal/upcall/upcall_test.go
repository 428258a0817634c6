package upcall

import (
	"testing"
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
