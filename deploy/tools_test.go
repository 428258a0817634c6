package deploy

import (
	"os"
	"os/exec"
	"testing"
)

// Environment variables CI sets so a missing tool fails instead of skipping.
const (
	requirePromtool = "SHOAL_REQUIRE_PROMTOOL"
	requireDocker   = "SHOAL_REQUIRE_DOCKER"
)

// promHint says where promtool and prometheus come from.
const promHint = "Debian: apt-get install -y prometheus (provides promtool and prometheus)"

// requireTool returns the path of the first of names found on PATH. When
// none is there the test is skipped with hint, unless env (set by CI)
// demands the tool.
func requireTool(t *testing.T, env, hint string, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if os.Getenv(env) != "" {
		t.Fatalf("none of %v is on PATH and %s is set; %s", names, env, hint)
	}
	t.Skipf("none of %v is on PATH: skipping (%s; set %s=1 to make this a failure)", names, hint, env)
	return ""
}
