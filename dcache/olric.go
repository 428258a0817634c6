package dcache

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/hashicorp/memberlist"
	"github.com/olric-data/olric"
	"github.com/olric-data/olric/config"

	"github.com/shoal-dev/shoal/internal/workers"
)

// DMap names: one family per kind of data, so purging responses never touches counters.
const (
	respPrefix = "resp."
	ctrPrefix  = "ctr."
	lockPrefix = "lock."
	// metaDMap records every response namespace ever written, for Purge("").
	metaDMap = "meta.namespaces"
)

const (
	// maxInflight caps Olric calls still running after their caller gave up on them; beyond
	// it calls fail at once instead of piling up goroutines on a hung member.
	maxInflight = 1024
	// workerIdle is how long a goroutine that ran an Olric call waits for the next one.
	workerIdle = 10 * time.Second
	// purgeTimeout bounds Purge, which visits every member.
	purgeTimeout = 10 * time.Second
	// shutdownTimeout bounds the cleanup of a failed Start.
	shutdownTimeout = 5 * time.Second
	// entrySlack is room for the key and Olric's entry header in a storage table.
	entrySlack = 4096
)

// olricTiming holds the Olric intervals per Network preset.
type olricTiming struct {
	joinRetry, bootstrap, leave, push, balance, watch time.Duration
	// rejoin is how long a member may see at most half of shoal's members before it is
	// replaced by a fresh one that joins them.
	rejoin time.Duration
}

func timingFor(network string) olricTiming {
	if network == "local" {
		return olricTiming{
			joinRetry: 100 * time.Millisecond,
			bootstrap: 2 * time.Second,
			leave:     500 * time.Millisecond,
			push:      2 * time.Second,
			balance:   time.Second,
			watch:     100 * time.Millisecond,
			rejoin:    3 * time.Second,
		}
	}
	return olricTiming{
		joinRetry: 500 * time.Millisecond,
		bootstrap: config.DefaultBootstrapTimeout,
		leave:     config.DefaultLeaveTimeout,
		push:      config.DefaultRoutingTablePushInterval,
		balance:   config.DefaultTriggerBalancerInterval,
		watch:     time.Second,
		rejoin:    5 * time.Second,
	}
}

// olricStore runs the embedded Olric member. A supervisor goroutine owns the member's life:
// it starts one, watches it, and replaces it with a fresh one (same ports) when Olric fails
// its start, stops, or stays split from the cluster shoal's membership describes. Calls use
// whichever member is current; none is current while a replacement starts.
type olricStore struct {
	cfg    Config
	log    *slog.Logger
	stdlog *log.Logger
	timing olricTiming

	host      string       // Olric protocol bind host
	port      int          // Olric protocol port, reserved by New
	reserve   net.Listener // holds the port from New until the first attempt
	transport *memberlist.NetTransport
	mlHost    string // memberlist bind host
	mlPort    int    // memberlist port, bound by New
	mlAddr    string // advertised memberlist address
	disc      *peerDiscovery

	startMu sync.Mutex
	begun   bool
	closed  bool
	stopSup context.CancelFunc
	sup     sync.WaitGroup
	// firstUp is closed when a member first becomes current.
	firstUp chan struct{}

	cur  atomic.Pointer[member]
	name atomic.Pointer[string] // Olric member name (advertised protocol address)
	// visible is the member count as of the last watch, for the quorum check on the embedded
	// path (Olric checks MemberCountQuorum only on requests that arrive over the network).
	visible  atomic.Int64
	inflight atomic.Int64
	// calls runs the Olric calls (call's f) on reused goroutines.
	calls *workers.Pool
	// suspects maps a member name to the UnixNano until which calls for its keys fail at once.
	suspects  sync.Map
	fastFails atomic.Int64
	// downSince is the UnixNano since which this node has had no current member, or one that
	// sees fewer members than shoal lists; 0 while healthy.
	downSince atomic.Int64
	lastErr   atomic.Pointer[string] // why the last attempt failed or the last member was replaced
	attempts  atomic.Int64           // member starts tried
	restarts  atomic.Int64           // members replaced after they had started
	closeErr  error                  // the last member's shutdown error, for close
	// rejoinBackoff multiplies the rejoin period; only the supervisor goroutine uses it.
	rejoinBackoff int64
}

