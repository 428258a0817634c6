package config

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestExampleConfigLoads keeps cluster.example.hcl true: every key in it must
// be one the node reads, and the result must validate.
func TestExampleConfigLoads(t *testing.T) {
	cfg := DefaultConfig()
	require.NoError(t, cfg.LoadFile("../cluster.example.hcl"))
	require.NoError(t, cfg.Validate())
	require.Equal(t, "node-1", cfg.NodeName)
	require.Len(t, cfg.Models, 4)
	require.Equal(t, 3, cfg.Raft.BootstrapExpect)
}
