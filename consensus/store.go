// Package consensus holds shoal's shared cluster state (batching settings,
// rate-limit policy, circuit breakers, cache settings) in a Raft-replicated
// FSM, using hashicorp/raft with a raft-boltdb log and stable store.
//
// Reads come from the local FSM without locks (Store.State); writes go
// through the leader (Store.Apply answers ErrNotLeader elsewhere and the
// caller forwards). Membership follows gossip: the caller hands Reconcile
// the member list, and the leader adds, promotes and removes Raft servers
// from it. See DESIGN.md.
package consensus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultMaxVoters is the number of voters; further servers are non-voters.
	DefaultMaxVoters = 5
	// DefaultDeadServerTimeout is how long a failed server stays in the
	// configuration before Reconcile removes it.
	DefaultDeadServerTimeout = 2 * time.Minute
	// DefaultApplyTimeout bounds one write when the context has no deadline.
	DefaultApplyTimeout = 10 * time.Second
	// DefaultHeartbeatTimeout is half raft's 1s: a follower campaigns 0.5-1s after the
	// leader's last contact instead of 1-2s, which keeps failover under 2s including the
	// election and a client's retry (measured: BenchmarkLeaderFailoverWrite). The leader
	// sends heartbeats every HeartbeatTimeout/10 (50ms), ample on a LAN.
	DefaultHeartbeatTimeout = 500 * time.Millisecond
	// DefaultElectionTimeout is a candidate's timeout, matched to the heartbeat timeout.
	DefaultElectionTimeout = 500 * time.Millisecond
	// DefaultLeaderLeaseTimeout is how long a leader without quorum contact keeps leading.
	DefaultLeaderLeaseTimeout = 250 * time.Millisecond
	// DefaultSnapshotThreshold is the number of log entries between
	// snapshots; the state is small, so snapshots are cheap and frequent.
	DefaultSnapshotThreshold = 1024
	// DefaultSnapshotInterval is how often raft checks whether to snapshot.
	DefaultSnapshotInterval = 30 * time.Second
	// DefaultTrailingLogs is the number of entries kept after a snapshot so
	// a briefly lagging follower catches up without a snapshot transfer.
	DefaultTrailingLogs = 1024
)

// Config configures a Store. Zero values take the defaults noted per field.
type Config struct {
	// NodeID is the raft server ID; shoal uses the node name. Required.
	NodeID string
	// DataDir holds raft.db (log and stable store) and snapshots/. Required.
	DataDir string
	// Listener accepts raft connections. Required. The Store owns it from New
	// on and closes it on Shutdown, or at once if New fails.
	Listener net.Listener
	// Secret, when set, is the cluster's shared secret: Raft connections
	// become mutual TLS with a key derived from it, so only servers holding
	// it can connect (see clusterTLS). Empty: plain TCP.
	Secret []byte
	// Advertise is the host:port other servers dial; default Listener.Addr().
	// Required when the listener is bound to an unspecified address.
	Advertise string
	// BootstrapExpect is the number of servers that form a new cluster
	// together (Consul's bootstrap_expect). 0: never bootstrap, only join an
	// existing cluster. 1: bootstrap a cluster of this server alone at New
	// (dev mode). N>1: Reconcile bootstraps once N alive members without
	// Raft state see each other, and never again. It also sets the voter
	// floor that dead-server removal respects.
	BootstrapExpect int
	// MaxVoters is the number of voters; further servers join as non-voters
	// and are promoted when a voter goes. Default DefaultMaxVoters.
	MaxVoters int
	// DeadServerTimeout is how long a member must have been failed before
	// Reconcile removes it. Default DefaultDeadServerTimeout.
	DeadServerTimeout time.Duration

	// HeartbeatTimeout is raft's follower timeout without leader contact.
	// Zero: DefaultHeartbeatTimeout (500ms; raft's own default is 1s).
	HeartbeatTimeout time.Duration
	// ElectionTimeout is raft's candidate timeout. Zero: DefaultElectionTimeout (500ms).
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader stays leader without quorum
	// contact; at most HeartbeatTimeout. Zero: DefaultLeaderLeaseTimeout (250ms).
	LeaderLeaseTimeout time.Duration
	// CommitTimeout bounds the delay of a commit with no new entries to
	// batch. Zero: 50ms.
	CommitTimeout time.Duration
	// SnapshotThreshold is the log growth that triggers a snapshot.
	// Zero: DefaultSnapshotThreshold.
	SnapshotThreshold uint64
	// SnapshotInterval is how often raft checks SnapshotThreshold.
	// Zero: DefaultSnapshotInterval.
	SnapshotInterval time.Duration
	// TrailingLogs is the log kept after a snapshot. Zero: DefaultTrailingLogs.
	TrailingLogs uint64
	// ApplyTimeout bounds a write or membership change whose context has no
	// earlier deadline. Zero: DefaultApplyTimeout.
	ApplyTimeout time.Duration

	// Logger receives the store's and raft's logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.MaxVoters == 0 {
		c.MaxVoters = DefaultMaxVoters
	}
	if c.DeadServerTimeout == 0 {
		c.DeadServerTimeout = DefaultDeadServerTimeout
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = DefaultApplyTimeout
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = DefaultElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = min(DefaultLeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = DefaultSnapshotInterval
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = DefaultTrailingLogs
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("node id is required")
	case c.DataDir == "":
		return errors.New("data dir is required")
	case c.Listener == nil:
		return errors.New("listener is required")
	case c.BootstrapExpect < 0:
		return errors.New("bootstrap_expect must be >= 0")
	case c.MaxVoters < 1:
		return errors.New("max_voters must be >= 1")
	case c.DeadServerTimeout < 0:
		return errors.New("dead_server_timeout must be >= 0")
	}
	return nil
}

