// Package gossip tells every shoal node who the other nodes are (identity
// and addresses, in memberlist node metadata) and how loaded they are (load
// reports, sent as memberlist user messages on every change and on a
// periodic refresh, and exchanged in push-pull so a joining node learns
// every load at once). See DESIGN.md for the reasoning and measured numbers.
package gossip

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// maxStrangers caps load reports kept for names memberlist has not (yet)
// told us about, so forged or stray reports cannot grow memory.
const maxStrangers = 256

// Gossip is one node's membership in the cluster. All methods are safe for
// concurrent use.
type Gossip struct {
	cfg       Config
	log       *slog.Logger
	ml        *memberlist.Memberlist
	udpLimit  int // largest load message sent over UDP; larger go over TCP
	localAddr string

	meta   atomic.Pointer[metaBlob]
	metaMu sync.Mutex // serializes UpdateMeta

	lifeMu sync.Mutex // serializes Leave and Shutdown

	mu        sync.Mutex // guards everything below
	self      selfState
	peers     map[string]*peer
	strangers int // peers with !known
	subs      map[*subscription]struct{}
	left      bool
	closed    bool

	// waiters are Sample calls waiting for a member's pulled load.
	waiters    map[string]chan struct{}
	pullTokens float64
	pullAt     time.Time
	recent     []*peer // members whose loads were pulled lately, a ring
	recentPos  int

	kick chan struct{} // load changed or a peer joined: push soon
	stop chan struct{}
	wg   sync.WaitGroup

	stats struct {
		loadsSent, loadsReceived, loadsStale, malformed, eventsDropped, pullsSent atomic.Uint64
	}
}

type metaBlob struct {
	meta Meta
	enc  []byte
}

type selfState struct {
	addr         string // from memberlist's NotifyJoin/NotifyUpdate for self
	load         Load
	loadUpdated  time.Time
	state        State
	stateChanged time.Time
}

// peer is this node's view of another node.
type peer struct {
	name         string
	known        bool // memberlist reported it; false for a load-only stranger
	node         memberlist.Node
	meta         Meta
	state        State
	stateChanged time.Time
	joinedAt     time.Time
	leaving      bool // it announced Leave, so its death means Left

	load         Load
	loadUpdated  time.Time
	loadInterval time.Duration // the sender's refresh cadence

	reliableBusy atomic.Bool // a TCP load send to it is in flight
}

type subscription struct {
	ch chan Event
}

// Stats counts what this node's gossip has done since New.
type Stats struct {
	// LoadsSent counts load messages sent (one per target).
	LoadsSent uint64
	// LoadsReceived counts load reports accepted (direct or push-pull).
	LoadsReceived uint64
	// LoadsStale counts load reports ignored as out of order (lower Seq).
	LoadsStale uint64
	// Malformed counts undecodable messages and states dropped.
	Malformed uint64
	// EventsDropped counts events not delivered to a full subscription.
	EventsDropped uint64
	// PullsSent counts load pulls sent by Sample (one per member asked).
	PullsSent uint64
}

// New starts memberlist on cfg.BindAddr and begins pushing this node's
// load. The node is alone until Join. Invalid configuration (including
// gossip.encrypt_key) and oversized Meta fail here.
func New(cfg Config) (*Gossip, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	key, err := ParseKey(cfg.EncryptKey)
	if err != nil {
		return nil, err
	}
	enc, err := encodeMeta(cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("gossip meta: %w", err)
	}
	logger := cfg.Logger.With("component", "gossip", "node", cfg.Name)
	cfg.Logger = logger
	mc, err := cfg.memberlistConfig(key)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	g := &Gossip{
		cfg:     cfg,
		log:     logger,
		peers:   make(map[string]*peer),
		subs:    make(map[*subscription]struct{}),
		waiters: make(map[string]chan struct{}),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		self: selfState{
			// A time-based start keeps Seq increasing across restarts,
			// so peers do not ignore a restarted node's reports.
			load:         Load{Seq: uint64(now.UnixNano())},
			loadUpdated:  now,
			state:        StateAlive,
			stateChanged: now,
		},
	}
	g.meta.Store(&metaBlob{meta: cfg.Meta, enc: enc})
	// memberlist adds its own framing (message type, CRC, encryption,
	// label) to each packet; keep well inside its buffer size.
	g.udpLimit = mc.UDPBufferSize - 64 - len(mc.Label)
	d := &delegate{g: g}
	mc.Delegate = d
	mc.Events = d
	mc.Conflict = d
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: start memberlist on %s: %w", cfg.BindAddr, err)
	}
	g.ml = ml
	g.wg.Add(2)
	go g.pushLoop()
	// memberlist rewrites its local node on UpdateNode without a lock the
	// caller can take, so the address is read once, here.
	g.localAddr = g.ml.LocalNode().Address()
	go g.watchLoop()
	logger.Info("gossip started", "addr", g.LocalAddr(), "encrypted", key != nil)
	return g, nil
}

