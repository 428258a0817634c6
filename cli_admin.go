package main

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
	"time"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/node"
)

// adminClient calls a node's /admin/v1 API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

// adminFlags adds --node and --token to cmd and returns a constructor for
// the client they describe.
func adminFlags(cmd *cobra.Command) func() *adminClient {
	var nodeURL, token string
	cmd.PersistentFlags().StringVar(&nodeURL, "node", "http://127.0.0.1:8080", "HTTP address of the node to talk to")
	cmd.PersistentFlags().StringVar(&token, "token", "", "admin token (default $SHOAL_ADMIN_TOKEN)")
	return func() *adminClient {
		if token == "" {
			token = os.Getenv("SHOAL_ADMIN_TOKEN")
		}
		base := strings.TrimRight(nodeURL, "/")
		if !strings.Contains(base, "://") {
			base = "http://" + base
		}
		return &adminClient{base: base, token: token, http: &http.Client{Timeout: 60 * time.Second}}
	}
}

func (c *adminClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, c.base+path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, e.Error.Message)
		}
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func printJSON(w io.Writer, raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		_, err = w.Write(raw)
		return err
	}
	buf.WriteByte('\n')
	_, err := buf.WriteTo(w)
	return err
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
		var out struct {
			Joined int `json:"joined"`
		}
		if err := joinClient().do(cmd.Context(), http.MethodPost, "/admin/v1/cluster/join", map[string]any{"addrs": args}, &out); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "joined: contacted %d member(s)\n", out.Joined)
		return nil
	}

	leave := &cobra.Command{Use: "leave", Short: "Make the node leave the cluster gracefully", Args: cobra.NoArgs}
	leaveClient := adminFlags(leave)
	leave.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := leaveClient().do(cmd.Context(), http.MethodPost, "/admin/v1/cluster/leave", nil, nil); err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), "left the cluster")
		return nil
	}

	members := &cobra.Command{Use: "members", Short: "List cluster members with role, models, queues and GPU capacity", Args: cobra.NoArgs}
	membersClient := adminFlags(members)
	members.RunE = func(cmd *cobra.Command, _ []string) error {
		var v node.ClusterView
		if err := membersClient().do(cmd.Context(), http.MethodGet, "/admin/v1/cluster", nil, &v); err != nil {
			return err
		}
		printMembers(cmd.OutOrStdout(), v)
		return nil
	}
	return []*cobra.Command{join, leave, members}
}

func printMembers(w io.Writer, v node.ClusterView) {
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

// newAdminCmd is `shoal admin ...`: runtime tuning through any node.
func newAdminCmd() *cobra.Command {
	admin := &cobra.Command{Use: "admin", Short: "Change cluster settings at runtime through any node"}
	client := adminFlags(admin)
	get := func(path string) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			var raw json.RawMessage
			if err := client().do(cmd.Context(), http.MethodGet, path, nil, &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		}
	}

	batching := &cobra.Command{Use: "batching", Short: "Show or change per-model batching"}
	batching.AddCommand(&cobra.Command{Use: "get", Short: "Show batching settings", Args: cobra.NoArgs, RunE: get("/admin/v1/batching")})
	var model, flush string
	var maxSize int
	set := &cobra.Command{Use: "set", Short: "Change a model's batching (applied through Raft on every node)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body := map[string]any{"model": model}
			if cmd.Flags().Changed("max-size") {
				body["max_size"] = maxSize
			}
			if flush != "" {
				body["flush_timeout"] = flush
			}
			var raw json.RawMessage
			if err := client().do(cmd.Context(), http.MethodPut, "/admin/v1/batching", body, &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		}}
	set.Flags().StringVar(&model, "model", "", "model name (required)")
	set.Flags().IntVar(&maxSize, "max-size", 0, "largest batch")
	set.Flags().StringVar(&flush, "flush-timeout", "", "flush timeout, e.g. 5ms")
	_ = set.MarkFlagRequired("model")
	batching.AddCommand(set)

	limits := &cobra.Command{Use: "limits", Short: "Show or replace rate-limit policies"}
	limits.AddCommand(&cobra.Command{Use: "get", Short: "Show the limit policy", Args: cobra.NoArgs, RunE: get("/admin/v1/limits")})
	var file string
	limitsSet := &cobra.Command{Use: "set", Short: "Replace the limit policy with a JSON file (- for stdin)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			var raw json.RawMessage
			if err := client().do(cmd.Context(), http.MethodPut, "/admin/v1/limits", policy, &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		}}
	limitsSet.Flags().StringVar(&file, "file", "-", "JSON policy file")
	limits.AddCommand(limitsSet)

	breakers := &cobra.Command{Use: "breakers", Short: "Show or force circuit breakers"}
	breakers.AddCommand(&cobra.Command{Use: "get", Short: "Show breakers", Args: cobra.NoArgs, RunE: get("/admin/v1/breakers")})
	for _, action := range []string{"open", "close", "reset"} {
		breakers.AddCommand(&cobra.Command{Use: action + " NODE MODEL", Short: "Force the breaker " + action, Args: cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				path := fmt.Sprintf("/admin/v1/breakers/%s/%s/%s", args[0], args[1], action)
				var raw json.RawMessage
				if err := client().do(cmd.Context(), http.MethodPost, path, nil, &raw); err != nil {
					return err
				}
				return printJSON(cmd.OutOrStdout(), raw)
			}})
	}

	cache := &cobra.Command{Use: "cache", Short: "Show or purge the response cache"}
	cache.AddCommand(&cobra.Command{Use: "stats", Short: "Cache statistics", Args: cobra.NoArgs, RunE: get("/admin/v1/cache")})
	var purgeModel string
	purge := &cobra.Command{Use: "purge", Short: "Drop cached responses (all, or --model)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/admin/v1/cache"
			if purgeModel != "" {
				path += "?model=" + purgeModel
			}
			var raw json.RawMessage
			if err := client().do(cmd.Context(), http.MethodDelete, path, nil, &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		}}
	purge.Flags().StringVar(&purgeModel, "model", "", "only this model's entries")
	cache.AddCommand(purge)

	cluster := &cobra.Command{Use: "cluster", Short: "Show members, leader, Raft configuration and load", Args: cobra.NoArgs, RunE: get("/admin/v1/cluster")}
	admin.AddCommand(batching, limits, breakers, cache, cluster)
	return admin
}
