package consensus

import (
	"context"
	"crypto/tls"
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
	// tls, when set, makes every connection mutual TLS (clusterTLS).
	tls *tls.Config

	// dialCtx ends on Close, so a dial to a peer that is gone (in Docker a stopped
	// container's address swallows SYNs) does not hold raft's shutdown for the dial timeout.
	dialCtx    context.Context
	cancelDial context.CancelFunc

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
	// inbound counts accepted connections whose raft handler has not
	// returned yet (it closes the connection when it does).
	inbound sync.WaitGroup
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(ln net.Listener, advertise net.Addr, tlsConfig *tls.Config) *streamLayer {
	ctx, cancel := context.WithCancel(context.Background())
	return &streamLayer{Listener: ln, advertise: advertise, tls: tlsConfig, conns: map[*trackedConn]struct{}{},
		dialCtx: ctx, cancelDial: cancel}
}

// handshakeTimeout bounds the TLS handshake of an inbound connection, so a
// peer that connects and says nothing does not hold a handler forever.
const handshakeTimeout = 10 * time.Second

// Accept waits for the next inbound raft connection. With TLS the
// handshake runs on the connection's first read, in raft's per-connection
// goroutine, so a slow or hostile client cannot stall the accept loop.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if s.tls != nil {
		c = &serverTLSConn{Conn: tls.Server(c, s.tls)}
	}
	return s.trackInbound(c)
}

// Dial opens a raft connection to address.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := s.dialer
	d.Timeout = timeout
	c, err := d.DialContext(s.dialCtx, "tcp", string(address))
	if err != nil {
		return nil, err
	}
	if s.tls != nil {
		ctx, cancel := context.WithTimeout(s.dialCtx, timeout)
		defer cancel()
		tc := tls.Client(c, s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("raft tls handshake with %s: %w", address, err)
		}
		c = tc
	}
	return s.track(c)
}

// serverTLSConn runs the server side of the handshake, bounded by
// handshakeTimeout, before the first read.
type serverTLSConn struct {
	*tls.Conn
	once sync.Once
	err  error
}

func (c *serverTLSConn) Read(b []byte) (int, error) {
	c.once.Do(func() {
		_ = c.Conn.SetDeadline(time.Now().Add(handshakeTimeout))
		c.err = c.Conn.Handshake()
		_ = c.Conn.SetDeadline(time.Time{})
	})
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Read(b)
}

func (s *streamLayer) track(c net.Conn) (net.Conn, error) {
	return s.add(&trackedConn{Conn: c, layer: s})
}

func (s *streamLayer) trackInbound(c net.Conn) (net.Conn, error) {
	return s.add(&trackedConn{Conn: c, layer: s, inbound: true})
}

func (s *streamLayer) add(tc *trackedConn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		tc.Conn.Close()
		return nil, net.ErrClosed
	}
	if tc.inbound {
		s.inbound.Add(1)
	}
	s.conns[tc] = struct{}{}
	return tc, nil
}

// waitInbound waits, at most d, until the raft handler of every accepted
// connection has returned. raft.Shutdown does not wait for them, and a
// handler can be inside a heartbeat that writes the current term: closing
// the log store under it makes raft panic ("failed to save current term").
func (s *streamLayer) waitInbound(d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		s.inbound.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// Close stops the listener, cancels dials in progress and closes every open raft connection,
// so RPCs waiting on peers that will never answer fail at once.
func (s *streamLayer) Close() error {
	s.cancelDial()
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
	layer   *streamLayer
	inbound bool
	once    sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.layer.mu.Lock()
		delete(c.layer.conns, c)
		c.layer.mu.Unlock()
		if c.inbound {
			c.layer.inbound.Done()
		}
	})
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
