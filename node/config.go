package node

import (
	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/scheduler/sim"
)

// The node's configuration lives in package config; these names keep the
// node's callers (cli, benchtest, deploy tests) and its own tests unchanged.
type (
	Config      = config.Config
	ModelConfig = config.ModelConfig
	AdminConfig = config.AdminConfig
	ConfigError = config.ConfigError
)

// DefaultConfig is config.DefaultConfig.
func DefaultConfig() Config { return config.DefaultConfig() }

// DefaultModelConfig is config.DefaultModelConfig.
func DefaultModelConfig(name, backend string) ModelConfig {
	return config.DefaultModelConfig(name, backend)
}

// DevModels is config.DevModels.
func DevModels() []ModelConfig { return config.DevModels() }

// DefaultSimConfig is config.DefaultSimConfig.
func DefaultSimConfig() sim.Config { return config.DefaultSimConfig() }
