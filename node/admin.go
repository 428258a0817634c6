package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops"
)

// adminBackend adapts the node to the admin API.
type adminBackend struct{ n *Node }

var _ ops.AdminBackend = adminBackend{}

// MemberView is one member in GET /admin/v1/cluster.
type MemberView struct {
	Name     string                   `json:"name"`
	State    string                   `json:"state"`
	Role     string                   `json:"role"`
	HTTPAddr string                   `json:"http_addr"`
	Gossip   string                   `json:"gossip_addr"`
	RaftAddr string                   `json:"raft_addr"`
	Version  string                   `json:"version"`
	Models   map[string]ModelLoadView `json:"models"`
	GPU      GPUView                  `json:"gpu"`
	LoadAge  string                   `json:"load_age"`
}

// ModelLoadView is a member's load for one model.
type ModelLoadView struct {
	QueueDepth    int `json:"queue_depth"`
	ActiveBatches int `json:"active_batches"`
	Running       int `json:"running"`
	Slots         int `json:"slots"`
	// TokensPerSec is the member's recent generation rate, from its load report.
	TokensPerSec float64 `json:"tokens_per_sec"`
}

// GPUView is a member's GPU capacity.
type GPUView struct {
	Count          int     `json:"count"`
	MemoryTotalMB  int     `json:"memory_total_mb"`
	MemoryFreeMB   int     `json:"memory_free_mb"`
	UtilizationPct float64 `json:"utilization_pct"`
}

// ClusterView is GET /admin/v1/cluster.
type ClusterView struct {
	Node    string             `json:"node"`
	Leader  string             `json:"leader"`
	Members []MemberView       `json:"members"`
	Raft    []consensus.Server `json:"raft"`
	Index   uint64             `json:"raft_applied_index"`
}

func (a adminBackend) ClusterView(_ context.Context) (any, error) {
	n := a.n
	servers, err := n.store.Configuration()
	if err != nil {
		servers = nil
	}
	roles := map[string]string{}
	for _, s := range servers {
		if s.Voter {
			roles[s.ID] = "voter"
		} else {
			roles[s.ID] = "non-voter"
		}
	}
	leader := n.store.LeaderID()
	if leader != "" {
		roles[leader] = "leader"
	}
	v := ClusterView{Node: n.cfg.NodeName, Leader: leader, Raft: servers, Index: n.store.AppliedIndex()}
	now := time.Now()
	for _, m := range n.gossip.Members() {
		role := roles[m.Name]
		if role == "" {
			role = "none"
		}
		load := m.Load
		age := now.Sub(m.LoadUpdated).Round(time.Millisecond).String()
		if m.Name == n.cfg.NodeName {
			load, age = n.localLoad(), "0s"
		}
		mv := MemberView{Name: m.Name, State: m.State.String(), Role: role, HTTPAddr: m.Meta.HTTPAddr, Gossip: m.Addr,
			RaftAddr: m.Meta.RaftAddr, Version: m.Meta.Version, Models: map[string]ModelLoadView{}, LoadAge: age,
			GPU: GPUView{Count: load.GPU.Count, MemoryTotalMB: load.GPU.MemoryTotalMB, MemoryFreeMB: load.GPU.MemoryFreeMB, UtilizationPct: load.GPU.UtilizationPct}}
		for name, l := range load.Models {
			mv.Models[name] = ModelLoadView{QueueDepth: l.QueueDepth, ActiveBatches: l.ActiveBatches, Running: l.InFlight, Slots: l.Slots, TokensPerSec: l.TokensPerSec}
		}
		v.Members = append(v.Members, mv)
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].Name < v.Members[j].Name })
	return v, nil
}

func (a adminBackend) State() *consensus.State { return a.n.store.State() }

func (a adminBackend) Apply(ctx context.Context, cmd consensus.Command) error {
	return a.n.applyCommand(ctx, cmd)
}

