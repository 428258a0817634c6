package node

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	opsadmin "github.com/shoal-dev/shoal/ops/admin"
	"github.com/shoal-dev/shoal/ops/adminapi"
)

// adminBackend adapts the node to the admin API.
type adminBackend struct{ n *Node }

var _ opsadmin.Backend = adminBackend{}

// ClusterView is GET /admin/v1/cluster; the type lives with the admin
// API's other bodies.
type ClusterView = adminapi.ClusterView

func (a adminBackend) ClusterView(_ context.Context) (adminapi.ClusterView, error) {
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
		mv := adminapi.MemberView{Name: m.Name, State: m.State.String(), Role: role, HTTPAddr: m.Meta.HTTPAddr, Gossip: m.Addr,
			RaftAddr: m.Meta.RaftAddr, Version: m.Meta.Version, Models: map[string]adminapi.ModelLoadView{}, LoadAge: age,
			GPU: adminapi.GPUView{Count: load.GPU.Count, MemoryTotalMB: load.GPU.MemoryTotalMB, MemoryFreeMB: load.GPU.MemoryFreeMB, UtilizationPct: load.GPU.UtilizationPct}}
		for name, l := range load.Models {
			mv.Models[name] = adminapi.ModelLoadView{QueueDepth: l.QueueDepth, ActiveBatches: l.ActiveBatches, Running: l.InFlight, Slots: l.Slots, TokensPerSec: l.TokensPerSec}
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

// Nodes are the gossip members and Raft servers, and the nodes that still
// hold breaker state, so an operator can reset a departed node's breaker.
func (a adminBackend) Nodes() []string {
	seen := map[string]bool{}
	for _, m := range a.n.gossip.Members() {
		seen[m.Name] = true
	}
	if servers, err := a.n.store.Configuration(); err == nil {
		for _, s := range servers {
			seen[s.ID] = true
		}
	}
	for _, b := range a.n.store.State().Breakers {
		seen[b.Node] = true
	}
	return slices.Sorted(maps.Keys(seen))
}

// CacheSettings are the replicated settings once set through the admin
// API, else this node's configuration.
func (a adminBackend) CacheSettings() (consensus.CacheSettings, bool) {
	if cs := a.n.store.State().Cache; cs != nil {
		return *cs, true
	}
	c := a.n.cfg.Cache
	return consensus.CacheSettings{Enabled: c.Backend != "off", DefaultTTL: c.DefaultTTL, Lowercase: c.Lowercase}, false
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

// pruneDepartedBreakers drops, on the leader, the replicated breakers of
// nodes that are neither Raft servers nor alive gossip members any more (a
// node that left, or was removed as dead), so their state and its
// inference_breaker_state series do not stay forever. Only the cluster loop
// calls it.
func (n *Node) pruneDepartedBreakers(ctx context.Context) {
	st := n.store.State()
	if !n.store.IsLeader() || len(st.Breakers) == 0 {
		return
	}
	servers, err := n.store.Configuration()
	if err != nil {
		return
	}
	present := map[string]bool{}
	for _, s := range servers {
		present[s.ID] = true
	}
	for _, m := range n.gossip.Members() {
		if m.State.Listed() {
			present[m.Name] = true
		}
	}
	gone := map[string]bool{}
	for _, b := range st.Breakers {
		if !present[b.Node] {
			gone[b.Node] = true
		}
	}
	for node := range gone {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := n.store.Apply(actx, consensus.DeleteBreaker{Node: node})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				n.logger.Warn("drop breakers of departed node", "node", node, "err", err)
			}
			return
		}
		n.logger.Info("dropped the breakers of a node that left the cluster", "node", node)
	}
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
