package consensus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// MemberStatus is a gossip member's liveness as the caller's membership
// layer (memberlist) reports it.
type MemberStatus int

// Member statuses.
const (
	// MemberAlive is a reachable member.
	MemberAlive MemberStatus = iota + 1
	// MemberLeft is a member that left gracefully.
	MemberLeft
	// MemberFailed is a member gossip declared dead.
	MemberFailed
)

// String returns "alive", "left" or "failed".
func (m MemberStatus) String() string {
	switch m {
	case MemberAlive:
		return "alive"
	case MemberLeft:
		return "left"
	case MemberFailed:
		return "failed"
	}
	return fmt.Sprintf("MemberStatus(%d)", int(m))
}

// Member is one gossip member, as Reconcile needs it.
type Member struct {
	// ID is the member's node name, which is its raft server ID.
	ID string
	// RaftAddr is the member's advertised raft address; members without one
	// do not take part in Raft.
	RaftAddr string
	// Status is the member's liveness.
	Status MemberStatus
	// FailedSince is when gossip declared the member failed.
	FailedSince time.Time
	// HasState is the member's Store.HasExistingState, which gossip should
	// carry: a member that already belongs to a cluster stops the nodes
	// around it from bootstrapping a new one.
	HasState bool
}

// Reconcile makes Raft follow gossip. On every server it records the
// members' raft addresses, through which raft dials (so a server back on a
// new address is reachable at once). On a server without Raft state it
// bootstraps the cluster once BootstrapExpect alive members without state
// see each other. On the leader it changes the configuration:
//   - an alive member that is not a server joins as a voter while there are
//     fewer than MaxVoters voters, else as a non-voter; a server whose
//     address changed is updated in place (see Join);
//   - a member that left is removed;
//   - a member failed for longer than DeadServerTimeout is removed, unless it
//     is a voter and removing it would leave fewer voters than a quorum of
//     max(BootstrapExpect, 1);
//   - alive non-voters are promoted while voter slots are free.
//
// Servers that gossip does not list are left alone, as is this server (see
// Leave). Elsewhere Reconcile changes nothing and returns nil. It returns the
// first error of the changes it attempted; the others are still attempted.
func (s *Store) Reconcile(ctx context.Context, members []Member) error {
	for _, m := range members {
		if m.Status == MemberAlive {
			s.addrs.set(m.ID, m.RaftAddr)
		}
	}
	s.memberMu.Lock()
	defer s.memberMu.Unlock()
	if !s.HasExistingState() {
		return s.maybeBootstrapLocked(members)
	}
	if !s.IsLeader() {
		return nil
	}
	return s.reconcileLocked(ctx, members, time.Now())
}