func (a adminBackend) ApplyLocal(ctx context.Context, cmd consensus.Command) error {
	_, err := a.n.store.Apply(ctx, cmd)
	return err
}

func (a adminBackend) Batching() map[string]consensus.BatchingSettings {
	out := map[string]consensus.BatchingSettings{}
	for _, m := range a.n.sched.Models() {
		if s, ok := a.n.sched.Settings(m); ok {
			out[m] = consensus.BatchingSettings{MaxSize: s.MaxSize, FlushTimeout: s.FlushTimeout}
		}
	}
	// Models served only elsewhere report their replicated setting.
	for m, s := range a.n.store.State().Batching {
		if _, ok := out[m]; !ok {
			out[m] = s
		}
	}
	return out
}

func (a adminBackend) HasModel(model string) bool { return a.n.servedAnywhere(model) }

func (a adminBackend) Limits() consensus.LimitPolicy {
	if p := a.n.store.State().Limits; p != nil {
		return *p.Clone()
	}
	return consensus.LimitPolicy{DefaultRPM: a.n.cfg.RateLimit.RPM, AuthRequired: a.n.cfg.Auth.Required,
		Endpoints: map[string]consensus.EndpointLimit{}, Keys: map[string]consensus.KeyLimit{}, Tenants: map[string]consensus.TenantLimit{}}
}

func (a adminBackend) Breakers() []consensus.BreakerState {
	st := a.n.store.State()
	out := make([]consensus.BreakerState, 0, len(st.Breakers))
	for _, b := range st.Breakers {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool {
		return consensus.BreakerKey(out[i].Node, out[i].Model) < consensus.BreakerKey(out[j].Node, out[j].Model)
	})
	return out
}

func (a adminBackend) BreakerAction(ctx context.Context, node, model, action string) error {
	return a.n.breakerAction(ctx, node, model, action)
}

func (a adminBackend) Join(ctx context.Context, addrs []string) (int, error) {
	return a.n.gossip.Join(ctx, addrs)
}

func (a adminBackend) Leave(ctx context.Context) error { return a.n.Leave(ctx) }

func (a adminBackend) CacheStats(ctx context.Context) (any, error) { return a.n.cacheStats(ctx) }

func (a adminBackend) PurgeCache(ctx context.Context, model string) error {
	return a.n.purgeCache(ctx, model)
}

// forwardApply sends a write to the leader's admin API.
func (n *Node) forwardApply(ctx context.Context, leaderHTTP string, cmd consensus.Command) error {
	body, err := consensus.EncodeCommand(cmd)
	if err != nil {
		return fmt.Errorf("encode command: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+leaderHTTP+"/admin/v1/internal/apply", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("forward to leader: %w", err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if n.cfg.Admin.Token != "" {
		req.Header.Set("Authorization", "Bearer "+n.cfg.Admin.Token)
	}
	resp, err := n.peerClient.Do(req)
	if err != nil {
		return fmt.Errorf("forward to leader %s: %w: %w", leaderHTTP, consensus.ErrNoLeader, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	var e struct {
		Error struct {
			Message string `json:"message"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(data, &e)
	if e.Error.Message == "" {
		e.Error.Message = fmt.Sprintf("leader answered %d", resp.StatusCode)
	}
	return &ops.StatusError{Status: resp.StatusCode, Code: e.Error.Code, Msg: "leader: " + e.Error.Message}
}

// Leave leaves the cluster gracefully: Raft first (handing off leadership
// and removing this server), then gossip, so peers stop routing here.
func (n *Node) Leave(ctx context.Context) error {
	n.setDraining()
	n.publishLoad()
	if err := n.store.Leave(ctx); err != nil {
		n.logger.Warn("raft leave", "err", err)
	}
	if err := n.gossip.Leave(5 * time.Second); err != nil {
		return fmt.Errorf("gossip leave: %w", err)
	}
	n.logger.Info("left the cluster")
	return nil
}
