// Package peer is shoal's peer plane: the service nodes call each other on
// (forwarded Raft writes, breaker proposals, forwarded inference
// requests), apart from the HTTP port
// clients and operators use. It shares the Raft port: a connection that
// starts with the byte Header is the peer plane's, any other is Raft's, so
// there is no extra port to open and Raft's own wire format is unchanged.
// With the cluster key the plane runs over the mutual TLS Raft uses; without
// it, only addresses of cluster members may call it. See DESIGN.md.
package peer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Header is the first byte of every peer-plane connection. Raft's own
// connections start with an RPC type (0 to 3) or, under TLS, a handshake
// record (0x16), so the two never collide.
const Header byte = 0x50 // 'P'

// classifyTimeout bounds the wait for a new connection's first byte, so a
// client that connects and says nothing does not hold a goroutine.
const classifyTimeout = 10 * time.Second

// Mux splits one listener between Raft and the peer plane by each
// connection's first byte.
type Mux struct {
	ln     net.Listener
	logger *slog.Logger
	raft   *subListener
	peer   *subListener
	wg     sync.WaitGroup
	once   sync.Once
	// mu orders Serve's wg.Add against Close's wg.Wait: an Add that
	// races a Wait on a zero counter is a misuse the race detector
	// reports (and could let Close return with a classify still running).
	mu     sync.Mutex
	closed bool
}

// NewMux takes ownership of ln; call Serve to start accepting.
func NewMux(ln net.Listener, logger *slog.Logger) *Mux {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Mux{ln: ln, logger: logger, raft: newSubListener(ln.Addr()), peer: newSubListener(ln.Addr())}
}

// Raft is the listener of every connection that is not the peer plane's;
// its first byte is read again by whoever accepts it.
func (m *Mux) Raft() net.Listener { return m.raft }

// Peer is the listener of peer-plane connections, Header already consumed.
func (m *Mux) Peer() net.Listener { return m.peer }

// Addr is the shared address.
func (m *Mux) Addr() net.Addr { return m.ln.Addr() }

// Serve accepts connections until Close.
func (m *Mux) Serve() {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			_ = c.Close()
			return
		}
		m.wg.Add(1)
		m.mu.Unlock()
		go func() {
			defer m.wg.Done()
			m.classify(c)
		}()
	}
}

func (m *Mux) classify(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(classifyTimeout))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if b[0] == Header {
		m.peer.deliver(c)
		return
	}
	m.raft.deliver(&replayConn{Conn: c, first: b[0], pending: true})
}

// Close stops accepting and closes both sub-listeners.
func (m *Mux) Close() error {
	var err error
	m.once.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		err = m.ln.Close()
		m.raft.Close()
		m.peer.Close()
		m.wg.Wait()
	})
	if err != nil {
		return fmt.Errorf("close mux: %w", err)
	}
	return nil
}

// subListener hands out the connections the mux routed to it.
type subListener struct {
	addr   net.Addr
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newSubListener(addr net.Addr) *subListener {
	return &subListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *subListener) deliver(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		_ = c.Close()
	}
}

// Accept waits for the next connection.
func (l *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops this sub-listener; the shared listener stays open.
func (l *subListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

// Addr is the shared address.
func (l *subListener) Addr() net.Addr { return l.addr }

// replayConn returns the byte the mux read before the rest of the stream.
type replayConn struct {
	net.Conn
	mu      sync.Mutex
	first   byte
	pending bool
}

func (c *replayConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if c.pending && len(b) > 0 {
		c.pending = false
		b[0] = c.first
		c.mu.Unlock()
		return 1, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(b)
}
