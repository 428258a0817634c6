package gossip

import (
	"context"
	"math/rand/v2"
	"slices"
	"time"
)

// msgPull asks a member to send its load to the named requester now. Its
// body is the requester's name, as a leave message's.
const msgPull byte = 3

// sampling reports whether the cluster is past Config.AllToAllMax live
// peers, where loads are pulled on demand (Sample) and pushes go to Fanout
// random peers only. See DESIGN.md, "Dissemination at scale".
func (g *Gossip) samplingLocked() bool {
	return g.alivePeersLocked() > g.cfg.AllToAllMax
}

func (g *Gossip) alivePeersLocked() int {
	n := 0
	for _, p := range g.peers {
		if p.known && p.state == StateAlive {
			n++
		}
	}
	return n
}

// Sampling reports whether this node uses sampled dissemination now.
func (g *Gossip) Sampling() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.samplingLocked()
}

// Sample returns k random live members other than this node, among those
// keep accepts (nil: all), with fresh loads: keep sees each member's name
// and held load (which tells the models it serves) and must not keep the
// load; Sample it pulls each one's load and waits up to Config.PullTimeout (or
// ctx) for the replies. A member that does not answer in time is returned
// with the load held before, whose LoadUpdated tells the router how old it
// is. Pulls past Config.PullRate per second are not sent (the members'
// held loads are returned), which bounds this node's message rate however
// fast requests come: past it, Sample returns members whose pulled loads
// are at most PullReuse old (else the ones pulled last). Below AllToAllMax live peers every load is already
// pushed on change, so Sample pulls nothing.
func (g *Gossip) Sample(ctx context.Context, k int, keep func(name string, l Load) bool) []Member {
	now := time.Now()
	g.mu.Lock()
	if g.left || g.closed || k <= 0 {
		g.mu.Unlock()
		return nil
	}
	alive := make([]*peer, 0, len(g.peers))
	for _, p := range g.peers {
		if p.known && p.state == StateAlive && (keep == nil || keep(p.name, p.load)) {
			alive = append(alive, p)
		}
	}
	k = min(k, len(alive))
	// A partial Fisher-Yates shuffle picks k distinct members.
	for i := range k {
		j := i + rand.IntN(len(alive)-i)
		alive[i], alive[j] = alive[j], alive[i]
	}
	picked := alive[:k]
	sampling := g.samplingLocked()
	pull := sampling && g.takePullsLocked(now, k)
	if sampling && !pull {
		// Over the budget: reuse loads pulled lately rather than the
		// random members' held loads, which may be minutes old and
		// would make routers herd (clustersim/DESIGN.md).
		if r := g.reusedLocked(now, k, keep); len(r) > 0 {
			picked = r
		}
	}
	var waits []chan struct{}
	if pull {
		for _, p := range picked {
			w, ok := g.waiters[p.name]
			if !ok {
				w = make(chan struct{})
				g.waiters[p.name] = w
			}
			waits = append(waits, w)
		}
	}
	targets := make([]target, len(picked))
	for i, p := range picked {
		targets[i] = target{name: p.name, node: p.node, peer: p}
	}
	g.mu.Unlock()
	if pull {
		msg := appendString([]byte{msgPull}, g.cfg.Name)
		for _, t := range targets {
			if err := g.ml.SendBestEffort(&t.node, msg); err != nil {
				g.log.Debug("send load pull", "to", t.name, "err", err)
				continue
			}
			g.stats.pullsSent.Add(1)
		}
		timer := time.NewTimer(g.cfg.PullTimeout)
		defer timer.Stop()
	wait:
		for _, w := range waits {
			select {
			case <-w:
			case <-timer.C:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
	}
	out := make([]Member, 0, len(targets))
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, t := range targets {
		if pull && t.peer.loadUpdated.After(now) {
			g.rememberPulledLocked(t.peer)
		}
		out = append(out, t.peer.member())
	}
	return out
}

// recentPulled is how many answered pulls a node keeps for reuse.
const recentPulled = 64

func (g *Gossip) rememberPulledLocked(p *peer) {
	if len(g.recent) < recentPulled {
		g.recent = append(g.recent, p)
		return
	}
	g.recent[g.recentPos] = p
	g.recentPos = (g.recentPos + 1) % recentPulled
}

// reusedLocked picks k members among those whose pulled loads are at most
// PullReuse old, at random; with fewer than k of those, the k pulled last.
func (g *Gossip) reusedLocked(now time.Time, k int, keep func(string, Load) bool) []*peer {
	usable := func(p *peer) bool {
		return p.known && p.state == StateAlive && g.peers[p.name] == p && (keep == nil || keep(p.name, p.load))
	}
	var fresh []*peer
	for _, p := range g.recent {
		if usable(p) && now.Sub(p.loadUpdated) <= g.cfg.PullReuse && !slices.Contains(fresh, p) {
			fresh = append(fresh, p)
		}
	}
	if len(fresh) >= k {
		rand.Shuffle(len(fresh), func(i, j int) { fresh[i], fresh[j] = fresh[j], fresh[i] })
		return fresh[:k]
	}
	var newest []*peer
	for c := range len(g.recent) {
		i := len(g.recent) - 1 - c
		if len(g.recent) == recentPulled {
			i = (g.recentPos - 1 - c + 2*recentPulled) % recentPulled
		}
		if p := g.recent[i]; usable(p) && !slices.Contains(newest, p) {
			newest = append(newest, p)
			if len(newest) == k {
				break
			}
		}
	}
	return newest
}

// takePullsLocked spends n pulls from the PullRate token bucket (burst of
// one second's worth).
func (g *Gossip) takePullsLocked(now time.Time, n int) bool {
	rate := g.cfg.PullRate
	if !g.pullAt.IsZero() {
		g.pullTokens = min(g.pullTokens+now.Sub(g.pullAt).Seconds()*rate, rate)
	} else {
		g.pullTokens = rate
	}
	g.pullAt = now
	if g.pullTokens < float64(n) {
		return false
	}
	g.pullTokens -= float64(n)
	return true
}

// answerPull sends this node's load to the member that asked for it.
func (g *Gossip) answerPull(from string) {
	g.mu.Lock()
	p, ok := g.peers[from]
	if !ok || !p.known || g.left || g.closed || !p.state.Listed() {
		g.mu.Unlock()
		return
	}
	t := target{name: p.name, node: p.node, peer: p}
	msg := encodeLoadMsg(loadEntry{Name: g.cfg.Name, Load: g.self.load, Interval: g.cfg.LoadInterval})
	g.mu.Unlock()
	g.sendLoad(t, msg)
}

// notifyWaitersLocked wakes Sample calls waiting for name's load.
func (g *Gossip) notifyWaitersLocked(name string) {
	if w, ok := g.waiters[name]; ok {
		close(w)
		delete(g.waiters, name)
	}
}

// pushTargetsLocked is who gets a push: every live member in a small
// cluster, Fanout random ones past AllToAllMax (a heartbeat that keeps
// held loads from going very old; routing pulls what it needs).
func (g *Gossip) pushTargetsLocked() []target {
	all := g.targetsLocked()
	if !g.samplingLocked() || len(all) <= g.cfg.Fanout {
		return all
	}
	rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	return all[:g.cfg.Fanout]
}
