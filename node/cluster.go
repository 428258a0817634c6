package node

import (
	"context"
	"fmt"
	"maps"
	"net"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/dcache"
	"github.com/shoal-dev/shoal/gossip"
	"github.com/shoal-dev/shoal/ops"
	"github.com/shoal-dev/shoal/raftwrite"
	"github.com/shoal-dev/shoal/router"
)

// advertiseHost is the address other nodes use for this one: the
// configured advertise host, else the bind host, else (when the bind host
// is unspecified) the first private IP, as memberlist itself chooses.
func advertiseHost(advertise, bind string) string {
	if advertise != "" {
		if h, _, err := net.SplitHostPort(advertise); err == nil {
			return h
		}
		return advertise
	}
	h, _, _ := net.SplitHostPort(bind)
	if ip := net.ParseIP(h); h != "" && (ip == nil || !ip.IsUnspecified()) {
		return h
	}
	if ip, err := sockaddr.GetPrivateIP(); err == nil && ip != "" {
		return ip
	}
	return "127.0.0.1"
}

func hostPort(host string, addr net.Addr) string {
	_, port, _ := net.SplitHostPort(addr.String())
	return net.JoinHostPort(host, port)
}

// startConsensus opens the Raft store on its listener.
func (n *Node) startConsensus(host string) error {
	ln := n.cfg.RaftListener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", n.cfg.Raft.Addr); err != nil {
			return fmt.Errorf("listen raft %s: %w", n.cfg.Raft.Addr, err)
		}
	}
	adv := hostPort(host, ln.Addr())
	if n.cfg.Raft.Advertise != "" {
		adv = n.cfg.Raft.Advertise
	}
	// The peer plane shares the Raft port (peerplane.go).
	raftLn, err := n.startPeer(ln)
	if err != nil {
		return err
	}
	sc := consensus.Config{
		NodeID:            n.cfg.NodeName,
		DataDir:           n.cfg.DataDir,
		Listener:          raftLn,
		Advertise:         adv,
		BootstrapExpect:   n.cfg.Raft.BootstrapExpect,
		MaxVoters:         n.cfg.Raft.MaxVoters,
		DeadServerTimeout: n.cfg.Raft.DeadServerTimeout,
		Logger:            n.logger,
	}
	// With a cluster key, Raft runs over mutual TLS keyed by it.
	key, err := n.cfg.ClusterKey()
	if err != nil {
		_ = raftLn.Close() // consensus.New would own it; it is not called
		return err
	}
	sc.Secret = key
	if n.cfg.Tuning.Raft != nil {
		n.cfg.Tuning.Raft(&sc)
	}
	st, err := consensus.New(sc)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	n.store = st
	n.writes = raftwrite.New(raftwrite.Config{Store: st, Peers: n.peer.client, Logger: n.logger})
	return nil
}

// startGossip joins memberlist with this node's identity.
func (n *Node) startGossip(host string) error {
	meta := gossip.Meta{
		HTTPAddr:        hostPort(host, n.httpLn.Addr()),
		RaftAddr:        n.store.Addr(),
		Version:         Version,
		BootstrapExpect: n.cfg.Raft.BootstrapExpect,
		RaftHasState:    n.store.HasExistingState(),
	}
	if n.cache.Backend() == dcache.BackendOlric {
		// Known from the cache's New on, so peers can join it at once.
		meta.CacheAddr, meta.CacheGossipAddr = n.cache.Addr(), n.cache.MemberlistAddr()
	}
	gc := gossip.Config{
		Name:          n.cfg.NodeName,
		BindAddr:      n.cfg.Gossip.Addr,
		AdvertiseAddr: n.cfg.Gossip.Advertise,
		EncryptKey:    n.cfg.Gossip.EncryptKey,
		Meta:          meta,
		Logger:        n.logger,
	}
	if n.cfg.Tuning.Gossip != nil {
		n.cfg.Tuning.Gossip(&gc)
	}
	g, err := gossip.New(gc)
	if err != nil {
		return fmt.Errorf("start gossip: %w", err)
	}
	n.gossip = g
	n.meta = meta
	// The load-message rate is what sampled dissemination bounds (README,
	// "Scaling to many nodes"); make test-scale reads it from here.
	if err := n.metrics.Registry.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "inference_gossip_load_messages_sent_total",
		Help: "Load messages this node sent: pushes on change, heartbeats, and answers to pulls.",
	}, func() float64 { return float64(g.Stats().LoadsSent) })); err != nil {
		return fmt.Errorf("gossip metrics: %w", err)
	}
	if err := n.metrics.Registry.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "inference_gossip_load_pulls_sent_total",
		Help: "Load pulls this node sent while routing in sampled dissemination (one per member asked).",
	}, func() float64 { return float64(g.Stats().PullsSent) })); err != nil {
		return fmt.Errorf("gossip metrics: %w", err)
	}
	return nil
}