// LocalName returns this node's name.
func (g *Gossip) LocalName() string { return g.cfg.Name }

// LocalAddr returns the host:port other nodes reach this node's gossip at:
// the advertised address, with the real port when bound to port 0.
func (g *Gossip) LocalAddr() string { return g.localAddr }

// Join contacts the given gossip addresses (host:port) and merges this
// node into their cluster, retrying with backoff (100 ms doubling to 5 s)
// until at least one answers or ctx ends. It returns how many answered.
// The error names each address that failed and why; when the failure is an
// encryption disagreement it wraps ErrLikelyKeyMismatch. An attempt in
// progress is bounded by memberlist's TCP timeout, not by ctx.
func (g *Gossip) Join(ctx context.Context, addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, fmt.Errorf("gossip join: no addresses")
	}
	backoff := 100 * time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	for attempt := 1; ; attempt++ {
		if err := g.usable(); err != nil {
			return 0, err
		}
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("gossip join %s: %w", strings.Join(addrs, ","), err)
		}
		var errs []error
		joined := 0
		for _, addr := range addrs {
			n, err := g.ml.Join([]string{addr})
			if err != nil {
				errs = append(errs, joinError(addr, err))
				continue
			}
			joined += n
		}
		if joined > 0 {
			g.log.Info("joined cluster", "contacted", joined, "addrs", addrs, "attempt", attempt)
			if len(errs) > 0 {
				g.log.Warn("some join addresses failed", "err", errors.Join(errs...))
			}
			return joined, nil
		}
		err := errors.Join(errs...)
		if errors.Is(err, ErrLikelyKeyMismatch) {
			g.log.Error("gossip join failed", "attempt", attempt, "err", err, "hint", keyMismatchHint, "retry_in", backoff)
		} else {
			g.log.Warn("gossip join failed", "attempt", attempt, "err", err, "retry_in", backoff)
		}
		timer.Reset(backoff)
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("gossip join: gave up after %d attempts (%w): %w", attempt, ctx.Err(), err)
		case <-timer.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// joinError wraps memberlist's join error for addr, flattening its
// multierror and wrapping ErrLikelyKeyMismatch when memberlist reports an
// encryption disagreement.
func joinError(addr string, err error) error {
	parts := []string{err.Error()}
	var multi interface{ WrappedErrors() []error }
	if errors.As(err, &multi) {
		parts = parts[:0]
		for _, e := range multi.WrappedErrors() {
			// memberlist prefixes "failed to join ADDR: "; we say it once.
			parts = append(parts, strings.TrimPrefix(e.Error(), "failed to join "+addr+": "))
		}
	}
	cause := errors.New(strings.Join(parts, "; "))
	if keyMismatch(cause.Error()) {
		return fmt.Errorf("join %s: %w (%w)", addr, cause, ErrLikelyKeyMismatch)
	}
	return fmt.Errorf("join %s: %w", addr, cause)
}

// usable returns ErrClosed after Shutdown and ErrLeft after Leave.
func (g *Gossip) usable() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.closed:
		return ErrClosed
	case g.left:
		return ErrLeft
	}
	return nil
}

