package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops/adminapi"
)

// defaultNode is where every client command looks for a node.
const defaultNode = "http://127.0.0.1:8080"

// nodeFlag adds --node (and its alias --url) to cmd, the one name every
// command uses for the node it talks to.
func nodeFlag(cmd *cobra.Command, persistent bool, target *string, usage string) {
	fs := cmd.Flags()
	if persistent {
		fs = cmd.PersistentFlags()
	}
	fs.StringVar(target, "node", defaultNode, usage)
	fs.StringVar(target, "url", defaultNode, "alias of --node")
	_ = fs.MarkHidden("url")
}

// withScheme makes "host:port" the http URL of a node, as every command
// accepts both.
func withScheme(addr string) string {
	addr = strings.TrimRight(addr, "/")
	if !strings.Contains(addr, "://") {
		return "http://" + addr
	}
	return addr
}

// adminFlags adds --node and --token to cmd and returns a constructor for
// the client they describe.
func adminFlags(cmd *cobra.Command) func() *adminapi.Client {
	var nodeURL, token string
	nodeFlag(cmd, true, &nodeURL, "HTTP address of the node to talk to")
	cmd.PersistentFlags().StringVar(&token, "token", "", "admin token (default $SHOAL_ADMIN_TOKEN)")
	return func() *adminapi.Client {
		if token == "" {
			token = os.Getenv("SHOAL_ADMIN_TOKEN")
		}
		return adminapi.NewClient(nodeURL, token, nil)
	}
}

func printJSON(w io.Writer, v any) error {
	raw, ok := v.(json.RawMessage)
	if !ok {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode answer: %w", err)
		}
		raw = b
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		_, err = w.Write(raw)
		return err
	}
	buf.WriteByte('\n')
	_, err := buf.WriteTo(w)
	return err
}

// show runs call and prints what it returns as JSON.
func show[T any](call func(ctx context.Context, args []string) (T, error)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		v, err := call(cmd.Context(), args)
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), v)
	}
}

// deleteCmd is a command that removes the one thing its argument names.
func deleteCmd(use, short string, del func(ctx context.Context, name string) error) *cobra.Command {
	return &cobra.Command{Use: use, Short: short, Args: cobra.ExactArgs(1),
		RunE: show(func(ctx context.Context, args []string) (adminapi.Deleted, error) {
			return adminapi.Deleted{Deleted: args[0]}, del(ctx, args[0])
		})}
}

// newNodeAdminCmds are `shoal node join|leave|members`.
func newNodeAdminCmds() []*cobra.Command {
	join := &cobra.Command{
		Use:   "join GOSSIP_ADDR...",
		Short: "Tell a running node to join the cluster that GOSSIP_ADDR belongs to",
		Args:  cobra.MinimumNArgs(1),
	}
	joinClient := adminFlags(join)
	join.RunE = func(cmd *cobra.Command, args []string) error {
		out, err := joinClient().Join(cmd.Context(), args)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "joined: contacted %d member(s)\n", out.Joined)
		return nil
	}

	leave := &cobra.Command{Use: "leave", Short: "Make the node leave the cluster gracefully", Args: cobra.NoArgs}
	leaveClient := adminFlags(leave)
	leave.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := leaveClient().Leave(cmd.Context()); err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), "left the cluster")
		return nil
	}

	members := &cobra.Command{Use: "members", Short: "List cluster members with role, models, queues and GPU capacity", Args: cobra.NoArgs}
	membersClient := adminFlags(members)
	members.RunE = func(cmd *cobra.Command, _ []string) error {
		v, err := membersClient().Cluster(cmd.Context())
		if err != nil {
			return err
		}
		printMembers(cmd.OutOrStdout(), v)
		return nil
	}
	return []*cobra.Command{join, leave, members}
}

func printMembers(w io.Writer, v adminapi.ClusterView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tROLE\tHTTP\tMODELS (queue/running/slots)\tGPU (count, free/total MiB)")
	for _, m := range v.Members {
		names := make([]string, 0, len(m.Models))
		for n := range m.Models {
			names = append(names, n)
		}
		sort.Strings(names)
		models := make([]string, 0, len(names))
		for _, n := range names {
			l := m.Models[n]
			models = append(models, fmt.Sprintf("%s %d/%d/%d", n, l.QueueDepth, l.Running, l.Slots))
		}
		gpu := "cpu"
		if m.GPU.Count > 0 {
			gpu = fmt.Sprintf("%d, %d/%d", m.GPU.Count, m.GPU.MemoryFreeMB, m.GPU.MemoryTotalMB)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.State, m.Role, m.HTTPAddr, strings.Join(models, ", "), gpu)
	}
	_ = tw.Flush()
}

