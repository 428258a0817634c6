package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// purgeBound is how long a purge may take while a member is frozen: the
// Olric purge's own bound (10 s), the wait for every node to confirm the
// new cache generation (3 s), and slack for a loaded box.
const purgeBound = 20 * time.Second

// purgeProbe is the prompt whose stored answer the purge checks look for.
func purgeProbe() []byte {
	b, _ := json.Marshal(map[string]any{
		"model":       "sim-fast",
		"messages":    []map[string]string{{"role": "user", "content": "chaos purge probe"}},
		"max_tokens":  8,
		"temperature": 0,
	})
	return b
}

// askProbe sends the probe to p and returns X-Shoal-Cache ("" on failure).
func askProbe(p *proc) (string, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(p.url("/v1/chat/completions"), "application/json", bytes.NewReader(purgeProbe()))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("probe on %s: status %d", p.name, resp.StatusCode)
	}
	return resp.Header.Get("X-Shoal-Cache"), nil
}

// storeProbe asks p until the probe's answer is stored and p answers it
// from the cache.
func storeProbe(e *env, p *proc) bool {
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := askProbe(p)
		if got == "hit" {
			return true
		}
		if time.Now().After(deadline) {
			e.fail(fmt.Sprintf("the probe's answer was never a hit on %s (last %q, %v)", p.name, got, err))
			return false
		}
		time.Sleep(100 * time.Millisecond) // the store runs off the request: poll, not a sync point
	}
}

// purged is what a purge answered.
type purged struct {
	code       int
	body       string
	retryAfter string
	took       time.Duration
}

// purge purges sim-fast's answers through p.
func purge(e *env, p *proc) (purged, error) {
	ctx, cancel := context.WithTimeout(context.Background(), purgeBound+10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, p.url("/admin/v1/cache?model=sim-fast"), nil)
	if err != nil {
		return purged{}, err
	}
	req.Header.Set("Authorization", "Bearer "+e.c.cfg.adminToken)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		return purged{took: took}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return purged{code: resp.StatusCode, body: strings.TrimSpace(string(b)), retryAfter: resp.Header.Get("Retry-After"), took: took}, nil
}

// purgeWhileFrozen purges the cache through a healthy node while victim is
// stopped. Olric purges on every member, so the purge may fail, but it must
// answer within its bounds, never hang on the frozen node, and say so as a
// 503 with Retry-After that names the node gossip no longer holds alive.
func purgeWhileFrozen(e *env, via, victim *proc) {
	r, err := purge(e, via)
	what := fmt.Sprintf("purge through %s while %s was stopped", via.name, victim.name)
	switch {
	case err != nil:
		e.fail(fmt.Sprintf("%s: %v after %s", what, err, r.took))
	case r.took > purgeBound:
		e.fail(fmt.Sprintf("%s took %s (bound %s)", what, r.took, purgeBound))
	case r.code == http.StatusOK:
		e.note("%s: 200 in %s", what, r.took)
	case r.code == http.StatusServiceUnavailable && r.retryAfter != "" && strings.Contains(r.body, victim.name):
		e.note("%s: 503 in %s (Retry-After %s): %s", what, r.took, r.retryAfter, r.body)
	default:
		e.fail(fmt.Sprintf("%s: status %d in %s, Retry-After %q; want 200, or 503 with Retry-After naming %s: %s",
			what, r.code, r.took, r.retryAfter, victim.name, r.body))
	}
}

// purgeAfterThaw checks that once the cluster is healthy again a purge
// succeeds, and that no node answers the probe from before it: the first
// ask after the purge, on the node that was frozen, is a miss.
func purgeAfterThaw(e *env, via, victim *proc) {
	if !storeProbe(e, victim) {
		return
	}
	r, err := purge(e, via)
	if err != nil || r.code != http.StatusOK {
		e.fail(fmt.Sprintf("purge through %s after %s resumed: status %d, %v: %s", via.name, victim.name, r.code, err, r.body))
		return
	}
	e.note("purge through %s after %s resumed: 200 in %s", via.name, victim.name, r.took)
	got, err := askProbe(victim)
	if err != nil {
		e.fail(err.Error())
		return
	}
	if got != "miss" {
		e.fail(fmt.Sprintf("after a purge that answered 200, %s answered the purged probe with X-Shoal-Cache %q", victim.name, got))
	}
}
