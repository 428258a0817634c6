package gossip

import (
	"bytes"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate implements memberlist's Delegate, EventDelegate and
// ConflictDelegate for a Gossip, keeping those methods off its public API.
//
// memberlist calls the event methods with its node lock held and NotifyMsg
// from its packet loop, so nothing here blocks or calls back into
// memberlist: state changes happen under g.mu and events are sent without
// blocking.
type delegate struct {
	g *Gossip
}

// NodeMeta returns the encoded Meta; New and UpdateMeta guarantee it fits.
func (d *delegate) NodeMeta(limit int) []byte {
	enc := d.g.meta.Load().enc
	if len(enc) > limit {
		// Unreachable with memberlist's fixed limit; never hand memberlist
		// something it would panic on.
		d.g.log.Error("node metadata over memberlist limit; sending none", "size", len(enc), "limit", limit)
		return nil
	}
	return enc
}

// NotifyMsg handles a user message: a load report or a leave intent.
func (d *delegate) NotifyMsg(b []byte) {
	g := d.g
	if len(b) == 0 || len(b) > maxMessageSize {
		g.stats.malformed.Add(1)
		return
	}
	switch b[0] {
	case msgLoad:
		e, err := decodeLoadMsg(b[1:])
		if err != nil {
			g.stats.malformed.Add(1)
			g.log.Debug("drop load message", "err", err)
			return
		}
		g.applyLoad(e, time.Now())
	case msgLeave:
		name, err := decodeLeaveMsg(b[1:])
		if err != nil {
			g.stats.malformed.Add(1)
			g.log.Debug("drop leave message", "err", err)
			return
		}
		g.markLeaving(name)
	case msgPull:
		name, err := decodeLeaveMsg(b[1:])
		if err != nil {
			g.stats.malformed.Add(1)
			g.log.Debug("drop load pull", "err", err)
			return
		}
		g.answerPull(name)
	default:
		// A newer node's message type; ignore it.
		g.stats.malformed.Add(1)
		g.log.Debug("drop unknown user message", "type", b[0])
	}
}

// GetBroadcasts returns nothing: loads go directly to each member.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState returns every load this node knows, for push-pull.
func (d *delegate) LocalState(join bool) []byte { return d.g.localState(time.Now()) }

// MergeRemoteState applies a peer's loads, keeping the newer Seq of each.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	g := d.g
	entries, err := decodeState(buf)
	if err != nil {
		g.stats.malformed.Add(1)
		g.log.Warn("drop push-pull state", "err", err)
		return
	}
	now := time.Now()
	for _, e := range entries {
		g.applyLoad(e, now)
	}
}

// NotifyJoin records a member that joined or came back.
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	g := d.g
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if n.Name == g.cfg.Name {
		g.self.addr = n.Address()
		return
	}
	p := g.peerLocked(n.Name, true)
	if !p.known {
		p.known = true
		g.strangers--
	} else if (p.state == StateDead || p.state == StateLeft) && p.loadUpdated.Before(p.stateChanged) {
		// A new incarnation: forget the old one's load so its reports are
		// not compared with stale sequence numbers.
		p.load, p.loadUpdated, p.loadInterval = Load{}, time.Time{}, 0
	}
	g.setNodeLocked(p, n)
	p.state = StateAlive
	p.stateChanged = now
	p.joinedAt = now
	p.leaving = false
	g.log.Info("member joined", "member", p.name, "addr", p.node.Address())
	g.emitLocked(EventJoin, p)
	// Send it our load now rather than at the next refresh.
	g.poke()
}

// NotifyLeave records a member that left or failed; memberlist does not
// say which, so a leave intent received earlier decides.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	g := d.g
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if n.Name == g.cfg.Name {
		return
	}
	p := g.peerLocked(n.Name, true)
	if !p.known {
		p.known = true
		g.strangers--
		g.setNodeLocked(p, n)
	}
	p.stateChanged = now
	if p.leaving {
		p.state = StateLeft
		g.log.Info("member left", "member", p.name)
		g.emitLocked(EventLeft, p)
		return
	}
	p.state = StateDead
	g.log.Warn("member failed", "member", p.name)
	g.emitLocked(EventFailed, p)
}

// NotifyUpdate records a member's new metadata or address.
func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	g := d.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if n.Name == g.cfg.Name {
		g.self.addr = n.Address()
		return
	}
	p := g.peerLocked(n.Name, true)
	g.setNodeLocked(p, n)
	if !p.known {
		// memberlist only updates nodes it knows; treat as a join.
		p.known = true
		g.strangers--
		p.state, p.stateChanged, p.joinedAt = StateAlive, time.Now(), time.Now()
		g.emitLocked(EventJoin, p)
		return
	}
	g.emitLocked(EventUpdate, p)
}

