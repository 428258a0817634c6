package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The kernels this suite runs on have no sch_netem and no NFQUEUE, so delay
// between nodes comes from a userspace relay. In each node's namespace an
// nftables rule redirects the node's TCP connections to its peers' HTTP
// (request forwarding), Raft and peer plane (one port) and Olric ports to a
// relay listening on that namespace's loopback; the relay dials the original
// destination from the same namespace (so peers see the node's own address),
// with a socket mark the rule skips, and copies both ways, each chunk held
// back by the delay in force when it was read. The rules are in place before
// the nodes start, so every connection between nodes goes through a relay
// from the first; the delay is 0 until a scenario sets it. Gossip (memberlist
// UDP and TCP on 7946) and Olric's own memberlist (3322) stay direct: UDP
// cannot go through a TCP relay, and their TCP side is the same protocol.

const (
	relayMark  = 0x5d1 // SO_MARK of the relay's own connections
	relayTable = "shoaldelay"
)

// relayPorts are the node ports whose traffic between nodes is relayed.
var relayPorts = []int{httpPort, 7947, 3320}

// delayer holds the delay a relay applies now, and counts what it delayed.
type delayer struct {
	base, jitter atomic.Int64 // nanoseconds
	conns        atomic.Int64 // connections relayed, ever
	chunks       atomic.Int64 // chunks held back by a non-zero delay
	heldNs       atomic.Int64 // their delays, summed
}

// set makes each chunk wait base±jitter (uniform) from now on.
func (d *delayer) set(base, jitter time.Duration) {
	d.jitter.Store(int64(jitter))
	d.base.Store(int64(base))
}

func (d *delayer) next() time.Duration {
	b, j := d.base.Load(), d.jitter.Load()
	if b <= 0 {
		return 0
	}
	if j > 0 {
		b += rand.Int64N(2*j+1) - j
	}
	return time.Duration(max(b, 0))
}

// relay forwards the connections its listener accepts to the address
// target names, through dial.
type relay struct {
	d      *delayer
	ln     net.Listener
	target func(net.Conn) (string, error)
	dial   func(addr string) (net.Conn, error)

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func newRelay(d *delayer, ln net.Listener, target func(net.Conn) (string, error), dial func(string) (net.Conn, error)) *relay {
	r := &relay{d: d, ln: ln, target: target, dial: dial, conns: map[net.Conn]struct{}{}}
	r.wg.Go(r.serve)
	return r
}

func (r *relay) serve() {
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Go(func() { r.handle(in) })
	}
}

// track registers c for close; false when the relay is already closed.
func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	_ = c.Close()
}

func (r *relay) handle(in net.Conn) {
	if !r.track(in) {
		_ = in.Close()
		return
	}
	defer r.untrack(in)
	addr, err := r.target(in)
	if err != nil {
		return
	}
	out, err := r.dial(addr)
	if err != nil {
		return // the caller sees its connection closed, as a refused dial would
	}
	if !r.track(out) {
		_ = out.Close()
		return
	}
	defer r.untrack(out)
	r.d.conns.Add(1)
	var wg sync.WaitGroup
	wg.Go(func() { r.pipe(out, in) })
	wg.Go(func() { r.pipe(in, out) })
	wg.Wait()
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk delayed; chunks keep their order (a
// chunk never leaves before the one read ahead of it), as TCP would
// deliver them. The queue is bounded, so a slow reader slows the writer.
func (r *relay) pipe(dst, src net.Conn) {
	q := make(chan chunk, 64)
	written := make(chan struct{})
	go func() {
		defer close(written)
		timer := time.NewTimer(0)
		defer timer.Stop()
		for c := range q {
			if wait := time.Until(c.due); wait > 0 {
				timer.Reset(wait)
				<-timer.C
			}
			if _, err := dst.Write(c.b); err != nil {
				// Unblock the reader, then let it finish.
				_, _ = src.Close(), dst.Close()
				for range q {
				}
				return
			}
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}()
	buf := make([]byte, 32<<10)
	var last time.Time
	for {
		n, err := src.Read(buf)
		if n > 0 {
			due := time.Now()
			if d := r.d.next(); d > 0 {
				due = due.Add(d)
				r.d.chunks.Add(1)
				r.d.heldNs.Add(int64(d))
			}
			if due.Before(last) {
				due = last
			}
			last = due
			q <- chunk{b: append([]byte(nil), buf[:n]...), due: due}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-written
}

// close stops accepting and ends every relayed connection.
func (r *relay) close() {
	_ = r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// relays is one relay per node namespace and the rules that feed them.
type relays struct {
	nw *network
	d  delayer
	rs []*relay
}

// startRelays installs a relay in every node's namespace; call before the
// nodes start. On error it removes what it made.
func startRelays(nw *network) (*relays, error) {
	rl := &relays{nw: nw}
	for i := range nw.nodes {
		if err := rl.start(i); err != nil {
			rl.close()
			return nil, err
		}
	}
	return rl, nil
}

func (rl *relays) start(i int) error {
	ns := rl.nw.nodeNS(i)
	var ln net.Listener
	if err := inNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		if ln != nil {
			_ = ln.Close()
		}
		return fmt.Errorf("relay in %s: %w", ns, err)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, relayMark) }); err != nil {
			return err
		}
		return serr
	}}
	dial := func(addr string) (c net.Conn, err error) {
		err = inNS(ns, func() (err error) {
			c, err = dialer.Dial("tcp", addr)
			return err
		})
		if err != nil && c != nil {
			_ = c.Close()
		}
		return c, err
	}
	rl.rs = append(rl.rs, newRelay(&rl.d, ln, originalDst, dial))
	var ports []string
	for _, p := range relayPorts {
		ports = append(ports, fmt.Sprint(p))
	}
	rules := fmt.Sprintf(`table ip %s {
  chain out {
    type nat hook output priority -100; policy accept;
    ip daddr %s.0/24 ip daddr != %s tcp dport { %s } meta mark != %d redirect to :%d
  }
}
`, relayTable, rl.nw.subnet, rl.nw.nodeIP(i), strings.Join(ports, ", "), relayMark, ln.Addr().(*net.TCPAddr).Port)
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft nat redirect in %s (needs nf_nat): %w: %s", ns, err, out)
	}
	return nil
}

