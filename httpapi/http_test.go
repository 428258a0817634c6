package httpapi

import (
	"strings"
	"testing"

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
