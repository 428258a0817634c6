package ratelimit

import (
	"net"
	"net/netip"
	"time"

	"github.com/shoal-dev/shoal/consensus"
)

// Request is what RulesFor needs to know about one HTTP request.
type Request struct {
	// Path is the endpoint, e.g. "/v1/infer"; it selects LimitPolicy.Endpoints.
	Path string
	// KeyHash is consensus.HashKey of the bearer token, or "" when the request has none.
	KeyHash string
	// IP is the client's address (ClientIP of the connection's remote address), its identity
	// unless it presents a key the policy lists.
	IP string
	// LLM marks the token-counted endpoints (chat and text completions): TPM rules apply.
	LLM bool
	// Tokens is the request's token estimate known before it runs (prompt tokens, say), the
	// Cost of its TPM rules; values below 1 mean 1. Charge the difference to the true count
	// when the response is done.
	Tokens int
}

// RulesFor returns the rules a request is checked against under policy p (nil: none):
//
//   - "client": p.DefaultRPM per minute per client, unless the request's key is in p.Keys with
//     its own RPM, which replaces the default. The client is "key:<hash>" for a key p.Keys
//     lists, else "ip:<addr>": a key nobody registered is no identity, so a client cannot
//     mint fresh budgets by sending made-up keys; it spends its address's budget.
//   - "endpoint": p.Endpoints[r.Path].RPM per minute and .RPH per hour, keyed by the path.
//   - "key": the key's RPM per minute, keyed by its hash.
//   - "tenant": the key's tenant's RPM per minute, keyed by the tenant name.
//   - "key_tpm", "tenant_tpm" (r.LLM only): the key's and its tenant's TPM per minute, with
//     Cost r.Tokens.
//
// Limits of 0 produce no rule. Whether an unknown key is refused (p.AuthRequired) is the
// caller's decision, made before it asks for rules.
func RulesFor(p *consensus.LimitPolicy, r Request) []Rule {
	if p == nil {
		return nil
	}
	var rules []Rule
	key, known := consensus.KeyLimit{}, false
	if r.KeyHash != "" {
		key, known = p.Keys[r.KeyHash]
	}
	if p.DefaultRPM > 0 && !(known && key.RPM > 0) {
		client := "ip:" + r.IP
		if known {
			client = "key:" + r.KeyHash
		}
		rules = append(rules, Rule{Policy: PolicyClient, Key: client, Limit: p.DefaultRPM, Window: time.Minute})
	}
	if e, ok := p.Endpoints[r.Path]; ok {
		if e.RPM > 0 {
			rules = append(rules, Rule{Policy: PolicyEndpoint, Key: r.Path, Limit: e.RPM, Window: time.Minute})
		}
		if e.RPH > 0 {
			rules = append(rules, Rule{Policy: PolicyEndpoint, Key: r.Path, Limit: e.RPH, Window: time.Hour})
		}
	}
	if !known {
		return rules
	}
	tenant, hasTenant := consensus.TenantLimit{}, false
	if key.Tenant != "" {
		tenant, hasTenant = p.Tenants[key.Tenant]
	}
	if key.RPM > 0 {
		rules = append(rules, Rule{Policy: PolicyKey, Key: r.KeyHash, Limit: key.RPM, Window: time.Minute})
	}
	if hasTenant && tenant.RPM > 0 {
		rules = append(rules, Rule{Policy: PolicyTenant, Key: key.Tenant, Limit: tenant.RPM, Window: time.Minute})
	}
	if !r.LLM {
		return rules
	}
	cost := max(r.Tokens, 1)
	if key.TPM > 0 {
		rules = append(rules, Rule{Policy: PolicyKeyTPM, Key: r.KeyHash, Limit: key.TPM, Window: time.Minute, Cost: cost})
	}
	if hasTenant && tenant.TPM > 0 {
		rules = append(rules, Rule{Policy: PolicyTenantTPM, Key: key.Tenant, Limit: tenant.TPM, Window: time.Minute, Cost: cost})
	}
	return rules
}

// TokenBased reports whether r counts tokens rather than requests, i.e. whether the caller
// should Charge it with the request's true token count when the response is done.
func (r Rule) TokenBased() bool { return r.Policy == PolicyKeyTPM || r.Policy == PolicyTenantTPM }

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
	addr = addr.Unmap().WithZone("")
	if addr.Is6() {
		return netip.PrefixFrom(addr, 64).Masked().String()
	}
	return addr.String()
}
