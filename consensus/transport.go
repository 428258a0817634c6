package consensus

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer is raft's TCP stream layer over a listener handed in by the
// caller, so tests and the node choose the socket (127.0.0.1:0) and there is
// no window between picking a port and binding it.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	dialer    net.Dialer
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// Dial opens a raft connection to address.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := s.dialer
	d.Timeout = timeout
	return d.Dial("tcp", string(address))
}

// Addr returns the address other servers dial, which raft also sends as this
// server's address in its RPC headers.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// addressBook maps server IDs to the raft addresses gossip last reported.
// Raft dials through it (raft.ServerAddressProvider), so a server that came
// back on a new address is reachable before the configuration is updated, and
// a cluster whose every node restarted on new ports can still elect a leader
// and then repair its configuration.
type addressBook struct {
	mu    sync.RWMutex
	addrs map[raft.ServerID]raft.ServerAddress
}

var _ raft.ServerAddressProvider = (*addressBook)(nil)

func newAddressBook() *addressBook {
	return &addressBook{addrs: map[raft.ServerID]raft.ServerAddress{}}
}

// ServerAddr implements raft.ServerAddressProvider; raft falls back to the
// configuration's address when it errors.
func (b *addressBook) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if a, ok := b.addrs[id]; ok {
		return a, nil
	}
	return "", fmt.Errorf("no address known for server %q", id)
}

// set records id's address.
func (b *addressBook) set(id, addr string) {
	if id == "" || addr == "" {
		return
	}
	b.mu.Lock()
	b.addrs[raft.ServerID(id)] = raft.ServerAddress(addr)
	b.mu.Unlock()
}

// learn records addresses from a configuration for servers gossip has not
// reported, so that raft does not log a miss for them.
func (b *addressBook) learn(servers []raft.Server) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range servers {
		if _, ok := b.addrs[s.ID]; !ok {
			b.addrs[s.ID] = s.Address
		}
	}
}
