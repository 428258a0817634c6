// Package cli is the shoal command line: it parses flags and runs the
// node, admin, model, bench, tune and top commands.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/internal/gcfloor"
	"github.com/shoal-dev/shoal/node"
)

// usageError marks a command-line mistake (exit status 2).
type usageError struct{ error }

// Main runs the command line args (without the program name) and returns
// the process exit status: 0 on success, 2 for a usage or configuration
// mistake, 1 for any other failure, which it prints to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "shoal:", err)
	var ce *node.ConfigError
	var ue usageError
	if errors.As(err, &ce) || errors.As(err, &ue) {
		return 2
	}
	return 1
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "shoal",
		Short:         "shoal: a distributed inference-serving cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	nodeCmd := &cobra.Command{Use: "node", Short: "Run and manage cluster nodes"}
	nodeCmd.AddCommand(newStartCmd())
	nodeCmd.AddCommand(newNodeAdminCmds()...)
	root.AddCommand(nodeCmd, newAdminCmd(), newModelCmd(), newBenchCmd(), newTuneCmd(), newTopCmd(), newSimCmd(), newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the shoal version",
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "shoal", node.Version)
			return nil
		},
	}
}

type startFlags struct {
	config          string
	name            string
	dataDir         string
	httpAddr        string
	gossipAddr      string
	raftAddr        string
	cacheAddr       string
	join            []string
	bootstrapExpect int
	dev             bool
	logLevel        string
	logFormat       string
}

func newStartCmd() *cobra.Command {
	var f startFlags
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Start a node (use --dev for a complete single-node cluster)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStart(cmd, &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "HCL configuration file (see cluster.example.hcl)")
	fl.StringVar(&f.name, "name", "", "node name (default: host name)")
	fl.StringVar(&f.dataDir, "data-dir", "", "data directory for Raft state and generated models")
	fl.StringVar(&f.httpAddr, "http-addr", "", "HTTP listen address (default 0.0.0.0:8080; 127.0.0.1:8080 with --dev)")
	fl.StringVar(&f.gossipAddr, "gossip-addr", "", "gossip listen address (default 0.0.0.0:7946)")
	fl.StringVar(&f.raftAddr, "raft-addr", "", "Raft listen address (default 0.0.0.0:7947)")
	fl.StringVar(&f.cacheAddr, "cache-addr", "", "cache (Olric) listen address (default 0.0.0.0:3320)")
	fl.StringArrayVar(&f.join, "join", nil, "gossip address of a member to join (repeatable)")
	fl.IntVar(&f.bootstrapExpect, "bootstrap-expect", 0, "servers to wait for before bootstrapping Raft")
	fl.BoolVar(&f.dev, "dev", false, "run a complete single-node cluster with embedded defaults and data in a temp dir")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

// loadConfig layers defaults, the file, the environment and the flags, in
// that order, so a flag always wins.
func loadConfig(cmd *cobra.Command, f *startFlags) (node.Config, error) {
	cfg := node.DefaultConfig()
	if f.dev {
		if err := cfg.ApplyDev(); err != nil {
			return cfg, err
		}
	}
	if f.config != "" {
		if err := cfg.LoadFile(f.config); err != nil {
			return cfg, err
		}
	}
	if err := cfg.ApplyEnv(os.LookupEnv); err != nil {
		return cfg, err
	}
	changed := cmd.Flags().Changed
	if changed("name") {
		cfg.NodeName = f.name
	}
	if changed("data-dir") {
		cfg.DataDir = f.dataDir
	}
	if changed("http-addr") {
		cfg.HTTP.Addr = f.httpAddr
	}
	if changed("gossip-addr") {
		cfg.Gossip.Addr = f.gossipAddr
	}
	if changed("raft-addr") {
		cfg.Raft.Addr = f.raftAddr
	}
	if changed("cache-addr") {
		cfg.Cache.Addr = f.cacheAddr
	}
	if changed("join") {
		cfg.Join = f.join
	}
	if changed("bootstrap-expect") {
		cfg.Raft.BootstrapExpect = f.bootstrapExpect
	}
	if cfg.Dev && len(cfg.Models) == 0 {
		cfg.Models = node.DevModels()
	}
	if err := cfg.Validate(); err != nil {
		return cfg, &node.ConfigError{Err: err}
	}
	return cfg, nil
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level: %w", err)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, usageError{fmt.Errorf("--log-format must be text or json, got %q", format)}
}

func runStart(cmd *cobra.Command, f *startFlags) error {
	logger, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(cmd, f)
	if err != nil {
		return err
	}
	cfg.Logger = logger
	// The collector is the process's, so its floor is set here, where
	// one node is the whole process, and not by node.New (tests run many
	// nodes in one process).
	gcf, err := gcfloor.Start(gcfloor.Config{Floor: uint64(cfg.GC.HeapFloorBytes), Logger: logger})
	if err != nil {
		return fmt.Errorf("gc heap floor: %w", err)
	}
	defer gcf.Stop()
	if cfg.Dev {
		logger.Warn("dev mode: single node, data in a temporary directory, admin API without a token unless SHOAL_ADMIN_TOKEN is set", "data_dir", cfg.DataDir)
		defer os.RemoveAll(cfg.DataDir)
	}
	n, err := node.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := n.Start(ctx); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	<-ctx.Done()
	stop()
	logger.Info("signal received; draining", "timeout", cfg.HTTP.DrainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), cfg.HTTP.DrainTimeout)
	defer cancel()
	if err := n.Shutdown(dctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