// NotifyConflict logs two nodes claiming one name; memberlist keeps the
// first.
func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	d.g.log.Error("node name conflict: two nodes use one name", "name", existing.Name,
		"existing_addr", existing.Address(), "other_addr", other.Address())
}

// peerLocked returns the named peer, creating it if needed. Peers only
// heard of through load reports (strangers) are capped; it returns nil for
// one over the cap. Members memberlist reports are always created.
func (g *Gossip) peerLocked(name string, fromMemberlist bool) *peer {
	if p, ok := g.peers[name]; ok {
		return p
	}
	if !fromMemberlist && g.strangers >= maxStrangers {
		return nil
	}
	p := &peer{name: name}
	g.peers[name] = p
	g.strangers++
	return p
}

// setNodeLocked stores a copy of n (memberlist reuses its Node) and decodes
// its metadata.
func (g *Gossip) setNodeLocked(p *peer, n *memberlist.Node) {
	p.node = *n
	p.node.Meta = bytes.Clone(n.Meta)
	m, err := decodeMeta(n.Meta)
	if err != nil {
		g.stats.malformed.Add(1)
		g.log.Warn("undecodable member metadata", "member", n.Name, "err", err)
	}
	p.meta = m
}

// applyLoad stores a load report if it is newer than the one held. A
// report with the same Seq is a refresh: it only renews LoadUpdated.
func (g *Gossip) applyLoad(e loadEntry, now time.Time) {
	if e.Name == g.cfg.Name {
		return // our own load, echoed back by push-pull
	}
	at := now.Add(-e.Age)
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.peerLocked(e.Name, false)
	if p == nil {
		g.stats.loadsStale.Add(1)
		return
	}
	switch {
	case !p.loadUpdated.IsZero() && e.Load.Seq < p.load.Seq:
		g.stats.loadsStale.Add(1)
		return
	case !p.loadUpdated.IsZero() && e.Load.Seq == p.load.Seq:
		if at.After(p.loadUpdated) {
			p.loadUpdated = at
		}
		p.loadInterval = e.Interval
		g.reviveLocked(p, now)
		g.notifyWaitersLocked(p.name)
		return
	}
	g.stats.loadsReceived.Add(1)
	g.notifyWaitersLocked(p.name)
	p.load = e.Load
	p.loadUpdated = at
	p.loadInterval = e.Interval
	if !p.known {
		return
	}
	g.reviveLocked(p, now)
	if p.state == StateAlive {
		g.emitLocked(EventLoad, p)
	}
}

// reviveLocked returns a Suspect member to Alive once its load is fresh.
func (g *Gossip) reviveLocked(p *peer, now time.Time) {
	if p.known && p.state == StateSuspect && now.Sub(p.loadUpdated) < g.suspectAfter(p) {
		p.state = StateAlive
		p.stateChanged = now
		g.log.Info("member load reports resumed", "member", p.name)
		g.emitLocked(EventUpdate, p)
	}
}

// markLeaving records a leave intent. If the death was seen first, the
// member becomes Left now.
func (g *Gossip) markLeaving(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p, ok := g.peers[name]
	if !ok || !p.known {
		return
	}
	p.leaving = true
	if p.state == StateDead {
		p.state = StateLeft
		p.stateChanged = time.Now()
		g.log.Info("member left", "member", p.name)
		g.emitLocked(EventLeft, p)
	}
}

// localState encodes this node's load and every live peer's, with ages,
// for push-pull.
func (g *Gossip) localState(now time.Time) []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	entries := make([]loadEntry, 0, len(g.peers)+1)
	if !g.left {
		entries = append(entries, loadEntry{Name: g.cfg.Name, Load: g.self.load, Interval: g.cfg.LoadInterval})
	}
	for _, p := range g.peers {
		if len(entries) >= maxStateEntries {
			break
		}
		if !p.known || p.loadUpdated.IsZero() || !p.state.Listed() {
			continue
		}
		entries = append(entries, loadEntry{Name: p.name, Load: p.load, Interval: p.loadInterval, Age: now.Sub(p.loadUpdated)})
	}
	b := encodeState(entries)
	for len(b) > maxMessageSize && len(entries) > 1 {
		// Only reachable with thousands of huge reports: drop peers'
		// entries (they arrive directly anyway) rather than send a state
		// every receiver would reject.
		entries = entries[:len(entries)/2]
		b = encodeState(entries)
	}
	return b
}