func (c *Config) raftConfig(logger *hclogAdapter) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.NodeID)
	rc.Logger = logger
	rc.NoLegacyTelemetry = true
	if c.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = c.HeartbeatTimeout
	}
	if c.ElectionTimeout > 0 {
		rc.ElectionTimeout = c.ElectionTimeout
	}
	if c.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = c.LeaderLeaseTimeout
	}
	if c.CommitTimeout > 0 {
		rc.CommitTimeout = c.CommitTimeout
	}
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.SnapshotInterval = c.SnapshotInterval
	rc.TrailingLogs = c.TrailingLogs
	return rc
}

// Server is one entry of the Raft configuration.
type Server struct {
	// ID is the raft server ID (the node name).
	ID string `json:"id"`
	// Addr is the raft address the leader replicates to.
	Addr string `json:"addr"`
	// Voter is false for non-voters, which replicate but do not vote.
	Voter bool `json:"voter"`
}

// Store is a running Raft server with shoal's FSM. All methods are safe for
// concurrent use.
type Store struct {
	cfg       Config
	logger    *slog.Logger
	raft      *raft.Raft
	fsm       *fsm
	bolt      *raftboltdb.BoltStore
	trans     *raft.NetworkTransport
	stream    *streamLayer
	addrs     *addressBook
	advertise string
	hadState  bool
	// provisional is the state described by the local log at start, served
	// until the FSM catches up with it (see loadProvisional).
	provisional atomic.Pointer[State]

	// bootstrapped is set once this process bootstrapped the cluster.
	bootstrapped atomic.Bool
	// memberMu serialises bootstrap and membership changes.
	memberMu sync.Mutex

	subMu sync.Mutex
	subs  map[*subscription]struct{}

	leaderCh chan bool
	// leaderGained is signalled (coalesced) whenever this node becomes leader.
	leaderGained chan struct{}

	done         chan struct{}
	shutdownOnce sync.Once
	shutdownErr  error
	bg           sync.WaitGroup
}