// Leave tells the cluster this node is leaving, so peers mark it StateLeft
// rather than StateDead, and stops load reports. It waits up to timeout
// for memberlist's leave broadcast. Call Shutdown afterwards. Calling it
// again is a no-op.
func (g *Gossip) Leave(timeout time.Duration) error {
	g.lifeMu.Lock()
	defer g.lifeMu.Unlock()
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrClosed
	}
	if g.left {
		g.mu.Unlock()
		return nil
	}
	g.left = true
	g.self.state = StateLeft
	g.self.stateChanged = time.Now()
	targets := g.targetsLocked()
	for i := range targets {
		// Copy the state now: p.state is guarded by g.mu.
		targets[i].alive = targets[i].peer.state == StateAlive
	}
	g.mu.Unlock()

	// memberlist's NotifyLeave does not say whether a node left or died,
	// so announce the intent first: over UDP to every member, and over TCP
	// to the alive ones in case a packet is lost, waiting for those up to
	// half the timeout. Receivers that see the death before the intent
	// convert Dead to Left when it arrives.
	start := time.Now()
	msg := encodeLeaveMsg(g.cfg.Name)
	var sent sync.WaitGroup
	for _, t := range targets {
		if err := g.ml.SendBestEffort(&t.node, msg); err != nil {
			g.log.Debug("send leave intent", "to", t.name, "err", err)
		}
		if !t.alive {
			continue
		}
		g.wg.Add(1)
		sent.Add(1)
		go func(n memberlist.Node) {
			defer g.wg.Done()
			defer sent.Done()
			if err := g.ml.SendReliable(&n, msg); err != nil {
				g.log.Debug("send leave intent over tcp", "to", n.Name, "err", err)
			}
		}(t.node)
	}
	allSent := make(chan struct{})
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		sent.Wait()
		close(allSent)
	}()
	if timeout > 0 {
		select {
		case <-allSent:
		case <-time.After(timeout / 2):
		}
		timeout = max(timeout-time.Since(start), time.Millisecond)
	} else {
		<-allSent
	}
	if err := g.ml.Leave(timeout); err != nil {
		return fmt.Errorf("gossip leave: %w", err)
	}
	g.log.Info("left cluster")
	return nil
}

// Shutdown stops gossip without telling peers (they will detect this node
// as failed unless Leave ran first), waits for background work, and closes
// every subscription channel. A leave announcement still in flight to an
// unreachable peer can hold it up to memberlist's TCPTimeout. Calling it
// again is a no-op.
func (g *Gossip) Shutdown() error {
	g.lifeMu.Lock()
	defer g.lifeMu.Unlock()
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.mu.Unlock()

	close(g.stop)
	err := g.ml.Shutdown()
	g.wg.Wait()

	g.mu.Lock()
	for s := range g.subs {
		close(s.ch)
	}
	g.subs = nil
	g.mu.Unlock()
	if err != nil {
		return fmt.Errorf("gossip shutdown: %w", err)
	}
	return nil
}

// Members returns every member this node knows, itself included, sorted by
// name. Dead and Left members stay listed for Config.RetainGone so Raft
// membership can be reconciled against them.
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Member, 0, len(g.peers)+1)
	out = append(out, g.selfMemberLocked())
	for _, p := range g.peers {
		if p.known {
			out = append(out, p.member())
		}
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Alive returns the members in StateAlive, itself included, sorted by name:
// the ones that may receive work.
func (g *Gossip) Alive() []Member {
	all := g.Members()
	return slices.DeleteFunc(all, func(m Member) bool { return m.State != StateAlive })
}

// PeerLoad is a peer and its load for one model.
type PeerLoad struct {
	// Member is the peer, without its load report (Load is zero).
	Member Member
	// Load is the peer's reported load for the model.
	Load ModelLoad
}

// ServingPeers returns the live peers (this node excluded) whose last load
// report lists model, sorted by name. Unlike Alive it copies no load map
// and no other member: routing asks it on every request, and with no such
// peer it allocates nothing.
func (g *Gossip) ServingPeers(model string) []PeerLoad {
	g.mu.Lock()
	var out []PeerLoad
	for _, p := range g.peers {
		if !p.known || p.state != StateAlive || p.name == g.cfg.Name {
			continue
		}
		l, ok := p.load.Models[model]
		if !ok {
			continue
		}
		out = append(out, PeerLoad{Member: p.memberWithoutLoad(), Load: l})
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(a, b PeerLoad) int { return cmp.Compare(a.Member.Name, b.Member.Name) })
	return out
}

// Serves reports whether a live peer's last load report lists model. It
// copies nothing: the request path asks it on every cache call and metric
// observation, where Alive's sorted copy of every member and load map
// would be paid each time.
func (g *Gossip) Serves(model string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.peers {
		if p.known && p.state == StateAlive {
			if _, ok := p.load.Models[model]; ok {
				return true
			}
		}
	}
	return false
}

// Member returns the named member (this node included) and whether it is
// known.
func (g *Gossip) Member(name string) (Member, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if name == g.cfg.Name {
		return g.selfMemberLocked(), true
	}
	p, ok := g.peers[name]
	if !ok || !p.known {
		return Member{}, false
	}
	return p.member(), true
}

// SetLoad records this node's load and pushes it to every peer promptly
// (at once, or coalesced with other changes within Config.MinPushInterval).
// It assigns l.Seq itself. It copies l, so the caller may reuse the map.
func (g *Gossip) SetLoad(l Load) error {
	if err := validateLoad(l); err != nil {
		return err
	}
	l = l.clone()
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrClosed
	}
	l.Seq = g.self.load.Seq + 1
	g.self.load = l
	g.self.loadUpdated = time.Now()
	g.mu.Unlock()
	g.poke()
	return nil
}

