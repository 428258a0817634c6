package node

import (
	"context"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/gossip"
	"github.com/shoal-dev/shoal/router"
)

// sampledCandidates adds two random peers serving model, with loads pulled
// just now, to out. Past gossip's AllToAllMax peers no node holds fresh
// loads of every other, so the router's power-of-two choice is made among
// fresh samples instead (gossip DESIGN.md, "Dissemination at scale"). The
// wait is bounded by gossip's PullTimeout.
func (n *Node) sampledCandidates(model string, out []router.Candidate, st *consensus.State) []router.Candidate {
	serves := func(_ string, l gossip.Load) bool {
		if l.Seq == 0 {
			// Never heard from (past 4,096 members push-pull carries only
			// some loads): pulling it is how we learn what it serves.
			return true
		}
		_, ok := l.Models[model]
		return ok
	}
	sampled := n.gossip.Sample(context.Background(), 2, serves)
	now := time.Now()
	for _, m := range sampled {
		l, ok := m.Load.Models[model]
		if !ok {
			continue
		}
		out = append(out, peerCandidate(m, model, l, now, st))
	}
	return out
}