// New opens the stores under cfg.DataDir, starts the transport on
// cfg.Listener and starts raft. With BootstrapExpect 1 and no existing state
// it bootstraps a one-server cluster.
func New(cfg Config) (_ *Store, err error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		if cfg.Listener != nil {
			cfg.Listener.Close()
		}
		return nil, fmt.Errorf("consensus config: %w", err)
	}
	s := &Store{
		cfg:          cfg,
		logger:       cfg.Logger.With("component", "consensus"),
		addrs:        newAddressBook(),
		subs:         map[*subscription]struct{}{},
		leaderCh:     make(chan bool, 16),
		leaderGained: make(chan struct{}, 1),
		done:         make(chan struct{}),
	}
	// On failure close whatever was opened, the listener included.
	defer func() {
		if err == nil {
			return
		}
		if s.raft != nil {
			_ = s.raft.Shutdown().Error() // waits for raft's goroutines
		}
		if s.trans != nil {
			s.trans.Close()
			s.stream.waitInbound(5 * time.Second)
		} else {
			cfg.Listener.Close()
		}
		if s.bolt != nil {
			s.bolt.Close()
		}
	}()

	advertise, err := advertiseAddr(cfg)
	if err != nil {
		return nil, err
	}
	s.advertise = advertise.String()
	s.addrs.set(cfg.NodeID, s.advertise)

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", cfg.DataDir, err)
	}
	dbPath := filepath.Join(cfg.DataDir, "raft.db")
	s.bolt, err = raftboltdb.New(raftboltdb.Options{
		Path: dbPath,
		// Another process holding the file blocks bolt forever without this.
		BoltOptions: &bbolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true},
	})
	if err != nil {
		return nil, fmt.Errorf("open raft store %s: %w", dbPath, err)
	}
	hlog := newHCLogAdapter(s.logger, "raft")
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("open snapshot store in %s: %w", cfg.DataDir, err)
	}
	logs, err := raft.NewLogCache(512, s.bolt)
	if err != nil {
		return nil, fmt.Errorf("raft log cache: %w", err)
	}
	s.hadState, err = raft.HasExistingState(logs, s.bolt, snaps)
	if err != nil {
		return nil, fmt.Errorf("check existing raft state: %w", err)
	}

	var tlsConfig *tls.Config
	if len(cfg.Secret) > 0 {
		if tlsConfig, err = clusterTLS(cfg.Secret); err != nil {
			return nil, err
		}
	}
	s.stream = newStreamLayer(cfg.Listener, advertise, tlsConfig)
	s.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: s.addrs,
		Logger:                hlog.Named("transport"),
		Stream:                s.stream,
		MaxPool:               3,
		Timeout:               10 * time.Second,
	})

	s.fsm = newFSM(s.logger.With("sub", "fsm"), s.notifySubscribers)
	rc := cfg.raftConfig(hlog)
	rc.NotifyCh = s.leaderCh
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft config: %w", err)
	}
	s.raft, err = raft.NewRaft(rc, s.fsm, logs, s.bolt, snaps, s.trans)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	if f := s.raft.GetConfiguration(); f.Error() == nil {
		s.addrs.learn(f.Configuration().Servers)
	}
	s.loadProvisional(logs)

	s.logger.Info("raft started", "advertise", s.advertise, "existing_state", s.hadState,
		"bootstrap_expect", cfg.BootstrapExpect)
	if cfg.BootstrapExpect == 1 && !s.hadState {
		if err := s.Bootstrap([]Server{{ID: cfg.NodeID, Addr: s.advertise, Voter: true}}); err != nil {
			return nil, err
		}
	}
	// Started last so that a failed New leaves no goroutine behind; raft
	// buffers its notifications in leaderCh meanwhile.
	s.bg.Add(1)
	go s.watchLeadership()
	return s, nil
}

func advertiseAddr(cfg Config) (net.Addr, error) {
	if cfg.Advertise == "" {
		addr, ok := cfg.Listener.Addr().(*net.TCPAddr)
		if !ok {
			return nil, fmt.Errorf("raft listener %s is not TCP", cfg.Listener.Addr())
		}
		if addr.IP == nil || addr.IP.IsUnspecified() {
			return nil, fmt.Errorf("raft listener %s is not advertisable: set Advertise", addr)
		}
		return addr, nil
	}
	addr, err := net.ResolveTCPAddr("tcp", cfg.Advertise)
	if err != nil {
		return nil, fmt.Errorf("raft advertise address %q: %w", cfg.Advertise, err)
	}
	if addr.IP == nil || addr.IP.IsUnspecified() || addr.Port == 0 {
		return nil, fmt.Errorf("raft advertise address %q: need a specific host and port", cfg.Advertise)
	}
	return addr, nil
}

