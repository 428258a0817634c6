package httpapi

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAcceptEncodingHonoursQualities(t *testing.T) {
	for _, tc := range []struct {
		header, want string
	}{
		{"", ""},
		{"identity", ""},
		{"gzip", "gzip"},
		{"gzip;q=0.5", "gzip"},
		{"gzip; q=0.001", "gzip"},
		{"gzip;q=1.0", "gzip"},
		{"gzip;q=0", ""},
		{"gzip;q=0.0", ""},
		{"gzip;q=0.000", ""},
		{"GZIP;Q=0.5", "gzip"},
		{"zstd, gzip", "zstd"},
		{"zstd;q=0, gzip", "gzip"},
		{"zstd;q=0.2, gzip;q=0.8", "gzip"},
		{"gzip;q=0.8, zstd;q=0.8", "zstd"},
		{"br, gzip;q=0.1", "gzip"},
		{"*", "zstd"},
		{"*;q=0.5, zstd;q=0", "gzip"},
		{"gzip;q=bogus", ""},
		{"gzip;q=2", ""},
		{"gzip;level=1;q=0.3", "gzip"},
	} {
		require.Equal(t, tc.want, chooseEncoding(tc.header), "Accept-Encoding: %q", tc.header)
	}
}

func FuzzChooseEncoding(f *testing.F) {
	for _, s := range []string{"", "gzip", "gzip;q=0.5", "zstd;q=0, gzip", "*;q=0.5, zstd;q=0", "gzip;q=", ";;,,", "gzip;q=1e400", "GZIP ; Q = 0.3", "*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		got := chooseEncoding(h)
		switch got {
		case "", "zstd", "gzip":
		default:
			t.Fatalf("chooseEncoding(%q) = %q", h, got)
		}
		lower := strings.ToLower(h)
		if got != "" && !strings.Contains(lower, got) && !strings.Contains(lower, "*") {
			t.Fatalf("chooseEncoding(%q) = %q, which the header never names", h, got)
		}
	})
}

// The middleware's context carries the request's info in the same
// allocation; contexts derived from it must still be cancelled with the
// client's, and without a goroutine each (as context.WithValue's are).
func TestInfoContextKeepsCancellation(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	ctx := &infoCtx{Context: parent, info: reqInfo{id: "abc"}}
	require.Equal(t, "abc", requestID(ctx))
	type other struct{}
	outer := context.WithValue(ctx, other{}, 1)
	require.Equal(t, "abc", requestID(outer), "the info is found through a context derived from it")
	require.Equal(t, 1, outer.Value(other{}))

	before := runtime.NumGoroutine()
	children := make([]context.Context, 100)
	for i := range children {
		c, stop := context.WithTimeout(ctx, time.Hour)
		defer stop()
		children[i] = c
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), before+2, "each derived context started a goroutine to watch its parent")
	cancel()
	for _, c := range children {
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("a derived context outlived the client's")
		}
		require.ErrorIs(t, c.Err(), context.Canceled)
	}
}