// member is one started Olric instance and its clients. A replacement is a new member.
type member struct {
	db        *olric.Olric
	name      string
	embedded  *olric.EmbeddedClient
	cluster   *olric.ClusterClient
	running   chan struct{} // closed when db.Start returns
	transport *memberlist.NetTransport

	edmaps sync.Map // name -> olric.DMap (embedded: served by this member's own routing)
	resp   sync.Map // namespace -> its response DMap in edmaps, found without building the name
	cdmaps sync.Map // name -> olric.DMap (cluster client: commands run on the key's owner)
	known  sync.Map // namespaces recorded in metaDMap by this member

	rtMu      sync.Mutex
	lastTable olric.RoutingTable
}

func newOlricStore(cfg Config, l *slog.Logger) (*olricStore, error) {
	o := &olricStore{cfg: cfg, log: l, timing: timingFor(cfg.Network), firstUp: make(chan struct{}), rejoinBackoff: 1,
		calls: workers.New(workers.Config{Idle: workerIdle})}
	o.downSince.Store(time.Now().UnixNano())
	o.stdlog = newStdLogger(l.With("component", "olric"))

	host, port, _ := splitHostPort(cfg.BindAddr)
	// Olric cannot bind port 0 itself, so New reserves the port and hands it over in Start.
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("cache addr %s: %w", cfg.BindAddr, err)
	}
	o.host, o.port, o.reserve = host, ln.Addr().(*net.TCPAddr).Port, ln

	// The memberlist transport is ours, so port 0 works and the address is known before any
	// join: the node publishes it in shoal's membership, then calls Start.
	mhost, mport, _ := splitHostPort(cfg.MemberlistAddr)
	nt, err := newTransport(mhost, mport, o.stdlog)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("cache memberlist addr %s: %w", cfg.MemberlistAddr, err)
	}
	ip, aport, err := nt.FinalAdvertiseAddr("", 0)
	if err != nil {
		_ = ln.Close()
		shutdownTransport(nt)
		return nil, fmt.Errorf("cache memberlist advertise address: %w", err)
	}
	o.transport = nt
	o.mlHost, o.mlPort = mhost, nt.GetAutoBindPort()
	o.mlAddr = net.JoinHostPort(ip.String(), strconv.Itoa(aport))
	o.disc = &peerDiscovery{peers: cfg.Peers, self: o.mlAddr, wait: cfg.WaitForPeers, log: o.log}
	return o, nil
}

