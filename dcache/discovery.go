package dcache

import (
	"log"
	"log/slog"
	"slices"
)

// peerDiscovery is Olric's ServiceDiscovery plugin backed by shoal's membership. Olric calls
// DiscoverPeers on every join attempt, so the peers are always the current ones; shoal's
// membership already advertises this node, so Register and Deregister have nothing to do.
type peerDiscovery struct {
	peers func() []string
	self  string // this member's memberlist address, never a peer of itself
	wait  bool   // an empty list means "not converged yet": retry until JoinTimeout
	log   *slog.Logger
}

// list returns the peers other than self, deduplicated, in a stable order.
func (d *peerDiscovery) list() []string {
	if d.peers == nil {
		return nil
	}
	var out []string
	for _, p := range d.peers() {
		if p == "" || p == d.self || slices.Contains(out, p) {
			continue
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Initialize implements Olric's ServiceDiscovery.
func (d *peerDiscovery) Initialize() error { return nil }

// SetConfig implements Olric's ServiceDiscovery; the plugin is configured in Go.
func (d *peerDiscovery) SetConfig(map[string]any) error { return nil }

// SetLogger implements Olric's ServiceDiscovery; the plugin logs to the cache's slog logger.
func (d *peerDiscovery) SetLogger(*log.Logger) {}

// Register implements Olric's ServiceDiscovery: shoal's membership already lists this node.
func (d *peerDiscovery) Register() error { return nil }

// Deregister implements Olric's ServiceDiscovery: leaving shoal's membership is the node's job.
func (d *peerDiscovery) Deregister() error { return nil }

// DiscoverPeers implements Olric's ServiceDiscovery.
func (d *peerDiscovery) DiscoverPeers() ([]string, error) {
	peers := d.list()
	d.log.Debug("olric join", "peers", peers)
	if len(peers) == 0 && d.wait {
		return nil, errNoPeersYet
	}
	return peers, nil
}

// Close implements Olric's ServiceDiscovery.
func (d *peerDiscovery) Close() error { return nil }