// runCluster keeps Raft membership in step with gossip, publishes this
// node's load, and applies replicated settings, until ctx ends. Publishing
// load runs on a goroutine of its own: membership changes wait on Raft (up
// to 10s) and peers drop a node whose report is 5s old, so a load report
// must never wait behind one.
func (n *Node) runCluster(ctx context.Context) {
	n.goBackground(n.servePeer)
	n.goBackground(func() { n.runPublish(ctx) })
	events, cancelEvents := n.gossip.Subscribe()
	defer cancelEvents()
	changes, cancelChanges := n.store.Subscribe()
	defer cancelChanges()
	reconcile := time.NewTicker(time.Second)
	defer reconcile.Stop()
	reconnect := time.NewTicker(reconnectInterval)
	defer reconnect.Stop()
	n.applyState()
	n.reconcile(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			switch ev.Type {
			case gossip.EventJoin, gossip.EventLeft, gossip.EventFailed, gossip.EventUpdate:
				n.reconcile(ctx)
			}
		case <-reconcile.C:
			n.reconcile(ctx)
			n.breakers.Tick(n.sched.Models())
			n.seedLimits(ctx)
			n.seedClusterSecret(ctx)
			n.warnFileLimits()
			n.pruneDepartedBreakers(ctx)
		case <-changes:
			n.applyState()
			n.exportBreakers()
		case <-reconnect.C:
			n.goBackground(func() { n.reconnectFailed(ctx) })
		}
	}
}

// runPublish gossips this node's load whenever it changes, and turns token
// counts into rates once a second; it does no Raft or network I/O.
func (n *Node) runPublish(ctx context.Context) {
	publish := time.NewTicker(n.cfg.Tuning.LoadPublishInterval)
	defer publish.Stop()
	rates := time.NewTicker(time.Second)
	defer rates.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rates.C:
			n.updateTokenRates()
		case <-publish.C:
			n.publishLoad()
		}
	}
}

// reconnectInterval is how often the node tries to reach members that gossip
// declared dead.
const reconnectInterval = 5 * time.Second

// reconnectFailed tries to join members that gossip declared dead but that
// did not leave, as Serf's reconnector does: memberlist stops talking to a
// dead member after a while, so without this a partition longer than that
// would never heal by itself.
func (n *Node) reconnectFailed(ctx context.Context) {
	var addrs []string
	for _, m := range n.gossip.Members() {
		if m.State == gossip.StateDead && m.Name != n.cfg.NodeName {
			addrs = append(addrs, m.Addr)
		}
	}
	if len(addrs) == 0 {
		return
	}
	jctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if joined, err := n.gossip.Join(jctx, addrs); err == nil {
		n.logger.Info("reconnected to failed members", "contacted", joined)
	}
}

