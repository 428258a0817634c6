package node

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNewRejectsInvalidConfigAsConfigError(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeName = "n1"
	cfg.Models = []ModelConfig{DefaultModelConfig("m", "sim")}
	cfg.Batching.MaxSize = -3
	_, err := New(cfg)
	var ce *ConfigError
	require.True(t, errors.As(err, &ce), "a ConfigError (exit status 2), got %T: %v", err, err)
	require.Contains(t, err.Error(), "batching.max_size")
}