// set changes the delay of every relay, for chunks read from now on.
func (rl *relays) set(base, jitter time.Duration) { rl.d.set(base, jitter) }

// close removes the rules and the relays; the nodes should be stopped first.
func (rl *relays) close() {
	for i := range rl.nw.nodes {
		_ = run("ip", "netns", "exec", rl.nw.nodeNS(i), "nft", "delete", "table", "ip", relayTable)
	}
	for _, r := range rl.rs {
		r.close()
	}
}

// inNS runs f on an OS thread in the network namespace ns; sockets f opens
// stay in it. The thread goes back to its own namespace before it is
// unlocked. Where that fails it stays locked, and so ends with the goroutine
// (or, the main thread, is never used again), never serving other goroutines
// in the wrong namespace.
func inNS(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(own)
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", ns, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		_ = unix.Close(fd)
		if err != nil {
			runtime.UnlockOSThread() // still in its own namespace
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(own, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave netns %s: %w", ns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// originalDst is where a redirected connection was going (SO_ORIGINAL_DST).
func originalDst(c net.Conn) (string, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return "", errors.New("original destination: not TCP")
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return "", err
	}
	var sa unix.RawSockaddrInet4
	var serr error
	if err := raw.Control(func(fd uintptr) {
		l := uint32(unsafe.Sizeof(sa))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, unix.SO_ORIGINAL_DST,
			uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	}); err != nil {
		return "", err
	}
	if serr != nil {
		return "", fmt.Errorf("original destination: %w", serr)
	}
	pb := (*[2]byte)(unsafe.Pointer(&sa.Port)) // network byte order
	port := int(pb[0])<<8 | int(pb[1])
	return net.JoinHostPort(net.IP(sa.Addr[:]).String(), fmt.Sprint(port)), nil
}

// TestRelayKeepsTheStream checks, without root, that the relay delivers a
// stream whole and in order while jitter makes chunks' delays differ, and
// that closing it ends the connections it carries.
func TestRelayKeepsTheStream(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var d delayer
	d.set(2*time.Millisecond, 2*time.Millisecond)
	r := newRelay(&d, ln, func(net.Conn) (string, error) { return echo.Addr().String(), nil },
		func(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) })

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = byte(rand.Uint32())
	}
	writeErr := make(chan error, 1)
	go func() {
		// Small writes, so many chunks each get a delay of their own.
		for off := 0; off < len(want); off += 4096 {
			if _, err := c.Write(want[off : off+4096]); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	got := make([]byte, len(want))
	require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Minute)))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.NoError(t, <-writeErr)
	require.True(t, bytes.Equal(want, got), "the relayed stream differs from what was sent")
	require.EqualValues(t, 1, d.conns.Load())
	require.Positive(t, d.chunks.Load())

	r.close()
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err, "a closed relay must end the connections it carried")
}