// watchLeadership turns raft's leadership notifications into the coalesced
// leaderGained signal and logs them.
func (s *Store) watchLeadership() {
	defer s.bg.Done()
	for {
		select {
		case <-s.done:
			return
		case leader := <-s.leaderCh:
			s.logger.Info("leadership changed", "leader", leader)
			if leader {
				select {
				case s.leaderGained <- struct{}{}:
				default:
				}
			}
		}
	}
}

// ID returns this server's raft ID.
func (s *Store) ID() string { return s.cfg.NodeID }

// Addr returns the raft address this server advertises.
func (s *Store) Addr() string { return s.advertise }

// HasExistingState reports whether this server holds Raft state: it had
// state when opened, has bootstrapped, or has received log entries from a
// leader. Gossip should advertise it so that nodes with bootstrap_expect
// never bootstrap a second cluster beside a formed one (Member.HasState).
func (s *Store) HasExistingState() bool {
	return s.hadState || s.bootstrapped.Load() || s.raft.LastIndex() > 0
}

// Bootstrap forms a new cluster with servers as its first configuration.
// Every founding server must call it with the same list (order does not
// matter); it must include this server. It is a no-op returning nil when this
// server already has Raft state, so calling it on every start is safe and a
// cluster is never bootstrapped twice.
func (s *Store) Bootstrap(servers []Server) error {
	s.memberMu.Lock()
	defer s.memberMu.Unlock()
	return s.bootstrapLocked(servers)
}

func (s *Store) bootstrapLocked(servers []Server) error {
	if s.HasExistingState() {
		return nil
	}
	cfg := raft.Configuration{}
	self, voters := false, 0
	seen := map[string]bool{}
	for _, srv := range servers {
		if srv.ID == "" || srv.Addr == "" {
			return fmt.Errorf("bootstrap: server %q has no id or address", srv.ID)
		}
		if seen["id:"+srv.ID] || seen["addr:"+srv.Addr] {
			return fmt.Errorf("bootstrap: duplicate server %s at %s", srv.ID, srv.Addr)
		}
		seen["id:"+srv.ID], seen["addr:"+srv.Addr] = true, true
		suffrage := raft.Nonvoter
		if srv.Voter {
			suffrage = raft.Voter
			voters++
		}
		self = self || srv.ID == s.cfg.NodeID
		cfg.Servers = append(cfg.Servers, raft.Server{Suffrage: suffrage, ID: raft.ServerID(srv.ID), Address: raft.ServerAddress(srv.Addr)})
		s.addrs.set(srv.ID, srv.Addr)
	}
	if !self {
		return fmt.Errorf("bootstrap: server list does not include this server %q", s.cfg.NodeID)
	}
	if voters == 0 {
		return errors.New("bootstrap: server list has no voter")
	}
	err := s.raft.BootstrapCluster(cfg).Error()
	if errors.Is(err, raft.ErrCantBootstrap) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bootstrap %d servers: %w", len(servers), mapRaftErr(err))
	}
	s.bootstrapped.Store(true)
	s.logger.Info("bootstrapped cluster", "servers", len(cfg.Servers), "voters", voters)
	return nil
}

// IsLeader reports whether this server is the leader now.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// LeaderID returns the current leader's ID, or "" when none is known.
func (s *Store) LeaderID() string {
	_, id := s.raft.LeaderWithID()
	return string(id)
}

// LeaderAddr returns the current leader's raft address, or "".
func (s *Store) LeaderAddr() string {
	addr, _ := s.raft.LeaderWithID()
	return string(addr)
}