// newTransport binds memberlist's TCP and UDP listeners. A dynamic port must be free for both
// protocols, so it is retried a few times, as memberlist itself does.
func newTransport(host string, port int, l *log.Logger) (*memberlist.NetTransport, error) {
	tries := 1
	if port == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{host},
			BindPort:  port,
			Logger:    l,
		})
		if err == nil {
			return nt, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

// shutdownTransport closes a transport that memberlist may never have consumed: its listener
// goroutines block handing over connections and packets until someone reads them.
func shutdownTransport(nt *memberlist.NetTransport) {
	done := make(chan struct{})
	go func() {
		for {
			select {
			case c := <-nt.StreamCh():
				_ = c.Close()
			case <-nt.PacketCh():
			case <-done:
				return
			}
		}
	}()
	_ = nt.Shutdown()
	close(done)
}

func (o *olricStore) addr() string {
	if n := o.name.Load(); n != nil {
		return *n
	}
	return net.JoinHostPort(o.host, strconv.Itoa(o.port))
}

func (o *olricStore) olricConfig(ready func()) (*config.Config, error) {
	oc := config.New(o.cfg.Network)
	ml, err := config.NewMemberlistConfig(o.cfg.Network)
	if err != nil {
		return nil, err
	}
	ml.Transport = o.transport
	ml.BindAddr = o.mlHost
	ml.BindPort = o.mlPort
	ml.AdvertisePort = o.mlPort
	ml.LogOutput = nil
	if len(o.cfg.EncryptKey) > 0 {
		ml.SecretKey = o.cfg.EncryptKey
	}
	oc.MemberlistConfig = ml
	if o.cfg.Password != "" {
		oc.Authentication = &config.Authentication{Password: o.cfg.Password}
	}

	oc.BindAddr = o.host
	oc.BindPort = o.port
	oc.Peers = nil
	oc.ServiceDiscovery = map[string]any{"plugin": o.disc}
	oc.JoinRetryInterval = o.timing.joinRetry
	oc.MaxJoinAttempts = max(1, int(o.cfg.JoinTimeout/o.timing.joinRetry))
	oc.BootstrapTimeout = o.timing.bootstrap
	oc.LeaveTimeout = o.timing.leave
	oc.RoutingTablePushInterval = o.timing.push
	oc.TriggerBalancerInterval = o.timing.balance
	oc.PartitionCount = o.cfg.PartitionCount
	oc.ReplicaCount = o.cfg.ReplicaCount
	oc.ReadQuorum = 1
	oc.WriteQuorum = 1
	oc.MemberCountQuorum = int32(o.cfg.MinMembers)
	oc.DMaps = &config.DMaps{
		EvictionPolicy: config.LRUEviction,
		MaxInuse:       int(o.cfg.MaxBytes),
		Engine: &config.Engine{Config: map[string]any{
			"tableSize": uint64(o.cfg.MaxValueBytes + entrySlack),
		}},
	}
	oc.Client = config.NewClient()
	oc.Client.DialTimeout = time.Second
	oc.Started = ready

	// Olric replaces Logger's output with LogOutput, then filters it by LogLevel.
	oc.Logger = newStdLogger(o.log.With("component", "olric"))
	oc.LogOutput = oc.Logger.Writer()
	oc.LogLevel = config.LogLevelWarn
	oc.LogVerbosity = 2
	if o.log.Enabled(context.Background(), slog.LevelDebug) {
		oc.LogLevel = config.LogLevelDebug
		oc.LogVerbosity = 3
	}
	return oc, nil
}

// errStartFailed marks an attempt that failed inside Olric: two members that booted together
// and each took itself for the coordinator, a member whose routing table is not ready
// ("failed to find enough peers to create quorum" from its own clients), or a port taken in
// the instant between New's reservation and Olric's bind. A fresh member moments later
// usually joins the one that won.
var errStartFailed = errors.New("olric start failed")

// maxRestartBackoff caps the wait between member starts that keep failing.
const maxRestartBackoff = 10 * time.Second

// maxRejoinBackoff caps the factor on the rejoin period after replacements that did not end a
// split (5 s x 16: a useless replacement at most every 80-160 s).
const maxRejoinBackoff = 16

// start launches the supervisor and waits, bounded by ctx and StartTimeout, until a member is
// up. When the bound passes first, start returns an error but the supervisor keeps trying:
// a node's cache comes up by itself whenever its peers let it.
func (o *olricStore) start(ctx context.Context) error {
	o.startMu.Lock()
	if o.begun {
		o.startMu.Unlock()
		return errors.New("olric start: already called")
	}
	o.begun = true
	sctx, stop := context.WithCancel(context.Background())
	o.stopSup = stop
	o.sup.Add(1)
	go o.supervise(sctx)
	o.startMu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, o.cfg.StartTimeout)
	defer cancel()
	select {
	case <-o.firstUp:
		return nil
	case <-ctx.Done():
		last := "none yet"
		if e := o.lastErr.Load(); e != nil {
			last = *e
		}
		return fmt.Errorf("%w: olric member not up after %d attempts (%w); still retrying in the background; last error: %s",
			ErrUnavailable, o.attempts.Load(), ctx.Err(), last)
	}
}

// supervise keeps a healthy member running until ctx ends: it starts members with a growing,
// jittered backoff whatever Olric's error, and replaces a running member that stopped or stays
// split off. It never gives up; only Close stops it.
func (o *olricStore) supervise(ctx context.Context) {
	defer o.sup.Done()
	backoff := o.timing.joinRetry
	for attempt := int64(1); ; attempt++ {
		o.attempts.Store(attempt)
		m, err := o.startMember(ctx, attempt)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			msg := err.Error()
			o.lastErr.Store(&msg)
			wait := backoff + time.Duration(rand.Int64N(int64(backoff)))
			o.log.Warn("olric start failed; retrying with a fresh member", "attempt", attempt, "retry_in", wait, "err", err)
			backoff = min(2*backoff, maxRestartBackoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		backoff = o.timing.joinRetry
		o.visible.Store(int64(m.members()))
		o.cur.Store(m)
		select {
		case <-o.firstUp:
		default:
			close(o.firstUp)
		}
		o.log.Info("olric member started", "addr", m.name, "memberlist", o.mlAddr, "members", m.members(), "attempt", attempt)
		reason := o.watch(ctx, m)
		o.cur.Store(nil)
		if o.downSince.Load() == 0 {
			o.downSince.Store(time.Now().UnixNano())
		}
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		err = o.stopMember(sctx, m)
		cancel()
		if ctx.Err() != nil {
			o.closeErr = err
			return
		}
		o.restarts.Add(1)
		o.lastErr.Store(&reason)
		o.log.Warn("olric member replaced by a fresh one", "reason", reason, "shutdown_err", err)
	}
}

// startMember starts one Olric instance on the member's ports and connects its clients.
func (o *olricStore) startMember(ctx context.Context, attempt int64) (*member, error) {
	if attempt > 1 {
		if err := o.rebind(); err != nil {
			return nil, err
		}
	}
	m, err := o.startOnce(ctx, attempt)
	if err != nil {
		return nil, err
	}
	if err := o.connect(m); err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		_ = o.stopMember(sctx, m)
		return nil, err
	}
	return m, nil
}

