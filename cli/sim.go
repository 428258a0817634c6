package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/clustersim"
)

// newSimCmd is `shoal sim`: the routing simulator's scaling table.
func newSimCmd() *cobra.Command {
	var (
		nodes    []int
		seed     uint64
		duration time.Duration
		util     float64
		service  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulate load dissemination and routing at scale (p50/p99, imbalance, messages per node)",
		Long: "Runs the discrete-event cluster simulator (package clustersim) for each cluster size and\n" +
			"dissemination policy with the real router's scoring, and prints a markdown table.\n" +
			"Deterministic from --seed.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if util <= 0 || util >= 1 {
				return usageError{fmt.Errorf("--utilization must be between 0 and 1, got %v", util)}
			}
			for _, n := range nodes {
				if n < 2 {
					return usageError{fmt.Errorf("--nodes: each size must be at least 2, got %d", n)}
				}
			}
			base := clustersim.DefaultConfig()
			if service <= 0 {
				return usageError{fmt.Errorf("--mean-service must be positive, got %v", service)}
			}
			base.Seed, base.Duration, base.Warmup, base.Utilization, base.MeanService = seed, duration, 3*time.Second, util, service
			_, err := clustersim.Table(cmd.OutOrStdout(), base, nodes, clustersim.DefaultVariants())
			return err
		},
	}
	cmd.Flags().IntSliceVar(&nodes, "nodes", []int{10, 100, 1000, 10000}, "cluster sizes to simulate")
	cmd.Flags().Uint64Var(&seed, "seed", 1, "random seed")
	cmd.Flags().DurationVar(&duration, "duration", 0, "simulated time per run (0: by size, 10 min at 10 nodes down to 10 s at 10,000)")
	cmd.Flags().Float64Var(&util, "utilization", 0.8, "offered load over cluster capacity")
	cmd.Flags().DurationVar(&service, "mean-service", time.Second, "mean service time of a normal node (shorter: more requests per node per second)")
	return cmd
}
