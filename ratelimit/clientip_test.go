package ratelimit

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestClientIP(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.1.2.3:5555", "10.1.2.3"},
		{"[::ffff:10.1.2.3]:5555", "10.1.2.3"},
		{"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2::9%eth0]:443", "2001:db8:1:2::/64"},
		{"[::1]:80", "::/64"},
		{"127.0.0.1", "127.0.0.1"},
		{"@", "@"},
		{strings.Repeat("x", 100), strings.Repeat("x", 64)},
	} {
		require.Equal(t, tc.want, ClientIP(tc.in), tc.in)
	}
	// Addresses within one /64 are one client; the next /64 is another.
	require.Equal(t, ClientIP("[2001:db8::1]:1"), ClientIP("[2001:db8::ffff:1]:2"))
	require.NotEqual(t, ClientIP("[2001:db8::1]:1"), ClientIP("[2001:db8:0:1::1]:1"))
}