// rebind takes the member's ports again for another attempt: the previous member's shutdown
// released both. The ports stay the ones New took, since shoal's membership advertises them.
func (o *olricStore) rebind() error {
	ln, err := net.Listen("tcp", net.JoinHostPort(o.host, strconv.Itoa(o.port)))
	if err != nil {
		return fmt.Errorf("%w: cache addr %s:%d: %w", errStartFailed, o.host, o.port, err)
	}
	nt, err := newTransport(o.mlHost, o.mlPort, o.stdlog)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("%w: cache memberlist addr %s:%d: %w", errStartFailed, o.mlHost, o.mlPort, err)
	}
	o.reserve, o.transport = ln, nt
	return nil
}

// startOnce creates and starts one Olric instance and waits until it is ready: Olric's
// Started callback, which comes once every service of the member has started. Olric counts
// started services in a process-wide checkpoint that a failed or replaced member leaves
// unbalanced, after which the callback never comes again in this process, so a later attempt
// also accepts the member answering a read as operable.
func (o *olricStore) startOnce(ctx context.Context, attempt int64) (*member, error) {
	readyCh := make(chan struct{})
	var once sync.Once
	markReady := func() { once.Do(func() { close(readyCh) }) }
	oc, err := o.olricConfig(markReady)
	if err != nil {
		_ = o.reserve.Close()
		shutdownTransport(o.transport)
		return nil, fmt.Errorf("olric config: %w", err)
	}
	// The port goes back to the OS just before Olric binds it; New's reservation keeps the
	// window in which another process could take it tiny.
	_ = o.reserve.Close()
	db, err := olric.New(oc)
	if err != nil {
		shutdownTransport(o.transport)
		return nil, fmt.Errorf("%w: olric new: %w", errStartFailed, err)
	}
	m := &member{db: db, name: oc.MemberlistConfig.Name, running: make(chan struct{}), transport: o.transport}
	o.name.Store(&m.name)
	startErr := make(chan error, 1)
	go func() {
		defer close(m.running)
		startErr <- db.Start()
	}()
	if attempt > 1 {
		go probeReady(ctx, db, m.running, markReady)
	}
	// One attempt may take the whole join and bootstrap, not longer.
	bound := time.NewTimer(o.cfg.JoinTimeout + 2*o.timing.bootstrap)
	defer bound.Stop()
	var fail error
	select {
	case <-readyCh:
		return m, nil
	case err := <-startErr:
		fail = fmt.Errorf("%w on %s: %w", errStartFailed, m.name, err)
	case <-bound.C:
		fail = fmt.Errorf("%w on %s: not ready within %s", errStartFailed, m.name, o.cfg.JoinTimeout+2*o.timing.bootstrap)
	case <-ctx.Done():
		fail = fmt.Errorf("olric start on %s: not ready: %w", m.name, ctx.Err())
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	_ = o.stopMember(sctx, m)
	return nil, fail
}

// probeReady calls ready once db answers a read as an operable member: joined,
// bootstrapped and with MinMembers in sight. (A read, not Stats: Olric's stats walk its
// member table without the lock.)
func probeReady(ctx context.Context, db *olric.Olric, running <-chan struct{}, ready func()) {
	e := db.NewEmbeddedClient()
	for {
		if dm, err := e.NewDMap(metaDMap); err == nil {
			if _, err := dm.Get(ctx, "shoal.probe"); err == nil || errors.Is(err, olric.ErrKeyNotFound) {
				ready()
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-running:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// connect opens the clients of a started member. The cluster client asks the member for its
// routing table at once, which fails while the member has not settled ("failed to find enough
// peers to create quorum"): that is a failed attempt like any other.
func (o *olricStore) connect(m *member) error {
	m.embedded = m.db.NewEmbeddedClient()
	ccfg := config.NewClient()
	// A retried INCR could be applied twice.
	ccfg.MaxRetries = -1
	ccfg.DialTimeout = time.Second
	opts := []olric.ClusterClientOption{olric.WithConfig(ccfg), olric.WithLogger(o.stdlog),
		olric.WithRoutingTableFetchInterval(time.Minute)}
	if o.cfg.Password != "" {
		opts = append(opts, olric.WithPassword(o.cfg.Password))
	}
	cc, err := olric.NewClusterClient([]string{m.name}, opts...)
	if err != nil {
		return fmt.Errorf("%w: olric cluster client on %s: %w", errStartFailed, m.name, err)
	}
	m.cluster = cc
	return nil
}

// stopMember shuts a member down and frees its ports.
func (o *olricStore) stopMember(ctx context.Context, m *member) error {
	var errs []error
	if m.cluster != nil {
		if err := m.cluster.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("cluster client: %w", err))
		}
	}
	if err := m.db.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("olric shutdown: %w", err))
	}
	select {
	case <-m.running:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("olric did not stop: %w", ctx.Err()))
	}
	shutdownTransport(m.transport)
	return errors.Join(errs...)
}