// maybeBootstrapLocked implements bootstrap_expect: once BootstrapExpect
// alive members with raft addresses, none of which has Raft state, are
// known, every one of them bootstraps with the same configuration built from
// the same member list. Members seeing different lists at that moment could
// form differing configurations, as in Consul; giving every founder the same
// BootstrapExpect and starting exactly that many founders avoids it.
func (s *Store) maybeBootstrapLocked(members []Member) error {
	if s.cfg.BootstrapExpect <= 1 || s.LeaderID() != "" {
		return nil
	}
	var alive []Member
	self := false
	for _, m := range members {
		if m.HasState && m.ID != s.cfg.NodeID {
			s.logger.Debug("not bootstrapping: a member already belongs to a cluster", "member", m.ID)
			return nil
		}
		if m.Status == MemberAlive && m.RaftAddr != "" {
			alive = append(alive, m)
			self = self || m.ID == s.cfg.NodeID
		}
	}
	if !self {
		alive = append(alive, Member{ID: s.cfg.NodeID, RaftAddr: s.advertise, Status: MemberAlive})
	}
	if len(alive) < s.cfg.BootstrapExpect {
		return nil
	}
	slices.SortFunc(alive, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	servers := make([]Server, len(alive))
	for i, m := range alive {
		servers[i] = Server{ID: m.ID, Addr: m.RaftAddr, Voter: i < s.cfg.MaxVoters}
	}
	return s.bootstrapLocked(servers)
}

// quorumFloor is the fewest voters dead-server removal may leave.
func (s *Store) quorumFloor() int { return max(s.cfg.BootstrapExpect, 1)/2 + 1 }

func (s *Store) reconcileLocked(ctx context.Context, members []Member, now time.Time) error {
	members = slices.Clone(members)
	slices.SortFunc(members, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	var errs []error
	// This server's own address changed (restarted on a new port): update
	// the configuration so that it survives the address book.
	if servers, err := s.raftServers(); err != nil {
		errs = append(errs, err)
	} else if self, ok := findServer(servers, s.cfg.NodeID); ok && string(self.Address) != s.advertise {
		if err := s.joinLocked(ctx, s.cfg.NodeID, s.advertise); err != nil {
			errs = append(errs, err)
		}
	}
	alive := map[string]bool{}
	for _, m := range members {
		if m.ID == s.cfg.NodeID {
			continue
		}
		switch m.Status {
		case MemberAlive:
			if m.RaftAddr == "" {
				continue
			}
			alive[m.ID] = true
			if err := s.joinLocked(ctx, m.ID, m.RaftAddr); err != nil {
				errs = append(errs, err)
			}
		case MemberLeft:
			if err := s.removeIfPresentLocked(ctx, m.ID, "left"); err != nil {
				errs = append(errs, err)
			}
		case MemberFailed:
			if m.FailedSince.IsZero() || now.Sub(m.FailedSince) < s.cfg.DeadServerTimeout {
				continue
			}
			if err := s.removeDeadLocked(ctx, m); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := s.promoteLocked(ctx, alive); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("reconcile membership: %w", errs[0])
	}
	return nil
}

func (s *Store) removeDeadLocked(ctx context.Context, m Member) error {
	servers, err := s.raftServers()
	if err != nil {
		return err
	}
	srv, ok := findServer(servers, m.ID)
	if !ok {
		return nil
	}
	if srv.Suffrage == raft.Voter && countVoters(servers)-1 < s.quorumFloor() {
		s.logger.Warn("keeping failed voter: removing it would leave fewer voters than a quorum of bootstrap_expect",
			"server", m.ID, "voters", countVoters(servers), "floor", s.quorumFloor())
		return nil
	}
	return s.removeIfPresentLocked(ctx, m.ID, fmt.Sprintf("failed since %s", m.FailedSince.Format(time.RFC3339)))
}

// promoteLocked makes alive non-voters voters while there are free slots,
// in ID order so that every leader picks the same ones.
func (s *Store) promoteLocked(ctx context.Context, alive map[string]bool) error {
	servers, err := s.raftServers()
	if err != nil {
		return err
	}
	voters := countVoters(servers)
	for _, srv := range servers {
		if voters >= s.cfg.MaxVoters {
			return nil
		}
		if srv.Suffrage == raft.Voter || !alive[string(srv.ID)] {
			continue
		}
		s.logger.Info("promoting non-voter", "server", srv.ID, "voters", voters)
		f := s.raft.AddVoter(srv.ID, srv.Address, 0, s.timeout(ctx))
		if err := waitFuture(ctx, f); err != nil {
			return fmt.Errorf("promote %s: %w", srv.ID, mapRaftErr(err))
		}
		voters++
	}
	return nil
}

// Join adds server id at addr to the configuration, as a voter while there
// are fewer than MaxVoters voters, else as a non-voter. It is idempotent, as
// rqlite's: the same id and address changes nothing; a known id at a new
// address is updated in place, keeping its suffrage (raft's AddVoter and
// AddNonvoter do this without a removal, so quorum never dips); another
// server at addr under a different id is removed first. Only the leader can
// join servers.
func (s *Store) Join(ctx context.Context, id, addr string) error {
	if id == "" || addr == "" {
		return fmt.Errorf("join %q at %q: id and address are required", id, addr)
	}
	if err := s.checkLeader(); err != nil {
		return fmt.Errorf("join %s at %s: %w", id, addr, err)
	}
	s.memberMu.Lock()
	defer s.memberMu.Unlock()
	s.addrs.set(id, addr)
	return s.joinLocked(ctx, id, addr)
}

func (s *Store) joinLocked(ctx context.Context, id, addr string) error {
	servers, err := s.raftServers()
	if err != nil {
		return err
	}
	sid, saddr := raft.ServerID(id), raft.ServerAddress(addr)
	for _, srv := range servers {
		switch {
		case srv.ID == sid && srv.Address == saddr:
			return nil
		case srv.ID == sid:
			s.logger.Info("updating server address", "server", id, "old", srv.Address, "new", addr)
			var f raft.IndexFuture
			if srv.Suffrage == raft.Voter {
				f = s.raft.AddVoter(sid, saddr, 0, s.timeout(ctx))
			} else {
				f = s.raft.AddNonvoter(sid, saddr, 0, s.timeout(ctx))
			}
			if err := waitFuture(ctx, f); err != nil {
				return fmt.Errorf("join %s at %s: update address: %w", id, addr, mapRaftErr(err))
			}
			return nil
		case srv.Address == saddr:
			if srv.ID == raft.ServerID(s.cfg.NodeID) {
				return fmt.Errorf("join %s at %s: address belongs to this server", id, addr)
			}
			s.logger.Info("removing server whose address a new id now holds", "server", srv.ID, "addr", addr, "new_id", id)
			if err := s.removeServer(ctx, srv.ID); err != nil {
				return fmt.Errorf("join %s at %s: %w", id, addr, err)
			}
		}
	}
	if countVoters(servers) < s.cfg.MaxVoters {
		s.logger.Info("adding voter", "server", id, "addr", addr)
		if err := waitFuture(ctx, s.raft.AddVoter(sid, saddr, 0, s.timeout(ctx))); err != nil {
			return fmt.Errorf("join %s at %s as voter: %w", id, addr, mapRaftErr(err))
		}
		return nil
	}
	s.logger.Info("adding non-voter", "server", id, "addr", addr)
	if err := waitFuture(ctx, s.raft.AddNonvoter(sid, saddr, 0, s.timeout(ctx))); err != nil {
		return fmt.Errorf("join %s at %s as non-voter: %w", id, addr, mapRaftErr(err))
	}
	return nil
}

// Remove removes server id from the configuration; an unknown id is a
// no-op. Only the leader removes servers, and it does not remove itself: it
// uses Leave, which hands leadership over first.
func (s *Store) Remove(ctx context.Context, id string) error {
	if err := s.checkLeader(); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if id == s.cfg.NodeID {
		return fmt.Errorf("remove %s: the leader cannot remove itself; use Leave", id)
	}
	s.memberMu.Lock()
	defer s.memberMu.Unlock()
	return s.removeIfPresentLocked(ctx, id, "requested")
}

func (s *Store) removeIfPresentLocked(ctx context.Context, id, reason string) error {
	servers, err := s.raftServers()
	if err != nil {
		return err
	}
	if _, ok := findServer(servers, id); !ok {
		return nil
	}
	s.logger.Info("removing server", "server", id, "reason", reason)
	return s.removeServer(ctx, raft.ServerID(id))
}

func (s *Store) removeServer(ctx context.Context, id raft.ServerID) error {
	if err := waitFuture(ctx, s.raft.RemoveServer(id, 0, s.timeout(ctx))); err != nil {
		return fmt.Errorf("remove %s: %w", id, mapRaftErr(err))
	}
	return nil
}

// Leave prepares this server to leave the cluster gracefully. A leader with
// other voters first hands leadership to one of them and waits until another
// leader is known, so the cluster does not wait out an election timeout. The
// new leader then removes this server when gossip reports it left
// (Reconcile); the caller leaves gossip after Leave returns, then calls
// Shutdown. The last voter simply stays: its data dir keeps the state.
func (s *Store) Leave(ctx context.Context) error {
	if !s.IsLeader() {
		return nil
	}
	servers, err := s.raftServers()
	if err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	others := 0
	for _, srv := range servers {
		if srv.Suffrage == raft.Voter && srv.ID != raft.ServerID(s.cfg.NodeID) {
			others++
		}
	}
	if others == 0 {
		s.logger.Info("leaving as the only voter; the cluster state stays in the data dir")
		return nil
	}
	s.logger.Info("transferring leadership before leaving")
	if err := waitFuture(ctx, s.raft.LeadershipTransfer()); err != nil {
		return fmt.Errorf("leave: transfer leadership: %w", mapRaftErr(err))
	}
	for {
		if id := s.LeaderID(); id != "" && id != s.cfg.NodeID {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("leave: wait for new leader: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// RunReconciler calls Reconcile with members() every interval and whenever
// this server becomes leader, until ctx ends. Errors are logged; the next
// round retries. Run at most one per Store. The caller may also call
// Reconcile directly on gossip events.
func (s *Store) RunReconciler(ctx context.Context, interval time.Duration, members func() []Member) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-t.C:
		case <-s.leaderGained:
		}
		rctx, cancel := context.WithTimeout(ctx, max(interval, s.cfg.ApplyTimeout))
		if err := s.Reconcile(rctx, members()); err != nil && !errors.Is(err, ErrShutdown) {
			s.logger.Warn("reconcile membership", "err", err)
		}
		cancel()
	}
}

// raftServers returns the latest configuration's servers.
func (s *Store) raftServers() ([]raft.Server, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", mapRaftErr(err))
	}
	servers := f.Configuration().Servers
	s.addrs.learn(servers)
	return servers, nil
}

func findServer(servers []raft.Server, id string) (raft.Server, bool) {
	for _, srv := range servers {
		if srv.ID == raft.ServerID(id) {
			return srv, true
		}
	}
	return raft.Server{}, false
}

func countVoters(servers []raft.Server) int {
	n := 0
	for _, srv := range servers {
		if srv.Suffrage == raft.Voter {
			n++
		}
	}
	return n
}
