// Package testbin builds the shoal binary for tests that run nodes as real
// processes (the chaos suite, the 20-process scale test).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Main runs m with *bin set to a shoal binary: the one named by the
// environment variable binEnv, or else one built from the module (pkgDir
// is the module root as seen from the test's package, usually "..") into a
// temporary directory removed afterwards. It exits with m's code.
func Main(m *testing.M, name, binEnv, pkgDir string, bin *string) {
	if *bin = os.Getenv(binEnv); *bin != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "shoal-"+name+"-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
	*bin = filepath.Join(dir, "shoal")
	build := exec.Command("go", "build", "-o", *bin, pkgDir)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: build shoal: %v\n%s", name, err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