// watch keeps a running member's routing and health current until ctx ends or the member
// must be replaced; it returns why. Olric has no rejoin: a member that formed a cluster of its
// own (its peers were down when it started) stays there, so one that sees at most half the
// members shoal lists for the rejoin period, plus jitter so split halves do not restart in
// step, is replaced by a fresh member, which joins the peers shoal lists now. A replacement
// that does not end the split (a listed peer that cannot run its member, in a 2-node cluster)
// doubles the period, up to maxRejoinBackoff times, so a member is not emptied over and over
// for nothing; seeing every listed member resets it.
func (o *olricStore) watch(ctx context.Context, m *member) string {
	t := time.NewTicker(o.timing.watch)
	defer t.Stop()
	var short time.Time
	period := o.timing.rejoin * time.Duration(o.rejoinBackoff)
	rejoin := period + time.Duration(rand.Int64N(int64(period)))
	for {
		n := m.members()
		o.visible.Store(int64(n))
		if _, err := o.syncRouting(ctx, m); err != nil && ctx.Err() == nil {
			o.log.Debug("olric routing refresh", "err", err)
		}
		want := 1 + len(o.disc.list())
		switch {
		case n >= want:
			short = time.Time{}
			o.downSince.Store(0)
			o.rejoinBackoff = 1
		case short.IsZero():
			short = time.Now()
			o.downSince.CompareAndSwap(0, short.UnixNano())
		case 2*n <= want && time.Since(short) > rejoin:
			o.rejoinBackoff = min(2*o.rejoinBackoff, maxRejoinBackoff)
			return fmt.Sprintf("member saw %d of the %d members shoal lists for %s", n, want, time.Since(short).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return "closed"
		case <-m.running:
			return "olric stopped"
		case <-t.C:
		}
	}
}

// syncRouting fetches the coordinator's routing table and, when it changed, refreshes the
// cluster client. It reports whether the client already had the current table. Counters are
// atomic only while every member sends a key's increments to the same owner, so a membership
// change must reach the cluster client quickly, not at its once-a-minute refresh.
func (o *olricStore) syncRouting(ctx context.Context, m *member) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, max(o.cfg.OpTimeout, time.Second))
	defer cancel()
	rt, err := m.cluster.RoutingTable(ctx)
	if err != nil {
		return false, err
	}
	m.rtMu.Lock()
	defer m.rtMu.Unlock()
	if sameRouting(rt, m.lastTable) {
		return true, nil
	}
	if err := m.cluster.RefreshMetadata(ctx); err != nil {
		return false, err
	}
	m.lastTable = rt
	return false, nil
}

func sameRouting(a, b olric.RoutingTable) bool {
	return maps.EqualFunc(a, b, func(x, y olric.Route) bool {
		return slices.Equal(x.PrimaryOwners, y.PrimaryOwners) && slices.Equal(x.ReplicaOwners, y.ReplicaOwners)
	})
}

// target is the DMap (prefix and namespace) and key a call reads or writes, for routing it to
// its owner; zero for calls that visit every member. The DMap's name is kept in its two parts:
// joining them on every cache lookup and store was an allocation each.
type target struct{ prefix, ns, key string }

// suspectFor is how long calls for keys owned by a member that left a call unanswered fail at
// once instead of waiting their bound again. A frozen peer then costs each request path one
// bound per suspectFor, not one per call.
const suspectFor = time.Second

