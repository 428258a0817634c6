package config

import (
	"errors"
	"os"
	"testing"
)

// FuzzLoadHCL feeds arbitrary files to the config loader: every outcome is
// either a *ConfigError (exit status 2 in main) or a config that Validate
// judges without panicking.
func FuzzLoadHCL(f *testing.F) {
	if src, err := os.ReadFile("../cluster.example.hcl"); err == nil {
		f.Add(src)
	}
	for _, s := range []string{
		`node_name = "n1"` + "\n" + `batching { max_size = 64  flush_timeout = "10ms" }`,
		`model "m" { backend = "sim"  sim { base = "1ms"  per_item = "-1ms"  exponent = 1e309 } }`,
		`model "m" { backend = "engine"  engine { quantize = "int4"  max_sequences = -1 } }`,
		`http { addr = 8080 }`, `raft { bootstrap_expect = "three" }`, `unknown = 1`,
		`cache { default_ttl = "forever" }`, `join = ["a", 1, null]`, `gpu { count = 1e20 }`,
		`model "" {}`, `model "a" {}` + "\n" + `model "a" {}`, `x = "${env("HOME")}"`,
		"\xff\xfe", `circuit_breaker { timeout = "9999999h" }`, `{`, `a = [[[[[[[[[[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg := DefaultConfig()
		if err := cfg.loadHCL(src, "fuzz.hcl"); err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("load error is not a ConfigError: %T %v", err, err)
			}
			return
		}
		_ = cfg.Validate()
	})
}

// FuzzApplyEnv sets every environment variable the node reads to the same
// arbitrary value: each is accepted or reported as a *ConfigError.
func FuzzApplyEnv(f *testing.F) {
	for _, s := range []string{"64", "0", "-1", "10ms", "1e400", "NaN", "redis", "olric", "off", "2h", "true", "", " 5 ", "\x00", "9223372036854775808"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		cfg := DefaultConfig()
		env := func(string) (string, bool) { return v, true }
		if err := cfg.ApplyEnv(env); err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("env error is not a ConfigError: %T %v", err, err)
			}
			return
		}
		_ = cfg.Validate()
	})
}