// WaitLeader blocks until some leader is known to this server or ctx ends;
// then it returns an error matching both ErrNoLeader and ctx.Err().
func (s *Store) WaitLeader(ctx context.Context) error {
	for {
		if s.LeaderID() != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for leader: %w: %w", ErrNoLeader, ctx.Err())
		case <-s.done:
			return ErrShutdown
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Configuration returns the latest Raft configuration (possibly not yet
// committed).
func (s *Store) Configuration() ([]Server, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", mapRaftErr(err))
	}
	cfg := f.Configuration()
	out := make([]Server, 0, len(cfg.Servers))
	for _, srv := range cfg.Servers {
		out = append(out, Server{ID: string(srv.ID), Addr: string(srv.Address), Voter: srv.Suffrage == raft.Voter})
	}
	return out, nil
}

// Apply validates cmd, proposes it and waits until it is committed and
// applied on this (leader) server. It returns the command's log index, which
// followers reach in State().Index (see WaitApplied). A domain error from the
// FSM (such as ErrBreakerConflict) is returned as the error. On a follower it
// returns ErrNotLeader, or ErrNoLeader when no leader is known, without
// proposing anything. ErrLeadershipLost, or ctx ending first, leaves the
// outcome unknown: the write may still commit.
func (s *Store) Apply(ctx context.Context, cmd Command) (uint64, error) {
	if err := cmd.Validate(); err != nil {
		return 0, err
	}
	data, err := EncodeCommand(cmd)
	if err != nil {
		return 0, err
	}
	if err := s.checkLeader(); err != nil {
		return 0, err
	}
	f := s.raft.Apply(data, s.timeout(ctx))
	if err := waitFuture(ctx, f); err != nil {
		return 0, fmt.Errorf("apply command %d: %w", cmd.Type(), mapRaftErr(err))
	}
	if err, ok := f.Response().(error); ok {
		return f.Index(), err
	}
	return f.Index(), nil
}

// checkLeader returns nil on the leader, else ErrNotLeader or ErrNoLeader.
func (s *Store) checkLeader() error {
	select {
	case <-s.done:
		return ErrShutdown
	default:
	}
	if s.IsLeader() {
		return nil
	}
	if id := s.LeaderID(); id != "" && id != s.cfg.NodeID {
		return fmt.Errorf("leader is %s at %s: %w", id, s.LeaderAddr(), ErrNotLeader)
	}
	return ErrNoLeader
}

// State returns the current shared state of this server. It is immutable
// and must not be modified (see State). It reflects every command this
// server has applied, which on a follower may trail the leader. Right after
// a restart, until this server's FSM has caught up with its own log, it is
// the state its local log describes (see loadProvisional), so a restarted
// node keeps its policies even before (or without) a quorum.
func (s *Store) State() *State {
	cur := s.fsm.current()
	if p := s.provisional.Load(); p != nil {
		if cur.Index < p.Index {
			return p
		}
		s.provisional.CompareAndSwap(p, nil)
	}
	return cur
}

// loadProvisional computes the state this server's log describes. Raft
// restores the last snapshot at start but applies later entries only once a
// leader has committed an entry of its own term, which after a full restart
// takes an election and without a quorum never happens. Until then State
// serves the snapshot plus every command in the local log. Entries past the
// commit point may be among them and may later be truncated; they are
// shown only until the FSM reaches that index, then the FSM's state is.
func (s *Store) loadProvisional(logs raft.LogStore) {
	base := s.fsm.current()
	first, err := logs.FirstIndex()
	if err != nil {
		s.logger.Warn("provisional state: read first index", "err", err)
		return
	}
	last, err := logs.LastIndex()
	if err != nil {
		s.logger.Warn("provisional state: read last index", "err", err)
		return
	}
	scratch := newFSM(s.logger, func() {})
	scratch.state.Store(base)
	for i := max(first, base.Index+1); i <= last && i > 0; i++ {
		var entry raft.Log
		if err := logs.GetLog(i, &entry); err != nil {
			s.logger.Warn("provisional state: read log", "index", i, "err", err)
			return
		}
		if entry.Type != raft.LogCommand {
			continue
		}
		if _, err := scratch.tryApplyEntry(entry.Index, entry.Data); err != nil {
			s.logger.Warn("provisional state: undecodable entry; serving the snapshot only", "index", i, "err", err)
			return
		}
	}
	if p := scratch.current(); p.Index > s.fsm.current().Index {
		s.provisional.Store(p)
		s.logger.Info("serving state from the local log until the FSM catches up", "index", p.Index)
	}
}

// ConsistentState returns the state after every write committed before the
// call: on the leader it commits a barrier through a quorum first, so the
// answer is linearizable. Followers return ErrNotLeader or ErrNoLeader.
func (s *Store) ConsistentState(ctx context.Context) (*State, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if err := waitFuture(ctx, s.raft.Barrier(s.timeout(ctx))); err != nil {
		return nil, fmt.Errorf("read barrier: %w", mapRaftErr(err))
	}
	return s.fsm.current(), nil
}

// WaitApplied blocks until this server's state reflects the command at log
// index (State().Index >= index) or ctx ends. A node that forwarded a write
// to the leader uses it to read its own write locally.
func (s *Store) WaitApplied(ctx context.Context, index uint64) error {
	sub, cancel := s.Subscribe()
	defer cancel()
	for {
		if s.fsm.current().Index >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for index %d (at %d): %w", index, s.fsm.current().Index, ctx.Err())
		case <-s.done:
			return ErrShutdown
		case <-sub:
		case <-time.After(50 * time.Millisecond):
			// Failed commands and skipped entries advance Index without a
			// notification, so poll as well.
		}
	}
}

// Subscribe returns a channel that receives a value after the state changes
// (a command applied or a snapshot restored). Notifications never block the
// FSM: they are coalesced, so one receive may stand for several changes and
// the receiver should read State() afresh. cancel releases the subscription.
func (s *Store) Subscribe() (changes <-chan struct{}, cancel func()) {
	sub := &subscription{ch: make(chan struct{}, 1)}
	s.subMu.Lock()
	s.subs[sub] = struct{}{}
	s.subMu.Unlock()
	return sub.ch, func() {
		s.subMu.Lock()
		delete(s.subs, sub)
		s.subMu.Unlock()
	}
}

type subscription struct{ ch chan struct{} }

func (s *Store) notifySubscribers() {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	for sub := range s.subs {
		select {
		case sub.ch <- struct{}{}:
		default:
		}
	}
}

// Snapshot forces a Raft snapshot now and compacts the log behind it.
func (s *Store) Snapshot() error {
	if err := s.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("snapshot: %w", mapRaftErr(err))
	}
	return nil
}