// call runs f against Olric within d. Olric does not honour every deadline (a member that is
// not bootstrapped waits out BootstrapTimeout, for one), so f runs on a worker goroutine and the
// caller leaves at the deadline whatever f does. A call whose key's owner recently left a
// call unanswered fails at once (ErrUnavailable).
func call[T any](o *olricStore, ctx context.Context, d time.Duration, verb string, at target, f func(context.Context, *member) (T, error)) (T, error) {
	var zero T
	// Formatted only on failure: building "get resp.<model>" on every call cost an allocation.
	op := opName{verb, at.prefix, at.ns}
	m := o.cur.Load()
	if m == nil {
		return zero, fmt.Errorf("%w: %s: %w", ErrUnavailable, op, ErrNotStarted)
	}
	if n := o.visible.Load(); n < int64(o.cfg.MinMembers) {
		return zero, fmt.Errorf("%w: %s: %d cache members visible, %d required", ErrUnavailable, op, n, o.cfg.MinMembers)
	}
	owner := m.owner(at, o.cfg.PartitionCount)
	if owner != "" && o.suspected(owner) {
		o.fastFails.Add(1)
		return zero, fmt.Errorf("%w: %s: owner %s left a call unanswered within the last %s", ErrUnavailable, op, owner, suspectFor)
	}
	if n := o.inflight.Add(1); n > maxInflight {
		o.inflight.Add(-1)
		return zero, fmt.Errorf("%w: %s: %d olric calls already stuck", ErrUnavailable, op, n-1)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	o.calls.Go(func() {
		defer o.inflight.Add(-1)
		v, err := f(ctx, m)
		done <- result{v, err}
	})
	select {
	case r := <-done:
		if r.err == nil {
			return r.v, nil
		}
		return zero, o.classify(parent, ctx, d, op, r.err)
	case <-ctx.Done():
		if parent.Err() == nil && owner != "" {
			o.suspect(owner)
		}
		return zero, o.classify(parent, ctx, d, op, ctx.Err())
	}
}

// owner is the member that owns at's partition by this member's last copy of the routing
// table, or "" when unknown or this member itself (its own keys never leave the process).
func (m *member) owner(at target, partitions uint64) string {
	if at.prefix == "" && at.ns == "" || partitions == 0 {
		return ""
	}
	m.rtMu.Lock()
	// Olric's partition hash is of the name and key together; streamed, not concatenated.
	var h xxhash.Digest
	h.Reset()
	_, _ = h.WriteString(at.prefix)
	_, _ = h.WriteString(at.ns)
	_, _ = h.WriteString(at.key)
	route, ok := m.lastTable[h.Sum64()%partitions]
	m.rtMu.Unlock()
	if !ok || len(route.PrimaryOwners) == 0 {
		return ""
	}
	// Olric's partition owner is the last of its owners.
	if o := route.PrimaryOwners[len(route.PrimaryOwners)-1]; o != m.name {
		return o
	}
	return ""
}

func (o *olricStore) suspect(owner string) {
	until := time.Now().Add(suspectFor).UnixNano()
	if _, loaded := o.suspects.Swap(owner, until); !loaded {
		o.log.Warn("cache member did not answer in time; its keys bypass the cache for a while", "member", owner, "for", suspectFor)
	}
}

func (o *olricStore) suspected(owner string) bool {
	v, ok := o.suspects.Load(owner)
	if !ok {
		return false
	}
	if time.Now().UnixNano() < v.(int64) {
		return true
	}
	o.suspects.CompareAndDelete(owner, v)
	return false
}

// opName names a call in errors: its verb and DMap.
type opName struct{ verb, prefix, ns string }

func (n opName) String() string {
	if n.prefix == "" && n.ns == "" {
		return n.verb
	}
	return n.verb + " " + n.prefix + n.ns
}

// classify maps Olric's errors onto ours. Anything that is not a verdict about the data (not
// found, locked, too large) means Olric could not serve: ErrUnavailable.
func (o *olricStore) classify(parent, ctx context.Context, d time.Duration, op opName, err error) error {
	switch {
	case errors.Is(err, olric.ErrLockNotAcquired):
		return ErrLocked
	case errors.Is(err, olric.ErrNoSuchLock):
		return fmt.Errorf("%s: %w", op, ErrNotLocked)
	case errors.Is(err, olric.ErrKeyTooLarge), errors.Is(err, olric.ErrEntryTooLarge):
		return fmt.Errorf("%s: %w: %w", op, ErrTooLarge, err)
	case parent.Err() != nil:
		return fmt.Errorf("%s: %w", op, parent.Err())
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %s: no answer within %s: %w", ErrUnavailable, op, d, context.DeadlineExceeded)
	default:
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
	}
}

// dmap returns the embedded DMap name, created once. Embedded calls route by this member's
// own partition table, and reads of keys this member owns never leave the process.
func (m *member) dmap(name string) (olric.DMap, error) {
	if dm, ok := m.edmaps.Load(name); ok {
		return dm.(olric.DMap), nil
	}
	dm, err := m.embedded.NewDMap(name)
	if err != nil {
		return nil, err
	}
	actual, _ := m.edmaps.LoadOrStore(name, dm)
	return actual.(olric.DMap), nil
}

// respDMap is namespace ns's response DMap (dmap of respPrefix+ns).
func (m *member) respDMap(ns string) (olric.DMap, error) {
	if dm, ok := m.resp.Load(ns); ok {
		return dm.(olric.DMap), nil
	}
	dm, err := m.dmap(respPrefix + ns)
	if err != nil {
		return nil, err
	}
	m.resp.Store(ns, dm)
	return dm, nil
}

// ownerDMap returns name through the cluster client, whose commands run on the key's owner.
func (m *member) ownerDMap(name string) (olric.DMap, error) {
	if dm, ok := m.cdmaps.Load(name); ok {
		return dm.(olric.DMap), nil
	}
	dm, err := m.cluster.NewDMap(name)
	if err != nil {
		return nil, err
	}
	actual, _ := m.cdmaps.LoadOrStore(name, dm)
	return actual.(olric.DMap), nil
}

func (o *olricStore) get(ctx context.Context, ns, key string) ([]byte, bool, error) {
	type hit struct {
		v  []byte
		ok bool
	}
	h, err := call(o, ctx, o.cfg.LookupTimeout, "get", target{respPrefix, ns, key}, func(ctx context.Context, m *member) (hit, error) {
		dm, err := m.respDMap(ns)
		if err != nil {
			return hit{}, err
		}
		gr, err := dm.Get(ctx, key)
		if errors.Is(err, olric.ErrKeyNotFound) {
			return hit{}, nil
		}
		if err != nil {
			return hit{}, err
		}
		v, err := gr.Byte()
		return hit{v, err == nil}, err
	})
	return h.v, h.ok, err
}

func (o *olricStore) set(ctx context.Context, ns, key string, val []byte, ttl time.Duration) error {
	_, err := call(o, ctx, o.cfg.OpTimeout, "set", target{respPrefix, ns, key}, func(ctx context.Context, m *member) (struct{}, error) {
		if err := m.register(ctx, ns); err != nil {
			return struct{}{}, err
		}
		dm, err := m.respDMap(ns)
		if err != nil {
			return struct{}{}, err
		}
		if ttl > 0 {
			return struct{}{}, dm.Put(ctx, key, val, olric.PX(max(ttl, time.Millisecond)))
		}
		return struct{}{}, dm.Put(ctx, key, val)
	})
	return err
}

// register records ns in metaDMap once per member, so Purge("") on any member finds it.
func (m *member) register(ctx context.Context, ns string) error {
	if _, ok := m.known.Load(ns); ok {
		return nil
	}
	dm, err := m.dmap(metaDMap)
	if err != nil {
		return err
	}
	if err := dm.Put(ctx, ns, []byte{1}); err != nil {
		return fmt.Errorf("register namespace %q: %w", ns, err)
	}
	m.known.Store(ns, struct{}{})
	return nil
}

func (o *olricStore) del(ctx context.Context, ns, key string) error {
	_, err := call(o, ctx, o.cfg.OpTimeout, "delete", target{respPrefix, ns, key}, func(ctx context.Context, m *member) (int, error) {
		dm, err := m.respDMap(ns)
		if err != nil {
			return 0, err
		}
		return dm.Delete(ctx, key)
	})
	return err
}

func (o *olricStore) purge(ctx context.Context, ns string) error {
	_, err := call(o, ctx, purgeTimeout, "purge", target{}, func(ctx context.Context, m *member) (struct{}, error) {
		names := []string{ns}
		if ns == "" {
			var err error
			if names, err = m.namespaces(ctx); err != nil {
				return struct{}{}, err
			}
		}
		for _, n := range names {
			dm, err := m.dmap(respPrefix + n)
			if err != nil {
				return struct{}{}, err
			}
			if err := dm.Destroy(ctx); err != nil {
				return struct{}{}, fmt.Errorf("destroy %s%s: %w", respPrefix, n, err)
			}
			// Destroy dropped the DMap on every member; drop this handle too, so that purging
			// names no longer served does not leave one behind each.
			m.edmaps.Delete(respPrefix + n)
			m.cdmaps.Delete(respPrefix + n)
			m.resp.Delete(n)
		}
		return struct{}{}, nil
	})
	return err
}

// namespaces lists every namespace any member has registered.
func (m *member) namespaces(ctx context.Context) ([]string, error) {
	dm, err := m.ownerDMap(metaDMap)
	if err != nil {
		return nil, err
	}
	it, err := dm.Scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", metaDMap, err)
	}
	defer it.Close()
	var names []string
	for it.Next() {
		names = append(names, it.Key())
	}
	m.known.Range(func(k, _ any) bool {
		if n := k.(string); !slices.Contains(names, n) {
			names = append(names, n)
		}
		return true
	})
	return names, nil
}

