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
// no window between picking a port and binding it. It also tracks every
// connection it accepted or dialed and closes them on Close: raft's
// NetworkTransport.Close stops only the listener, leaving connection
// handlers blocked on idle peers, which would leak goroutines and sockets
// in a process that stops and restarts stores.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	dialer    net.Dialer

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(ln net.Listener, advertise net.Addr) *streamLayer {
	return &streamLayer{Listener: ln, advertise: advertise, conns: map[*trackedConn]struct{}{}}
}

// Accept waits for the next inbound raft connection.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return s.track(c)
}

// Dial opens a raft connection to address.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := s.dialer
	d.Timeout = timeout
	c, err := d.Dial("tcp", string(address))
	if err != nil {
		return nil, err
	}
	return s.track(c)
}

func (s *streamLayer) track(c net.Conn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, layer: s}
	s.conns[tc] = struct{}{}
	return tc, nil
}

// Close stops the listener and closes every open raft connection.
func (s *streamLayer) Close() error {
	err := s.Listener.Close()
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = map[*trackedConn]struct{}{}
	s.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
	return err
}

// Addr returns the address other servers dial, which raft also sends as this
// server's address in its RPC headers.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// trackedConn forgets itself in its layer when closed.
type trackedConn struct {
	net.Conn
	layer *streamLayer
}

func (c *trackedConn) Close() error {
	c.layer.mu.Lock()
	delete(c.layer.conns, c)
	c.layer.mu.Unlock()
	return c.Conn.Close()
}

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