func (n *Node) reconcile(ctx context.Context) {
	if h := n.cfg.Tuning.ReconcileHook; h != nil {
		h()
	}
	members := n.gossip.Members()
	cm := make([]consensus.Member, 0, len(members))
	for _, m := range members {
		if m.Meta.RaftAddr == "" {
			continue
		}
		c := consensus.Member{ID: m.Name, RaftAddr: m.Meta.RaftAddr, HasState: m.Meta.RaftHasState}
		switch m.State {
		case gossip.StateAlive, gossip.StateSuspect:
			c.Status = consensus.MemberAlive
		case gossip.StateLeft:
			c.Status = consensus.MemberLeft
		default:
			c.Status, c.FailedSince = consensus.MemberFailed, m.StateChanged
		}
		cm = append(cm, c)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := n.store.Reconcile(rctx, cm); err != nil && ctx.Err() == nil {
		n.logger.Warn("raft reconcile", "err", err)
	}
	if has := n.store.HasExistingState(); has != n.currentMeta().RaftHasState {
		n.updateMeta(rctx, func(m *gossip.Meta) { m.RaftHasState = has })
	}
}

// updateMeta changes the advertised metadata; callers on different
// goroutines (cluster loop, cache start) are serialised.
func (n *Node) updateMeta(ctx context.Context, change func(*gossip.Meta)) {
	n.metaMu.Lock()
	defer n.metaMu.Unlock()
	m := n.meta
	change(&m)
	if err := n.gossip.UpdateMeta(ctx, m); err != nil {
		n.logger.Warn("update gossip meta", "err", err)
		return
	}
	n.meta = m
}

func (n *Node) currentMeta() gossip.Meta {
	n.metaMu.Lock()
	defer n.metaMu.Unlock()
	return n.meta
}

// updateTokenRates turns the completion token counts into per-second
// rates, once a second, for /metrics and the gossiped load.
func (n *Node) updateTokenRates() {
	now := time.Now()
	n.rateMu.Lock()
	defer n.rateMu.Unlock()
	if n.rates == nil {
		n.rates = map[string]tokenRate{}
	}
	for _, m := range n.sched.Models() {
		total := n.metrics.CompletionTokens(m)
		prev, ok := n.rates[m]
		r := tokenRate{total: total, at: now, perSec: prev.perSec}
		if ok && now.After(prev.at) {
			r.perSec = float64(total-prev.total) / now.Sub(prev.at).Seconds()
		}
		n.rates[m] = r
		n.metrics.TokenRate.WithLabelValues(m).Set(r.perSec)
	}
}

func (n *Node) tokenRate(model string) float64 {
	n.rateMu.Lock()
	defer n.rateMu.Unlock()
	return n.rates[model].perSec
}

type tokenRate struct {
	total  int64
	at     time.Time
	perSec float64
}

// seedLimits writes the configured default limits into Raft once, on the
// leader of a cluster that has no policy yet, so later changes (an API key,
// an endpoint limit) start from the configured defaults. After that the
// replicated policy wins; change it with the admin API.
func (n *Node) seedLimits(ctx context.Context) {
	if !n.store.IsLeader() || n.store.State().Limits != nil {
		return
	}
	cmd := consensus.SetLimitPolicy{Policy: consensus.LimitPolicy{DefaultRPM: n.cfg.RateLimit.RPM, AuthRequired: n.cfg.Auth.Required}, IfUnset: true}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := n.store.Apply(actx, cmd); err != nil && ctx.Err() == nil {
		n.logger.Warn("seed limit policy", "err", err)
	}
}

// applyState makes replicated settings take effect on this node.
func (n *Node) applyState() {
	st := n.store.State()
	for _, m := range n.cfg.Models {
		want := n.defaultBatching[m.Name]
		if s, ok := st.Batching[m.Name]; ok {
			want = s
		}
		cur, ok := n.sched.Settings(m.Name)
		if !ok || (cur.MaxSize == want.MaxSize && cur.FlushTimeout == want.FlushTimeout) {
			continue
		}
		if err := n.sched.SetBatching(m.Name, want.MaxSize, want.FlushTimeout); err != nil {
			n.logger.Warn("apply batching", "model", m.Name, "err", err)
			continue
		}
		n.logger.Info("batching changed", "model", m.Name, "max_size", want.MaxSize, "flush_timeout", want.FlushTimeout)
	}
}

func (n *Node) localLoad() gossip.Load {
	l := gossip.Load{Models: map[string]gossip.ModelLoad{}}
	if n.isDraining() {
		// An empty model list stops peers from routing here at once.
		return l
	}
	for name, ml := range n.sched.Load() {
		l.Models[name] = gossip.ModelLoad{QueueDepth: ml.QueueDepth, ActiveBatches: ml.ActiveBatches, Slots: ml.Slots, InFlight: ml.Running,
			TokensPerSec: n.tokenRate(name), MaxBatch: ml.MaxBatch, ServiceBase: roughly(ml.ServiceBase), ServicePerItem: roughly(ml.ServicePerItem),
			Prefix: string(n.prefixes.Summary(name))}
	}
	g := n.gpuCapacity()
	l.GPU = gossip.GPU{Count: g.Count, MemoryTotalMB: g.MemoryTotalMB, MemoryFreeMB: g.MemoryFreeMB, UtilizationPct: g.UtilizationPct}
	return l
}

func (n *Node) publishLoad() {
	n.loadMu.Lock()
	defer n.loadMu.Unlock()
	l := n.localLoad()
	if maps.Equal(l.Models, n.lastLoad.Models) && l.GPU == n.lastLoad.GPU {
		return
	}
	if err := n.gossip.SetLoad(l); err != nil {
		n.logger.Warn("publish load", "err", err)
		return
	}
	n.lastLoad = l
}

// candidates lists the nodes that can run model: this node from its own
// scheduler, peers from their gossiped load.
func (n *Node) candidates(model string) []router.Candidate {
	var out []router.Candidate
	st := n.store.State()
	now := time.Now()
	if !n.isDraining() {
		if l, ok := n.sched.ModelLoad(model); ok {
			out = append(out, router.Candidate{Node: n.cfg.NodeName, Model: model, Local: true, QueueDepth: l.QueueDepth, Running: l.Running, Slots: l.Slots,
				ActiveBatches: l.ActiveBatches, MaxBatch: l.MaxBatch, ServiceBase: l.ServiceBase, ServicePerItem: l.ServicePerItem, LocalPrefix: n.prefixes.Exact(model),
				// The node's own view: a trip here counts before Raft replicates it.
				Open: n.breakers.Open(model)})
		}
	}
	if n.gossip.Sampling() {
		return n.sampledCandidates(model, out, st)
	}
	for _, p := range n.gossip.ServingPeers(model) {
		out = append(out, peerCandidate(p.Member, model, p.Load, now, st))
	}
	return out
}

// peerCandidate is a peer serving model as its gossiped load l describes it.
func peerCandidate(m gossip.Member, model string, l gossip.ModelLoad, now time.Time, st *consensus.State) router.Candidate {
	return router.Candidate{Node: m.Name, Model: model, HTTPAddr: m.Meta.HTTPAddr, PeerAddr: m.Meta.RaftAddr, QueueDepth: l.QueueDepth, Running: l.InFlight, Slots: l.Slots,
		ActiveBatches: l.ActiveBatches, MaxBatch: l.MaxBatch, ServiceBase: l.ServiceBase, ServicePerItem: l.ServicePerItem, Prefix: router.PrefixSummary(l.Prefix),
		LoadAge: now.Sub(m.LoadUpdated), LoadAt: m.LoadUpdated, Open: st.Breaker(m.Name, model).State == consensus.BreakerOpen}
}

// servedAnywhere reports whether any live member serves model.
func (n *Node) servedAnywhere(model string) bool {
	return n.sched.Has(model) || n.gossip.Serves(model)
}

// clusterModels lists every model served by a live member.
func (n *Node) clusterModels() []string {
	set := map[string]bool{}
	for _, m := range n.sched.Models() {
		set[m] = true
	}
	for _, m := range n.gossip.Alive() {
		for name := range m.Load.Models {
			set[name] = true
		}
	}
	out := make([]string, 0, len(set))
	for m := range set {
		out = append(out, m)
	}
	return out
}

// joinAtStart joins the configured members, retrying with backoff until
// JoinTimeout.
func (n *Node) joinAtStart(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.JoinTimeout)
	defer cancel()
	joined, err := n.gossip.Join(ctx, n.cfg.Join)
	if err != nil {
		n.logger.Error("join failed; the node runs alone until joined (shoal node join)", "addrs", n.cfg.Join, "err", err)
		return
	}
	n.logger.Info("joined cluster", "contacted", joined)
}

func (n *Node) raftHealth() ops.Component {
	leader := n.store.LeaderID()
	c := ops.Component{Status: ops.StatusOK, Data: map[string]any{"leader": leader, "is_leader": n.store.IsLeader(), "applied_index": n.store.AppliedIndex()}}
	if leader == "" {
		c.Status, c.Detail = ops.StatusDegraded, "no raft leader: inference works, admin writes do not"
	}
	return c
}

func (n *Node) gossipHealth() ops.Component {
	alive := n.gossip.Alive()
	// loads_known: live members whose load this node holds (itself
	// included); a member without one is never a routing candidate here.
	known := 0
	for _, m := range alive {
		if m.Name == n.cfg.NodeName || !m.LoadUpdated.IsZero() {
			known++
		}
	}
	return ops.Component{Status: ops.StatusOK, Data: map[string]any{"members": len(n.gossip.Members()), "alive": len(alive),
		"loads_known": known, "sampling": n.gossip.Sampling()}}
}