func (o *olricStore) incr(ctx context.Context, ns, key string, delta int, ttl time.Duration) (int, error) {
	return call(o, ctx, o.cfg.OpTimeout, "incr", target{ctrPrefix, ns, key}, func(ctx context.Context, m *member) (int, error) {
		dm, err := m.ownerDMap(ctrPrefix + ns)
		if err != nil {
			return 0, err
		}
		v, err := dm.Incr(ctx, key, delta)
		if err != nil || ttl <= 0 || v != delta {
			return v, err
		}
		// v == delta: this call may have created the counter (Olric's INCR cannot set a TTL).
		// Give it one unless it has one; INCR keeps an existing TTL.
		if err := o.expireIfUnset(ctx, dm, key, ttl); err != nil {
			// The increment stands; failing it would make the caller count it twice.
			o.log.Warn("counter left without expiry", "dmap", ctrPrefix+ns, "key", key, "err", err)
		}
		return v, nil
	})
}

func (o *olricStore) expireIfUnset(ctx context.Context, dm olric.DMap, key string, ttl time.Duration) error {
	gr, err := dm.Get(ctx, key)
	if err != nil {
		return err
	}
	if gr.TTL() != 0 {
		return nil
	}
	return dm.Expire(ctx, key, max(ttl, time.Millisecond))
}

