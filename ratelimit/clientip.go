package ratelimit

import (
	"net"
	"net/netip"
)

// ClientIP is the client identity of a connection's remote address (http.Request.RemoteAddr,
// "host:port"): the IPv4 address, or the /64 prefix of an IPv6 address ("2001:db8:1:2::/64"),
// since one IPv6 subscriber is commonly handed a whole /64 and could otherwise rotate through
// 2^64 identities. Headers such as X-Forwarded-For are deliberately not read: any client can
// write them, and each made-up value would be a fresh budget. An address that does not parse
// is used as it is, truncated to 64 bytes.
func ClientIP(remoteAddr string) string {
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
	if addr.Is4() {
		// IPv4 parses only in its canonical dotted form, so host is
		// what addr.String would allocate.
		return host
	}
	addr = addr.Unmap().WithZone("")
	if addr.Is6() {
		return netip.PrefixFrom(addr, 64).Masked().String()
	}
	return addr.String()
}
