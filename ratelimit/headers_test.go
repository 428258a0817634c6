package ratelimit

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSetHeaders(t *testing.T) {
	reset := time.Date(2030, 1, 1, 10, 1, 0, 0, time.UTC)
	tests := []struct {
		name string
		d    Decision
		want http.Header
	}{
		{"NoRule", Decision{Allowed: true}, http.Header{}},
		{"Allowed", Decision{Allowed: true, Policy: PolicyKey, Limit: 100, Remaining: 42, Reset: reset}, http.Header{
			"X-Ratelimit-Limit":     {"100"},
			"X-Ratelimit-Remaining": {"42"},
			"X-Ratelimit-Reset":     {"1893492060"},
		}},
		{"DeniedRoundsRetryAfterUp", Decision{Policy: PolicyKey, Limit: 100, Reset: reset.Add(-time.Millisecond), RetryAfter: 46*time.Second + 500*time.Millisecond}, http.Header{
			"X-Ratelimit-Limit":     {"100"},
			"X-Ratelimit-Remaining": {"0"},
			"X-Ratelimit-Reset":     {"1893492060"},
			"Retry-After":           {"47"},
		}},
		{"DeniedAtWindowEndRetriesAfterOneSecond", Decision{Policy: PolicyKey, Limit: 100, Reset: reset}, http.Header{
			"X-Ratelimit-Limit":     {"100"},
			"X-Ratelimit-Remaining": {"0"},
			"X-Ratelimit-Reset":     {"1893492060"},
			"Retry-After":           {"1"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			tc.d.SetHeaders(h)
			require.Equal(t, tc.want, h)
		})
	}
}

func TestTokenBased(t *testing.T) {
	require.True(t, Rule{Policy: PolicyKeyTPM}.TokenBased())
	require.True(t, Rule{Policy: PolicyTenantTPM}.TokenBased())
	require.False(t, Rule{Policy: PolicyKey}.TokenBased())
}
