// Package limitpolicy maps the replicated limit policy (consensus) to the
// rules the rate limiter checks (ratelimit): the glue that keeps the limiter
// free of the cluster's state types.
package limitpolicy

import (
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ratelimit"
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
func RulesFor(p *consensus.LimitPolicy, r Request) []ratelimit.Rule {
	if p == nil {
		return nil
	}
	var rules []ratelimit.Rule
	key, known := consensus.KeyLimit{}, false
	if r.KeyHash != "" {
		key, known = p.Keys[r.KeyHash]
	}
	if p.DefaultRPM > 0 && !(known && key.RPM > 0) {
		client := "ip:" + r.IP
		if known {
			client = "key:" + r.KeyHash
		}
		rules = append(rules, ratelimit.Rule{Policy: ratelimit.PolicyClient, Key: client, Limit: p.DefaultRPM, Window: time.Minute})
	}
	if e, ok := p.Endpoints[r.Path]; ok {
		if e.RPM > 0 {
			rules = append(rules, ratelimit.Rule{Policy: ratelimit.PolicyEndpoint, Key: r.Path, Limit: e.RPM, Window: time.Minute})
		}
		if e.RPH > 0 {
			rules = append(rules, ratelimit.Rule{Policy: ratelimit.PolicyEndpoint, Key: r.Path, Limit: e.RPH, Window: time.Hour})
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
		rules = append(rules, ratelimit.Rule{Policy: ratelimit.PolicyKey, Key: r.KeyHash, Limit: key.RPM, Window: time.Minute})
	}
	if hasTenant && tenant.RPM > 0 {
		rules = append(rules, ratelimit.Rule{Policy: ratelimit.PolicyTenant, Key: key.Tenant, Limit: tenant.RPM, Window: time.Minute})
	}
	if !r.LLM {
		return rules
	}
	cost := max(r.Tokens, 1)
	if key.TPM > 0 {
		rules = append(rules, ratelimit.Rule{Policy: ratelimit.PolicyKeyTPM, Key: r.KeyHash, Limit: key.TPM, Window: time.Minute, Cost: cost})
	}
	if hasTenant && tenant.TPM > 0 {
		rules = append(rules, ratelimit.Rule{Policy: ratelimit.PolicyTenantTPM, Key: key.Tenant, Limit: tenant.TPM, Window: time.Minute, Cost: cost})
	}
	return rules
}
