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

	"github.com/hashicorp/memberlist"
	"github.com/olric-data/olric"
	"github.com/olric-data/olric/config"
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
		}
	}
	return olricTiming{
		joinRetry: 500 * time.Millisecond,
		bootstrap: config.DefaultBootstrapTimeout,
		leave:     config.DefaultLeaveTimeout,
		push:      config.DefaultRoutingTablePushInterval,
		balance:   config.DefaultTriggerBalancerInterval,
		watch:     time.Second,
	}
}

// olricStore is the embedded Olric member.
type olricStore struct {
	cfg    Config
	log    *slog.Logger
	stdlog *log.Logger
	timing olricTiming

	host      string       // Olric protocol bind host
	port      int          // Olric protocol port, reserved by New
	reserve   net.Listener // holds the port from New until Start
	transport *memberlist.NetTransport
	mlHost    string // memberlist bind host
	mlPort    int    // memberlist port, bound by New
	mlAddr    string // advertised memberlist address

	startMu  sync.Mutex
	begun    bool
	db       *olric.Olric
	name     atomic.Pointer[string] // Olric member name (advertised protocol address)
	embedded *olric.EmbeddedClient
	cluster  *olric.ClusterClient
	running  chan struct{} // closed when db.Start returns
	ready    atomic.Bool
	stopBG   context.CancelFunc
	bg       sync.WaitGroup
	disc     *peerDiscovery

	edmaps   sync.Map // name -> olric.DMap (embedded: served by this member's own routing)
	cdmaps   sync.Map // name -> olric.DMap (cluster client: commands run on the key's owner)
	known    sync.Map // namespaces recorded in metaDMap by this member
	inflight atomic.Int64
	// visible is the member count as of the last routing watch, for the quorum check on the
	// embedded path (Olric checks MemberCountQuorum only on requests that arrive over the network).
	visible atomic.Int64

	rtMu      sync.Mutex
	lastTable olric.RoutingTable
}

