package node

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/httpapi"
	"github.com/shoal-dev/shoal/limitpolicy"
	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/ratelimit"
)

// newLimiter builds the cluster-wide rate limiter over the shared cache's
// counters.
func (n *Node) newLimiter() error {
	rc := ratelimit.Config{Counter: n.cache, Node: n.cfg.NodeName, Nodes: n.clusterSize, Logger: n.logger}
	if n.cfg.Tuning.Limiter != nil {
		n.cfg.Tuning.Limiter(&rc)
	}
	l, err := ratelimit.New(rc)
	if err != nil {
		return fmt.Errorf("rate limiter: %w", err)
	}
	n.limiter = l
	return nil
}

// clusterSize is the size the limiter's fallback share divides limits by:
// the configured servers, so a partitioned minority never grants itself the
// whole limit.
func (n *Node) clusterSize() int {
	size := n.cfg.Raft.BootstrapExpect
	if servers, err := n.store.Configuration(); err == nil {
		size = max(size, len(servers))
	}
	return max(size, 1)
}

func (n *Node) limiterHealth() ops.Component {
	st := n.limiter.Stats()
	c := ops.Component{Status: ops.StatusOK, Data: map[string]any{"allowed": st.Allowed, "denied": st.Denied}}
	c.Data["scope"] = st.Scope
	if st.PerNodeCluster {
		c.Detail = st.ScopeDetail + ": each node admits a whole limit"
	}
	if st.Degraded {
		c.Status, c.Detail = ops.StatusDegraded, "shared counters unreachable: each node enforces its share of every limit"
	}
	return c
}

// warnFileLimits says once, at start, when this node's file sets
// rate_limit.rpm or auth.required differently from the policy in Raft. The
// file only seeds a new cluster's policy: applying each node's file on
// every start would let nodes with different files overwrite each other,
// so the replicated policy wins and the operator is told how to change it.
// Only the cluster loop calls it.
func (n *Node) warnFileLimits() {
	p := n.store.State().Limits
	if n.fileLimitsChecked || p == nil {
		return
	}
	n.fileLimitsChecked = true
	const how = "the cluster's policy in Raft applies; the file only seeds a new cluster: change it with `shoal admin limits set`"
	if p.DefaultRPM != n.cfg.RateLimit.RPM {
		n.logger.Warn("rate_limit.rpm in the configuration differs from the cluster's and is ignored",
			"file_rpm", n.cfg.RateLimit.RPM, "cluster_rpm", p.DefaultRPM, "why", how)
	}
	if p.AuthRequired != n.cfg.Auth.Required {
		n.logger.Warn("auth.required in the configuration differs from the cluster's and is ignored",
			"file_auth_required", n.cfg.Auth.Required, "cluster_auth_required", p.AuthRequired, "why", how)
	}
}

// limitPolicy is the replicated policy, or the configured defaults until
// the leader has seeded it.
func (n *Node) limitPolicy() *consensus.LimitPolicy {
	if p := n.store.State().Limits; p != nil {
		return p
	}
	if n.filePolicy != nil {
		return n.filePolicy
	}
	return &consensus.LimitPolicy{DefaultRPM: n.cfg.RateLimit.RPM, AuthRequired: n.cfg.Auth.Required}
}

// bearerKey returns the API key of Authorization: Bearer <key>.
func bearerKey(r *http.Request) string {
	k, ok := strings.CutPrefix(httpapi.HeaderValue(r.Header, "Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(k)
}

// admitter applies the limits for the HTTP API.
type admitter struct{ n *Node }

// Admit applies authentication and the rate limits to a request entering
// the cluster here. It sets the X-RateLimit headers and returns the error
// to answer with, if any. Token limits count max_tokens (or a default)
// plus a prompt estimate up front, as OpenAI does, so a request never
// overdraws them; settleTokens corrects the charge once the answer is done.
func (a admitter) Admit(ctx context.Context, w http.ResponseWriter, r *http.Request, req *httpapi.Request) error {
	p := a.n.limitPolicy()
	key := bearerKey(r)
	hash := ""
	if key != "" {
		hash = consensus.HashKey(key)
	}
	req.KeyHash, req.KeyHashed = hash, true
	if p.AuthRequired {
		if _, ok := p.Keys[hash]; !ok || hash == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="shoal"`)
			return &httpapi.Error{Status: http.StatusUnauthorized, Type: "invalid_request_error", Code: "invalid_api_key",
				Message: "a valid API key is required: Authorization: Bearer <key>"}
		}
	}
	ip := ratelimit.ClientIP(r.RemoteAddr)
	est := estimateTokens(req)
	rules := limitpolicy.RulesFor(p, limitpolicy.Request{
		Path: httpapi.LimitPath(r), KeyHash: hash, IP: ip,
		// Every inference endpoint generates tokens, so token limits
		// apply to all of them.
		LLM:    true,
		Tokens: est,
	})
	if len(rules) == 0 {
		return nil
	}
	d := a.n.limiter.Allow(ctx, rules)
	d.SetHeaders(w.Header())
	if d.Allowed {
		for _, rule := range rules {
			if rule.TokenBased() {
				req.Charged.Rules = append(req.Charged.Rules, rule)
			}
		}
		req.Charged.Tokens, req.Charged.At = est, time.Now()
		return nil
	}
	a.n.metrics.RateLimited.WithLabelValues(d.Policy).Inc()
	return &httpapi.Error{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "rate_limit_exceeded",
		Message:    fmt.Sprintf("rate limit exceeded (%s: %d per window); retry after %s", d.Policy, d.Limit, d.RetryAfter.Round(time.Second)),
		RetryAfter: max(d.RetryAfter, time.Second)}
}

// SettleTokens corrects the up-front charge of req's token-per-minute rules
// (recorded by admit) to the tokens its answer used. It runs on the node
// that admitted the request, which alone holds the charge, once the outcome
// is final: used is the answer's usage (a forwarded answer's comes back in
// router.HeaderUsage), or 0 when no answer was delivered. An answer whose
// usage is unknown (a stream cut short after its first byte), or that ends
// in a later window than it was admitted in, keeps the estimate.
func (a admitter) SettleTokens(ctx context.Context, req *httpapi.Request, used int) {
	c := req.Charged
	if used == c.Tokens || len(c.Rules) == 0 {
		return
	}
	now := time.Now()
	for _, rule := range c.Rules {
		w := int64(rule.Window)
		if used < c.Tokens && c.At.UnixNano()/w != now.UnixNano()/w {
			// The charge is in a window that has ended; a refund now would
			// make room in the current one, which was never charged.
			continue
		}
		a.n.limiter.Charge(ctx, rule, used-c.Tokens)
	}
}

// estimateTokens is a request's token cost for token-per-minute limits:
// about four bytes a token of prompt, plus the completion it may produce.
func estimateTokens(req *httpapi.Request) int {
	n := 0
	for _, p := range req.Prompts {
		n += len(p)
	}
	for _, m := range req.Messages {
		n += len(m.Content) + len(m.Role)
	}
	completion := req.Params.MaxTokens
	if completion == 0 {
		completion = 128
	}
	return n/4 + completion*max(1, len(req.Prompts))
}