func (o *olricStore) lock(ctx context.Context, ns, key string, lease time.Duration) (held, error) {
	lc, err := call(o, ctx, o.cfg.LookupTimeout, "lock", target{lockPrefix, ns, key}, func(ctx context.Context, m *member) (olric.LockContext, error) {
		dm, err := m.dmap(lockPrefix + ns)
		if err != nil {
			return nil, err
		}
		// A zero deadline: one attempt, no waiting.
		return dm.LockWithTimeout(ctx, key, max(lease, time.Millisecond), 0)
	})
	if err != nil {
		return held{}, err
	}
	// The release is on a request's path (LookupTimeout, fail open); a
	// renewal runs beside a long generation, off any request's path.
	return held{
		unlock: func(ctx context.Context) error {
			_, err := call(o, ctx, o.cfg.LookupTimeout, "unlock", target{lockPrefix, ns, key}, func(ctx context.Context, m *member) (struct{}, error) {
				return struct{}{}, lc.Unlock(ctx)
			})
			return err
		},
		renew: func(ctx context.Context, lease time.Duration) error {
			_, err := call(o, ctx, o.cfg.OpTimeout, "lease", target{lockPrefix, ns, key}, func(ctx context.Context, m *member) (struct{}, error) {
				return struct{}{}, lc.Lease(ctx, lease)
			})
			return err
		},
	}, nil
}

func (o *olricStore) members() int {
	m := o.cur.Load()
	if m == nil {
		return 0
	}
	return m.members()
}

func (m *member) members() int {
	ms, err := m.embedded.Members(context.Background())
	if err != nil {
		return 0
	}
	return len(ms)
}

// shared reads the member count the watch keeps (every second; 100ms on local).
func (o *olricStore) shared() bool { return o.visible.Load() > 1 }

func (o *olricStore) expected() int {
	if o.cur.Load() == nil {
		return 0
	}
	return 1 + len(o.disc.list())
}

// state says since when this node has had no healthy member (zero while it has one), why the
// last attempt failed or the last member was replaced, and how many members were replaced.
func (o *olricStore) state() (since time.Time, last string, restarts int64) {
	if ns := o.downSince.Load(); ns != 0 {
		since = time.Unix(0, ns)
	}
	if e := o.lastErr.Load(); e != nil {
		last = *e
	}
	return since, last, o.restarts.Load()
}

func (o *olricStore) usage() (int64, int64) { return 0, 0 }

func (o *olricStore) close(ctx context.Context) error {
	o.startMu.Lock()
	defer o.startMu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	o.calls.Close()
	if !o.begun {
		o.begun = true
		_ = o.reserve.Close()
		shutdownTransport(o.transport)
		return nil
	}
	o.stopSup()
	done := make(chan struct{})
	go func() {
		o.sup.Wait()
		close(done)
	}()
	select {
	case <-done:
		return o.closeErr
	case <-ctx.Done():
		return fmt.Errorf("olric member did not stop: %w", ctx.Err())
	}
}