// newAdminCmd is `shoal admin ...`: runtime settings through any node,
// each applied through Raft on every node.
func newAdminCmd() *cobra.Command {
	admin := &cobra.Command{Use: "admin", Short: "Change cluster settings at runtime through any node"}
	client := adminFlags(admin)
	raw := func(path string) func(context.Context, []string) (json.RawMessage, error) {
		return func(ctx context.Context, _ []string) (json.RawMessage, error) {
			var v json.RawMessage
			return v, client().Do(ctx, http.MethodGet, path, nil, &v)
		}
	}
	admin.AddCommand(newBatchingCmd(client, raw), newLimitsCmd(client, raw), newKeysCmd(client),
		newBreakersCmd(client, raw), newCacheCmd(client, raw),
		&cobra.Command{Use: "cluster", Short: "Show members, leader, Raft configuration and load", Args: cobra.NoArgs, RunE: show(raw(adminapi.PathCluster))})
	return admin
}

type rawGetter func(path string) func(context.Context, []string) (json.RawMessage, error)

func newBatchingCmd(client func() *adminapi.Client, raw rawGetter) *cobra.Command {
	batching := &cobra.Command{Use: "batching", Short: "Show or change per-model batching"}
	batching.AddCommand(&cobra.Command{Use: "get", Short: "Show batching settings", Args: cobra.NoArgs, RunE: show(raw(adminapi.PathBatching))})
	var put adminapi.BatchingPut
	var maxSize int
	set := &cobra.Command{Use: "set", Short: "Change a model's batching (applied through Raft on every node)", Args: cobra.NoArgs}
	set.RunE = show(func(ctx context.Context, _ []string) (adminapi.BatchingResult, error) {
		if set.Flags().Changed("max-size") {
			put.MaxSize = &maxSize
		}
		return client().SetBatching(ctx, put)
	})
	set.Flags().StringVar(&put.Model, "model", "", "model name (required)")
	set.Flags().IntVar(&maxSize, "max-size", 0, "largest batch")
	set.Flags().StringVar(&put.FlushTimeout, "flush-timeout", "", "flush timeout, e.g. 5ms")
	_ = set.MarkFlagRequired("model")
	batching.AddCommand(set, deleteCmd("delete MODEL", "Drop a model's cluster-wide batching: every node returns to its configured settings",
		func(ctx context.Context, model string) error { return client().DeleteBatching(ctx, model) }))
	return batching
}

func newLimitsCmd(client func() *adminapi.Client, raw rawGetter) *cobra.Command {
	limits := &cobra.Command{Use: "limits", Short: "Show or change rate-limit policies"}
	limits.AddCommand(&cobra.Command{Use: "get", Short: "Show the limit policy", Args: cobra.NoArgs, RunE: show(raw(adminapi.PathLimits))})
	var file string
	limitsSet := &cobra.Command{Use: "set", Short: "Replace the limit policy with a JSON file (- for stdin)", Args: cobra.NoArgs}
	limitsSet.RunE = func(cmd *cobra.Command, _ []string) error {
		var data []byte
		var err error
		if file == "-" {
			data, err = io.ReadAll(cmd.InOrStdin())
		} else {
			data, err = os.ReadFile(file)
		}
		if err != nil {
			return fmt.Errorf("read policy: %w", err)
		}
		var policy json.RawMessage
		if err := json.Unmarshal(data, &policy); err != nil {
			return usageError{fmt.Errorf("policy file is not JSON: %w", err)}
		}
		var out json.RawMessage
		if err := client().Do(cmd.Context(), http.MethodPut, adminapi.PathLimits, policy, &out); err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), out)
	}
	limitsSet.Flags().StringVar(&file, "file", "-", "JSON policy file")

	endpoint := &cobra.Command{Use: "endpoint", Short: "Set or remove one request path's cluster-wide limit"}
	var ep adminapi.EndpointPut
	epSet := &cobra.Command{Use: "set PATH", Short: "Limit a request path, e.g. /v1/chat/completions (0 is unlimited)", Args: cobra.ExactArgs(1),
		RunE: show(func(ctx context.Context, args []string) (adminapi.EndpointPut, error) {
			ep.Path = args[0]
			return client().SetEndpointLimit(ctx, ep)
		})}
	epSet.Flags().IntVar(&ep.RPM, "rpm", 0, "requests per minute")
	epSet.Flags().IntVar(&ep.RPH, "rph", 0, "requests per hour")
	endpoint.AddCommand(epSet, deleteCmd("delete PATH", "Remove a request path's limit",
		func(ctx context.Context, path string) error { return client().DeleteEndpointLimit(ctx, path) }))

	tenant := &cobra.Command{Use: "tenant", Short: "Set or remove the limits a tenant's keys share"}
	var tp adminapi.TenantPut
	tSet := &cobra.Command{Use: "set NAME", Short: "Add or replace a tenant's limits (0 is unlimited)", Args: cobra.ExactArgs(1),
		RunE: show(func(ctx context.Context, args []string) (adminapi.TenantPut, error) {
			tp.Name = args[0]
			return client().PutTenant(ctx, tp)
		})}
	tSet.Flags().IntVar(&tp.RPM, "rpm", 0, "requests per minute")
	tSet.Flags().IntVar(&tp.TPM, "tpm", 0, "tokens per minute")
	tenant.AddCommand(tSet, deleteCmd("delete NAME", "Remove a tenant no key names",
		func(ctx context.Context, name string) error { return client().DeleteTenant(ctx, name) }))
	limits.AddCommand(limitsSet, endpoint, tenant)
	return limits
}