// Stats returns raft's statistics (state, term, indexes, configuration,
// last contact, ...) plus node_id, advertise and fsm_index.
func (s *Store) Stats() map[string]string {
	st := s.raft.Stats()
	st["node_id"] = s.cfg.NodeID
	st["advertise"] = s.advertise
	st["fsm_index"] = strconv.FormatUint(s.fsm.current().Index, 10)
	return st
}

// LastIndex returns the index of the last entry in this server's log.
func (s *Store) LastIndex() uint64 { return s.raft.LastIndex() }

// AppliedIndex returns the index of the last entry applied to the FSM.
func (s *Store) AppliedIndex() uint64 { return s.raft.AppliedIndex() }

// Shutdown stops raft, closes the transport (and the listener) and the
// stores. It does not leave the cluster (see Leave). It is idempotent.
func (s *Store) Shutdown() error {
	s.shutdownOnce.Do(func() {
		close(s.done)
		// Raft's shutdown waits for its replication goroutines, which may be waiting on RPCs
		// to peers that are already gone (up to the transport's 10s timeout each). Cutting
		// the connections first makes those RPCs fail at once; nothing is sent after this.
		_ = s.stream.Close()
		if err := s.raft.Shutdown().Error(); err != nil {
			s.shutdownErr = fmt.Errorf("shutdown raft: %w", err)
		}
		// raft closes the transport; closing again is harmless and covers
		// a shutdown raft had already begun. (The stream layer, closed above, only
		// closes what it still tracks.)
		s.trans.Close()
		s.bg.Wait()
		if !s.stream.waitInbound(5 * time.Second) {
			s.logger.Warn("raft connection handlers still running at shutdown")
		}
		if err := s.bolt.Close(); err != nil && s.shutdownErr == nil {
			s.shutdownErr = fmt.Errorf("close raft store: %w", err)
		}
		s.logger.Info("raft stopped")
	})
	return s.shutdownErr
}

// timeout is the raft enqueue timeout for a call under ctx.
func (s *Store) timeout(ctx context.Context) time.Duration {
	t := s.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		if until := time.Until(dl); until < t {
			t = max(until, time.Millisecond)
		}
	}
	return t
}

// waitFuture waits for f or ctx. On ctx's end the future keeps running in
// raft: the write may still commit.
func waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mapRaftErr turns raft's errors into this package's sentinels.
func mapRaftErr(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return fmt.Errorf("%w (%w)", ErrNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipTransferInProgress):
		// Nothing was proposed; a new leader appears shortly.
		return fmt.Errorf("%w (%w)", ErrNoLeader, err)
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w (%w)", ErrLeadershipLost, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return err
}
