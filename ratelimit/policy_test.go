package ratelimit

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/consensus"
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
		want []Rule
	}{
		{"NoPolicy", nil, Request{Path: "/v1/infer", IP: "10.0.0.1"}, nil},
		{"AnonymousClientAndEndpoint", policy, Request{Path: "/v1/infer", IP: "10.0.0.1"}, []Rule{
			{Policy: PolicyClient, Key: "ip:10.0.0.1", Limit: 60, Window: time.Minute},
			{Policy: PolicyEndpoint, Key: "/v1/infer", Limit: 500, Window: time.Minute},
			{Policy: PolicyEndpoint, Key: "/v1/infer", Limit: 50000, Window: time.Hour},
		}},
		{"UnknownKeySpendsItsAddressBudget", policy, Request{Path: "/v1/models", KeyHash: "abc", IP: "10.0.0.1"}, []Rule{
			{Policy: PolicyClient, Key: "ip:10.0.0.1", Limit: 60, Window: time.Minute},
		}},
		{"KnownKeyWithoutRPMKeepsTheDefault", policy, Request{Path: "/v1/models", KeyHash: plain, LLM: true}, []Rule{
			{Policy: PolicyClient, Key: "key:" + plain, Limit: 60, Window: time.Minute},
		}},
		{"KeyRPMReplacesDefaultAndAddsTenant", policy, Request{Path: "/v1/models", KeyHash: gold, IP: "10.0.0.1"}, []Rule{
			{Policy: PolicyKey, Key: gold, Limit: 1000, Window: time.Minute},
			{Policy: PolicyTenant, Key: "acme", Limit: 5000, Window: time.Minute},
		}},
		{"LLMEndpointAddsTokenRules", policy, Request{Path: "/v1/chat/completions", KeyHash: gold, LLM: true, Tokens: 120}, []Rule{
			{Policy: PolicyKey, Key: gold, Limit: 1000, Window: time.Minute},
			{Policy: PolicyTenant, Key: "acme", Limit: 5000, Window: time.Minute},
			{Policy: PolicyKeyTPM, Key: gold, Limit: 90000, Window: time.Minute, Cost: 120},
			{Policy: PolicyTenantTPM, Key: "acme", Limit: 400000, Window: time.Minute, Cost: 120},
		}},
		{"TokenEstimateAtLeastOne", policy, Request{Path: "/v1/completions", KeyHash: gold, LLM: true}, []Rule{
			{Policy: PolicyKey, Key: gold, Limit: 1000, Window: time.Minute},
			{Policy: PolicyTenant, Key: "acme", Limit: 5000, Window: time.Minute},
			{Policy: PolicyKeyTPM, Key: gold, Limit: 90000, Window: time.Minute, Cost: 1},
			{Policy: PolicyTenantTPM, Key: "acme", Limit: 400000, Window: time.Minute, Cost: 1},
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

func TestTokenBased(t *testing.T) {
	require.True(t, Rule{Policy: PolicyKeyTPM}.TokenBased())
	require.True(t, Rule{Policy: PolicyTenantTPM}.TokenBased())
	require.False(t, Rule{Policy: PolicyKey}.TokenBased())
}