func newKeysCmd(client func() *adminapi.Client) *cobra.Command {
	keys := &cobra.Command{Use: "keys", Short: "Register or remove API keys (stored hashed)"}
	var kp adminapi.KeyPut
	add := &cobra.Command{Use: "add", Short: "Register an API key with its limits", Args: cobra.NoArgs,
		RunE: show(func(ctx context.Context, _ []string) (adminapi.KeyResult, error) { return client().PutKey(ctx, kp) })}
	add.Flags().StringVar(&kp.Key, "key", "", "the API key, at least 16 characters (required)")
	add.Flags().IntVar(&kp.RPM, "rpm", 0, "requests per minute (0 is unlimited)")
	add.Flags().IntVar(&kp.TPM, "tpm", 0, "tokens per minute (0 is unlimited)")
	add.Flags().StringVar(&kp.Tenant, "tenant", "", "tenant whose limits the key shares")
	_ = add.MarkFlagRequired("key")
	keys.AddCommand(add, deleteCmd("delete ID", "Remove a key by the id `keys add` printed",
		func(ctx context.Context, id string) error { return client().DeleteKey(ctx, id) }))
	return keys
}

func newBreakersCmd(client func() *adminapi.Client, raw rawGetter) *cobra.Command {
	breakers := &cobra.Command{Use: "breakers", Short: "Show or force circuit breakers"}
	breakers.AddCommand(&cobra.Command{Use: "get", Short: "Show breakers", Args: cobra.NoArgs, RunE: show(raw(adminapi.PathBreakers))})
	for _, action := range []string{"open", "close", "reset"} {
		breakers.AddCommand(&cobra.Command{Use: action + " NODE MODEL", Short: "Force the breaker " + action, Args: cobra.ExactArgs(2),
			RunE: show(func(ctx context.Context, args []string) (adminapi.BreakerResult, error) {
				return client().BreakerAction(ctx, args[0], args[1], action)
			})})
	}
	return breakers
}

func newCacheCmd(client func() *adminapi.Client, raw rawGetter) *cobra.Command {
	cache := &cobra.Command{Use: "cache", Short: "Show or purge the response cache, or change its settings"}
	cache.AddCommand(&cobra.Command{Use: "stats", Short: "Cache statistics", Args: cobra.NoArgs, RunE: show(raw(adminapi.PathCache))})
	var purgeModel string
	purge := &cobra.Command{Use: "purge", Short: "Drop cached responses (all, or --model)", Args: cobra.NoArgs,
		RunE: show(func(ctx context.Context, _ []string) (adminapi.Purged, error) {
			return client().PurgeCache(ctx, purgeModel)
		})}
	purge.Flags().StringVar(&purgeModel, "model", "", "only this model's entries")

	settings := &cobra.Command{Use: "settings", Short: "Show or change the cache settings every node uses"}
	var ttl, scope string
	var lower bool
	set := &cobra.Command{Use: "set", Short: "Change the cache TTL, case folding or scope (applied through Raft on every node)", Args: cobra.NoArgs}
	set.RunE = show(func(ctx context.Context, _ []string) (adminapi.CacheSettingsView, error) {
		var put adminapi.CacheSettingsPut
		if set.Flags().Changed("ttl") {
			put.DefaultTTL = &ttl
		}
		if set.Flags().Changed("lowercase") {
			put.Lowercase = &lower
		}
		if set.Flags().Changed("scope") {
			put.Scope = &scope
		}
		return client().SetCacheSettings(ctx, put)
	})
	set.Flags().StringVar(&ttl, "ttl", "", "how long a cached answer lives, e.g. 10m")
	set.Flags().BoolVar(&lower, "lowercase", false, "fold case when normalizing prompts")
	set.Flags().StringVar(&scope, "scope", "", "who shares cached answers: "+strings.Join([]string{consensus.CacheScopeCluster, consensus.CacheScopeTenant, consensus.CacheScopeKey}, ", "))
	settings.AddCommand(&cobra.Command{Use: "get", Short: "Show the effective cache settings", Args: cobra.NoArgs,
		RunE: show(func(ctx context.Context, _ []string) (adminapi.CacheSettingsView, error) {
			return client().CacheSettings(ctx)
		})}, set)
	cache.AddCommand(purge, settings)
	return cache
}
