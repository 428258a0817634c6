package gossip

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves goroutines behind: Shutdown
// must stop everything this package and memberlist started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