func newOlricStore(cfg Config, l *slog.Logger) (*olricStore, error) {
	o := &olricStore{cfg: cfg, log: l, timing: timingFor(cfg.Network)}
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

// errStartFailed marks a start that failed inside Olric's Start: typically two members that
// booted together and each took itself for the coordinator ("unrecognized cluster
// coordinator"), where a fresh attempt moments later joins the one that won; or a port
// taken in the instant between New's reservation and Olric's bind.
var errStartFailed = errors.New("olric start failed")

// start runs the member: Olric's Start blocks for the member's lifetime, so it runs in a
// goroutine. A start that Olric itself fails is retried with a fresh instance on the same
// ports until StartTimeout, so a node that lost a boot race still gets its cache.
func (o *olricStore) start(ctx context.Context) error {
	o.startMu.Lock()
	defer o.startMu.Unlock()
	if o.begun {
		return errors.New("olric start: already called")
	}
	o.begun = true
	ctx, cancel := context.WithTimeout(ctx, o.cfg.StartTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		var err error
		if attempt > 1 {
			err = o.rebind()
		}
		if err == nil {
			var db *olric.Olric
			if db, err = o.startOnce(ctx, attempt); err == nil {
				return o.finishStart(db)
			}
			if !errors.Is(err, errStartFailed) {
				return err
			}
		}
		o.log.Warn("olric start failed; retrying with a fresh member", "attempt", attempt, "err", err)
		wait := min(time.Duration(attempt), 10) * (o.timing.joinRetry + time.Duration(rand.Int64N(int64(o.timing.joinRetry))))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up after %d attempts: %w)", err, attempt, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// rebind takes the member's ports again for another attempt: the failed member's shutdown
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
// started services in a process-wide checkpoint that one failed start leaves unbalanced, after
// which the callback never comes again in this process, so a retry (attempt > 1) also accepts
// the member answering a read as operable.
func (o *olricStore) startOnce(ctx context.Context, attempt int) (*olric.Olric, error) {
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
		return nil, fmt.Errorf("olric new: %w", err)
	}
	name := oc.MemberlistConfig.Name
	o.name.Store(&name)
	o.db = db
	// Each attempt's goroutines keep their own channel: a retry replaces o.running.
	running := make(chan struct{})
	o.running = running
	startErr := make(chan error, 1)
	go func() {
		defer close(running)
		startErr <- db.Start()
	}()
	if attempt > 1 {
		go probeReady(ctx, db, running, markReady)
	}
	select {
	case <-readyCh:
		return db, nil
	case err := <-startErr:
		o.abort()
		return nil, fmt.Errorf("%w on %s: %w", errStartFailed, name, err)
	case <-ctx.Done():
		o.abort()
		return nil, fmt.Errorf("olric start on %s: not ready: %w", name, ctx.Err())
	}
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

// finishStart connects the clients of a started member and begins its background work.
func (o *olricStore) finishStart(db *olric.Olric) error {
	name := *o.name.Load()
	o.embedded = db.NewEmbeddedClient()
	ccfg := config.NewClient()
	// A retried INCR could be applied twice.
	ccfg.MaxRetries = -1
	ccfg.DialTimeout = time.Second
	opts := []olric.ClusterClientOption{olric.WithConfig(ccfg), olric.WithLogger(o.stdlog),
		olric.WithRoutingTableFetchInterval(time.Minute)}
	if o.cfg.Password != "" {
		opts = append(opts, olric.WithPassword(o.cfg.Password))
	}
	cc, err := olric.NewClusterClient([]string{name}, opts...)
	if err != nil {
		o.abort()
		return fmt.Errorf("olric cluster client on %s: %w", name, err)
	}
	o.cluster = cc
	o.ready.Store(true)
	o.visible.Store(int64(o.members()))
	bg, stop := context.WithCancel(context.Background())
	o.stopBG = stop
	o.bg.Add(1)
	go o.watchRouting(bg)
	o.log.Info("olric member started", "addr", name, "memberlist", o.mlAddr, "members", o.members())
	return nil
}

// abort tears down a member whose start failed. Called with startMu held.
func (o *olricStore) abort() {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := o.db.Shutdown(ctx); err != nil {
		o.log.Warn("olric shutdown after failed start", "err", err)
	}
	select {
	case <-o.running:
	case <-ctx.Done():
	}
	shutdownTransport(o.transport)
}

// watchRouting keeps the cluster client's routing table equal to the coordinator's. Counters
// are atomic only while every member sends a key's increments to the same owner, so a
// membership change must reach the cluster client quickly, not at its once-a-minute refresh.
func (o *olricStore) watchRouting(ctx context.Context) {
	defer o.bg.Done()
	t := time.NewTicker(o.timing.watch)
	defer t.Stop()
	for {
		o.visible.Store(int64(o.members()))
		if _, err := o.syncRouting(ctx); err != nil && ctx.Err() == nil {
			o.log.Debug("olric routing refresh", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// syncRouting fetches the coordinator's routing table and, when it changed, refreshes the
// cluster client. It reports whether the client already had the current table.
func (o *olricStore) syncRouting(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, max(o.cfg.OpTimeout, time.Second))
	defer cancel()
	rt, err := o.cluster.RoutingTable(ctx)
	if err != nil {
		return false, err
	}
	o.rtMu.Lock()
	defer o.rtMu.Unlock()
	if sameRouting(rt, o.lastTable) {
		return true, nil
	}
	if err := o.cluster.RefreshMetadata(ctx); err != nil {
		return false, err
	}
	o.lastTable = rt
	return false, nil
}

func sameRouting(a, b olric.RoutingTable) bool {
	return maps.EqualFunc(a, b, func(x, y olric.Route) bool {
		return slices.Equal(x.PrimaryOwners, y.PrimaryOwners) && slices.Equal(x.ReplicaOwners, y.ReplicaOwners)
	})
}

// call runs f against Olric within d. Olric does not honour every deadline (a member that is
// not bootstrapped waits out BootstrapTimeout, for one), so f runs in its own goroutine and the
// caller leaves at the deadline whatever f does.
func call[T any](o *olricStore, ctx context.Context, d time.Duration, op string, f func(context.Context) (T, error)) (T, error) {
	var zero T
	if !o.ready.Load() {
		return zero, fmt.Errorf("%w: %s: %w", ErrUnavailable, op, ErrNotStarted)
	}
	if n := o.visible.Load(); n < int64(o.cfg.MinMembers) {
		return zero, fmt.Errorf("%w: %s: %d cache members visible, %d required", ErrUnavailable, op, n, o.cfg.MinMembers)
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
	go func() {
		defer o.inflight.Add(-1)
		v, err := f(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		if r.err == nil {
			return r.v, nil
		}
		return zero, o.classify(parent, ctx, d, op, r.err)
	case <-ctx.Done():
		return zero, o.classify(parent, ctx, d, op, ctx.Err())
	}
}

// classify maps Olric's errors onto ours. Anything that is not a verdict about the data (not
// found, locked, too large) means Olric could not serve: ErrUnavailable.
func (o *olricStore) classify(parent, ctx context.Context, d time.Duration, op string, err error) error {
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
func (o *olricStore) dmap(name string) (olric.DMap, error) {
	if dm, ok := o.edmaps.Load(name); ok {
		return dm.(olric.DMap), nil
	}
	dm, err := o.embedded.NewDMap(name)
	if err != nil {
		return nil, err
	}
	actual, _ := o.edmaps.LoadOrStore(name, dm)
	return actual.(olric.DMap), nil
}

// ownerDMap returns name through the cluster client, whose commands run on the key's owner.
func (o *olricStore) ownerDMap(name string) (olric.DMap, error) {
	if dm, ok := o.cdmaps.Load(name); ok {
		return dm.(olric.DMap), nil
	}
	dm, err := o.cluster.NewDMap(name)
	if err != nil {
		return nil, err
	}
	actual, _ := o.cdmaps.LoadOrStore(name, dm)
	return actual.(olric.DMap), nil
}

func (o *olricStore) get(ctx context.Context, ns, key string) ([]byte, bool, error) {
	type hit struct {
		v  []byte
		ok bool
	}
	h, err := call(o, ctx, o.cfg.LookupTimeout, "get "+respPrefix+ns, func(ctx context.Context) (hit, error) {
		dm, err := o.dmap(respPrefix + ns)
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
	_, err := call(o, ctx, o.cfg.OpTimeout, "set "+respPrefix+ns, func(ctx context.Context) (struct{}, error) {
		if err := o.register(ctx, ns); err != nil {
			return struct{}{}, err
		}
		dm, err := o.dmap(respPrefix + ns)
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
func (o *olricStore) register(ctx context.Context, ns string) error {
	if _, ok := o.known.Load(ns); ok {
		return nil
	}
	dm, err := o.dmap(metaDMap)
	if err != nil {
		return err
	}
	if err := dm.Put(ctx, ns, []byte{1}); err != nil {
		return fmt.Errorf("register namespace %q: %w", ns, err)
	}
	o.known.Store(ns, struct{}{})
	return nil
}

func (o *olricStore) del(ctx context.Context, ns, key string) error {
	_, err := call(o, ctx, o.cfg.OpTimeout, "delete "+respPrefix+ns, func(ctx context.Context) (int, error) {
		dm, err := o.dmap(respPrefix + ns)
		if err != nil {
			return 0, err
		}
		return dm.Delete(ctx, key)
	})
	return err
}

func (o *olricStore) purge(ctx context.Context, ns string) error {
	_, err := call(o, ctx, purgeTimeout, "purge", func(ctx context.Context) (struct{}, error) {
		names := []string{ns}
		if ns == "" {
			var err error
			if names, err = o.namespaces(ctx); err != nil {
				return struct{}{}, err
			}
		}
		for _, n := range names {
			dm, err := o.dmap(respPrefix + n)
			if err != nil {
				return struct{}{}, err
			}
			if err := dm.Destroy(ctx); err != nil {
				return struct{}{}, fmt.Errorf("destroy %s%s: %w", respPrefix, n, err)
			}
		}
		return struct{}{}, nil
	})
	return err
}

// namespaces lists every namespace any member has registered.
func (o *olricStore) namespaces(ctx context.Context) ([]string, error) {
	dm, err := o.ownerDMap(metaDMap)
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
	o.known.Range(func(k, _ any) bool {
		if n := k.(string); !slices.Contains(names, n) {
			names = append(names, n)
		}
		return true
	})
	return names, nil
}

func (o *olricStore) incr(ctx context.Context, ns, key string, delta int, ttl time.Duration) (int, error) {
	return call(o, ctx, o.cfg.OpTimeout, "incr "+ctrPrefix+ns, func(ctx context.Context) (int, error) {
		dm, err := o.ownerDMap(ctrPrefix + ns)
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

func (o *olricStore) lock(ctx context.Context, ns, key string, lease time.Duration) (func(context.Context) error, error) {
	lc, err := call(o, ctx, o.cfg.OpTimeout, "lock "+lockPrefix+ns, func(ctx context.Context) (olric.LockContext, error) {
		dm, err := o.dmap(lockPrefix + ns)
		if err != nil {
			return nil, err
		}
		// A zero deadline: one attempt, no waiting.
		return dm.LockWithTimeout(ctx, key, max(lease, time.Millisecond), 0)
	})
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		_, err := call(o, ctx, o.cfg.OpTimeout, "unlock "+lockPrefix+ns, func(ctx context.Context) (struct{}, error) {
			return struct{}{}, lc.Unlock(ctx)
		})
		return err
	}, nil
}

func (o *olricStore) members() int {
	if !o.ready.Load() {
		return 0
	}
	ms, err := o.embedded.Members(context.Background())
	if err != nil {
		return 0
	}
	return len(ms)
}

func (o *olricStore) expected() int {
	if !o.ready.Load() {
		return 0
	}
	return 1 + len(o.disc.list())
}

func (o *olricStore) usage() (int64, int64) { return 0, 0 }

func (o *olricStore) close(ctx context.Context) error {
	o.startMu.Lock()
	defer o.startMu.Unlock()
	if !o.begun {
		o.begun = true
		_ = o.reserve.Close()
		shutdownTransport(o.transport)
		return nil
	}
	if !o.ready.Swap(false) {
		return nil // a failed start already cleaned up
	}
	o.stopBG()
	o.bg.Wait()
	var errs []error
	if err := o.cluster.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("cluster client: %w", err))
	}
	if err := o.db.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("olric shutdown: %w", err))
	}
	select {
	case <-o.running:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("olric did not stop: %w", ctx.Err()))
	}
	shutdownTransport(o.transport)
	return errors.Join(errs...)
}
