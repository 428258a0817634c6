package ratelimit

import (
	"net"
	"net/netip"
	"testing"
)

// clientIPString is ClientIP before its IPv4 shortcut: the result must
// not change.
func clientIPString(remoteAddr string) string {
	host := remoteAddr
	if h, _, err := net.SplitHostPort(remoteAddr); err == nil {
		host = h
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		if len(host) > 64 {
			host = host[:64]
		}
		return host
	}
	addr = addr.Unmap().WithZone("")
	if addr.Is6() {
		return netip.PrefixFrom(addr, 64).Masked().String()
	}
	return addr.String()
}

func FuzzClientIP(f *testing.F) {
	for _, s := range []string{"1.2.3.4:5", "1.2.3.4", "01.2.3.4:5", "[::ffff:1.2.3.4]:5", "[fe80::1%eth0]:5", "[2001:db8::1]:80", "host:80", "255.255.255.255:0", "1.2.3.4%x:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, remote string) {
		if got, want := ClientIP(remote), clientIPString(remote); got != want {
			t.Fatalf("ClientIP(%q) = %q, want %q", remote, got, want)
		}
	})
}
