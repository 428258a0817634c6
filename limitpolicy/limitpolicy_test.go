package limitpolicy

import (
	"fmt"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ratelimit"
	"github.com/stretchr/testify/require"
)

func TestRulesFor(t *testing.T) {
	gold := consensus.HashKey("sk-gold-0123456789")
	plain := consensus.HashKey("sk-plain-0123456789")
	policy := &consensus.LimitPolicy{
		DefaultRPM: 60,
		Endpoints:  map[string]consensus.EndpointLimit{"/v1/infer": {RPM: 500, RPH: 50000}, "/v1/models": {RPM: 0}},
		Keys: map[string]consensus.KeyLimit{
			gold:  {RPM: 1000, TPM: 90000, Tenant: "acme"},
			plain: {Tenant: "ghost"},
		},
		Tenants: map[string]consensus.TenantLimit{"acme": {RPM: 5000, TPM: 400000}},
	}
	tests := []struct {
		name string
		p    *consensus.LimitPolicy
		req  Request
		want []ratelimit.Rule
	}{
		{"NoPolicy", nil, Request{Path: "/v1/infer", IP: "10.0.0.1"}, nil},
		{"AnonymousClientAndEndpoint", policy, Request{Path: "/v1/infer", IP: "10.0.0.1"}, []ratelimit.Rule{
			{Policy: ratelimit.PolicyClient, Key: "ip:10.0.0.1", Limit: 60, Window: time.Minute},
			{Policy: ratelimit.PolicyEndpoint, Key: "/v1/infer", Limit: 500, Window: time.Minute},
			{Policy: ratelimit.PolicyEndpoint, Key: "/v1/infer", Limit: 50000, Window: time.Hour},
		}},
		{"UnknownKeySpendsItsAddressBudget", policy, Request{Path: "/v1/models", KeyHash: "abc", IP: "10.0.0.1"}, []ratelimit.Rule{
			{Policy: ratelimit.PolicyClient, Key: "ip:10.0.0.1", Limit: 60, Window: time.Minute},
		}},
		{"KnownKeyWithoutRPMKeepsTheDefault", policy, Request{Path: "/v1/models", KeyHash: plain, LLM: true}, []ratelimit.Rule{
			{Policy: ratelimit.PolicyClient, Key: "key:" + plain, Limit: 60, Window: time.Minute},
		}},
		{"KeyRPMReplacesDefaultAndAddsTenant", policy, Request{Path: "/v1/models", KeyHash: gold, IP: "10.0.0.1"}, []ratelimit.Rule{
			{Policy: ratelimit.PolicyKey, Key: gold, Limit: 1000, Window: time.Minute},
			{Policy: ratelimit.PolicyTenant, Key: "acme", Limit: 5000, Window: time.Minute},
		}},
		{"LLMEndpointAddsTokenRules", policy, Request{Path: "/v1/chat/completions", KeyHash: gold, LLM: true, Tokens: 120}, []ratelimit.Rule{
			{Policy: ratelimit.PolicyKey, Key: gold, Limit: 1000, Window: time.Minute},
			{Policy: ratelimit.PolicyTenant, Key: "acme", Limit: 5000, Window: time.Minute},
			{Policy: ratelimit.PolicyKeyTPM, Key: gold, Limit: 90000, Window: time.Minute, Cost: 120},
			{Policy: ratelimit.PolicyTenantTPM, Key: "acme", Limit: 400000, Window: time.Minute, Cost: 120},
		}},
		{"TokenEstimateAtLeastOne", policy, Request{Path: "/v1/completions", KeyHash: gold, LLM: true}, []ratelimit.Rule{
			{Policy: ratelimit.PolicyKey, Key: gold, Limit: 1000, Window: time.Minute},
			{Policy: ratelimit.PolicyTenant, Key: "acme", Limit: 5000, Window: time.Minute},
			{Policy: ratelimit.PolicyKeyTPM, Key: gold, Limit: 90000, Window: time.Minute, Cost: 1},
			{Policy: ratelimit.PolicyTenantTPM, Key: "acme", Limit: 400000, Window: time.Minute, Cost: 1},
		}},
		{"EmptyPolicyLimitsNothing", &consensus.LimitPolicy{}, Request{Path: "/v1/infer", IP: "10.0.0.1"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, RulesFor(tc.p, tc.req))
		})
	}
}

// A client that sends a made-up key per request must not get a budget per key.
func TestRulesForMadeUpKeysShareTheAddressBudget(t *testing.T) {
	p := &consensus.LimitPolicy{DefaultRPM: 5}
	seen := map[string]bool{}
	for i := range 12 {
		rules := RulesFor(p, Request{Path: "/v1/infer", KeyHash: consensus.HashKey(fmt.Sprintf("sk-made-up-%d", i)), IP: "10.0.0.7"})
		require.Len(t, rules, 1)
		seen[rules[0].Key] = true
	}
	require.Equal(t, map[string]bool{"ip:10.0.0.7": true}, seen)
}
