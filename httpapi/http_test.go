package httpapi

import (
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