// target is a member to send load to.
type target struct {
	name  string
	node  memberlist.Node
	peer  *peer
	alive bool // set by Leave only
}

// targetsLocked lists the members that should get our load.
func (g *Gossip) targetsLocked() []target {
	out := make([]target, 0, len(g.peers))
	for _, p := range g.peers {
		if p.known && p.state.Listed() {
			out = append(out, target{name: p.name, node: p.node, peer: p})
		}
	}
	return out
}

// pushLoop sends the local load to every member on each change (at most
// once per MinPushInterval) and every LoadInterval.
func (g *Gossip) pushLoop() {
	defer g.wg.Done()
	var last time.Time
	next := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		timer.Reset(time.Until(next))
		select {
		case <-g.stop:
			return
		case <-g.kick:
			if g.Sampling() {
				// Past AllToAllMax a change is pulled by those who
				// route, not pushed to everyone.
				continue
			}
			if due := last.Add(g.cfg.MinPushInterval); due.Before(next) {
				next = due
			}
			continue
		case <-timer.C:
		}
		g.pushLoad()
		last = time.Now()
		next = last.Add(g.cfg.LoadInterval)
	}
}

// pushLoad sends the local load to every live member, or to Fanout random
// ones past AllToAllMax (pushTargetsLocked).
func (g *Gossip) pushLoad() {
	g.mu.Lock()
	if g.left || g.closed {
		g.mu.Unlock()
		return
	}
	msg := encodeLoadMsg(loadEntry{Name: g.cfg.Name, Load: g.self.load, Interval: g.cfg.LoadInterval})
	targets := g.pushTargetsLocked()
	g.mu.Unlock()
	for _, t := range targets {
		g.sendLoad(t, msg)
	}
}

// sendLoad sends a load message over UDP when it fits a packet, else over
// TCP in the background (one send per peer in flight; a newer load follows
// at the next push).
func (g *Gossip) sendLoad(t target, msg []byte) {
	if len(msg) <= g.udpLimit {
		if err := g.ml.SendBestEffort(&t.node, msg); err != nil {
			g.log.Debug("send load", "to", t.name, "err", err)
			return
		}
		g.stats.loadsSent.Add(1)
		return
	}
	if !t.peer.reliableBusy.CompareAndSwap(false, true) {
		return
	}
	g.wg.Add(1)
	go func(t target) {
		defer g.wg.Done()
		defer t.peer.reliableBusy.Store(false)
		if err := g.ml.SendReliable(&t.node, msg); err != nil {
			g.log.Debug("send load over tcp", "to", t.name, "err", err)
			return
		}
		g.stats.loadsSent.Add(1)
	}(t)
}

// watchLoop marks members whose load reports stopped as Suspect and forgets
// Dead and Left members after RetainGone.
func (g *Gossip) watchLoop() {
	defer g.wg.Done()
	base := g.cfg.LoadInterval
	if g.cfg.SuspectAfter > 0 {
		base = min(base, g.cfg.SuspectAfter)
	}
	ticker := time.NewTicker(min(max(base/4, 5*time.Millisecond), 250*time.Millisecond))
	defer ticker.Stop()
	for {
		select {
		case <-g.stop:
			return
		case now := <-ticker.C:
			g.watch(now)
		}
	}
}

func (g *Gossip) watch(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	// Past AllToAllMax a member hears from each peer only now and then,
	// so silence proves nothing: memberlist's probes (constant cost per
	// node) detect failures instead.
	sampling := g.samplingLocked()
	for name, p := range g.peers {
		switch {
		case !p.known:
			if now.Sub(p.loadUpdated) > time.Minute {
				delete(g.peers, name)
				g.strangers--
			}
		case p.state == StateDead || p.state == StateLeft:
			if now.Sub(p.stateChanged) > g.cfg.RetainGone {
				delete(g.peers, name)
			}
		case p.state == StateAlive && !sampling:
			last := p.joinedAt
			if p.loadUpdated.After(last) {
				last = p.loadUpdated
			}
			if silent := now.Sub(last); silent > g.suspectAfter(p) {
				p.state = StateSuspect
				p.stateChanged = now
				g.log.Warn("member load reports stopped; suspect", "member", name, "silent", silent.Round(time.Millisecond))
				g.emitLocked(EventSuspect, p)
			}
		}
	}
}