// UpdateMeta replaces this node's metadata (for example when RaftHasState
// flips) and broadcasts it. It returns once the broadcast went out to a
// peer, or errs when ctx ends or, without a deadline, after
// DefaultBroadcastTimeout; the new metadata is in effect locally either
// way and still spreads.
func (g *Gossip) UpdateMeta(ctx context.Context, m Meta) error {
	enc, err := encodeMeta(m)
	if err != nil {
		return fmt.Errorf("gossip update meta: %w", err)
	}
	g.metaMu.Lock()
	defer g.metaMu.Unlock()
	if err := g.usable(); err != nil {
		return err
	}
	timeout := DefaultBroadcastTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return fmt.Errorf("gossip update meta: %w", context.DeadlineExceeded)
	}
	g.meta.Store(&metaBlob{meta: m, enc: enc})
	done := make(chan error, 1)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		done <- g.ml.UpdateNode(timeout)
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("gossip update meta: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("gossip update meta: %w", ctx.Err())
	}
}

// Subscribe returns a channel of membership and load events and a cancel
// function that ends the subscription and closes the channel. Sends never
// block gossip: when the channel is full the event is dropped and counted
// in Stats.EventsDropped, so a consumer that needs exact state should
// re-read Members after it falls behind. Shutdown closes every channel.
func (g *Gossip) Subscribe() (<-chan Event, func()) {
	s := &subscription{ch: make(chan Event, g.cfg.EventBuffer)}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		close(s.ch)
		return s.ch, func() {}
	}
	g.subs[s] = struct{}{}
	g.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if _, ok := g.subs[s]; ok {
				delete(g.subs, s)
				close(s.ch)
			}
		})
	}
}

// Stats returns counters since New.
func (g *Gossip) Stats() Stats {
	return Stats{
		LoadsSent:     g.stats.loadsSent.Load(),
		LoadsReceived: g.stats.loadsReceived.Load(),
		LoadsStale:    g.stats.loadsStale.Load(),
		Malformed:     g.stats.malformed.Load(),
		EventsDropped: g.stats.eventsDropped.Load(),
		PullsSent:     g.stats.pullsSent.Load(),
	}
}

// poke asks the push loop to send the local load soon.
func (g *Gossip) poke() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

func (g *Gossip) selfMemberLocked() Member {
	// Never call memberlist here: it calls our delegate with its node
	// lock held, and the delegate takes g.mu.
	return Member{
		Name:         g.cfg.Name,
		Addr:         g.self.addr,
		Meta:         g.meta.Load().meta,
		State:        g.self.state,
		StateChanged: g.self.stateChanged,
		Load:         g.self.load.clone(),
		LoadUpdated:  g.self.loadUpdated,
	}
}

func (p *peer) member() Member {
	m := p.memberWithoutLoad()
	m.Load = p.load.clone()
	return m
}

// memberWithoutLoad is member with a zero Load: no copy of the load map.
func (p *peer) memberWithoutLoad() Member {
	return Member{
		Name:         p.name,
		Addr:         p.node.Address(),
		Meta:         p.meta,
		State:        p.state,
		StateChanged: p.stateChanged,
		LoadUpdated:  p.loadUpdated,
	}
}

// emitLocked sends an event about p to every subscriber without blocking.
func (g *Gossip) emitLocked(t EventType, p *peer) {
	for s := range g.subs {
		select {
		case s.ch <- Event{Type: t, Member: p.member()}:
		default:
			g.stats.eventsDropped.Add(1)
		}
	}
}

// suspectAfter is how long p may go without a load report.
func (g *Gossip) suspectAfter(p *peer) time.Duration {
	if g.cfg.SuspectAfter > 0 {
		return g.cfg.SuspectAfter
	}
	interval := p.loadInterval
	if interval <= 0 {
		interval = g.cfg.LoadInterval
	}
	return DefaultSuspectFactor * interval
}
