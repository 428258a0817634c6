package gossip

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultBindAddr is memberlist's customary gossip port on all interfaces.
	DefaultBindAddr = "0.0.0.0:7946"
	// DefaultLoadInterval is the periodic full load refresh.
	DefaultLoadInterval = time.Second
	// DefaultMinPushInterval is the least time between two load pushes:
	// a change is sent at once unless one was sent less than this ago,
	// in which case the changes are coalesced and sent when it elapses.
	DefaultMinPushInterval = 25 * time.Millisecond
	// DefaultSuspectFactor times the sender's load interval without a load
	// report marks a member StateSuspect.
	DefaultSuspectFactor = 3
	// DefaultRetainGone is how long Dead and Left members stay in Members,
	// so Raft membership reconciliation can see them (as Consul's
	// reconnect_timeout); consensus should remove dead servers sooner.
	DefaultRetainGone = 72 * time.Hour
	// DefaultEventBuffer is the channel capacity of each subscription.
	DefaultEventBuffer = 256
	// DefaultAllToAllMax is the most live peers for which every load
	// change is pushed to every peer; past it loads are pulled on demand.
	// clustersim finds both equal on p99 at small sizes; all-to-all costs
	// about 5 messages a second per peer at its workload (38 at 8 peers,
	// 84 at 16), pulling about 15 whatever the size.
	DefaultAllToAllMax = 8
	// DefaultFanout is how many random peers get each periodic push past
	// AllToAllMax.
	DefaultFanout = 3
	// DefaultPullRate caps the load pulls a node sends per second; with
	// the answers it gets and the fanout pushes, a node sends under 50
	// load messages a second on average.
	DefaultPullRate = 20
	// DefaultPullReuse is how old a pulled load may be for Sample to
	// reuse it once PullRate is spent.
	DefaultPullReuse = 250 * time.Millisecond
	// DefaultPullTimeout is how long Sample waits for pulled loads.
	DefaultPullTimeout = 20 * time.Millisecond
	// DefaultBroadcastTimeout bounds UpdateMeta's wait for its broadcast
	// when the context has no deadline.
	DefaultBroadcastTimeout = 5 * time.Second
)

// Config configures a Gossip. Zero fields take the defaults above.
type Config struct {
	// Name is the node's unique name in the cluster (required, at most
	// MaxNameLen bytes).
	Name string

	// BindAddr is the host:port memberlist listens on, UDP and TCP. Port 0
	// picks a free port; LocalAddr reports it. Default DefaultBindAddr.
	BindAddr string

	// AdvertiseAddr is the host or host:port other nodes should use to
	// reach this one, when it differs from the bound address (NAT,
	// containers). Without a port, or when BindAddr's port is 0, the bound
	// port is advertised (memberlist overrides it).
	AdvertiseAddr string

	// EncryptKey is gossip.encrypt_key: a base64 AES-128/192/256 key as
	// `consul keygen` makes. Empty means no encryption. Every node of a
	// cluster must use the same key; a node with another key cannot join.
	EncryptKey string

	// Meta is this node's identity, advertised in memberlist metadata.
	Meta Meta

	// LoadInterval is the periodic full load refresh, which also serves as
	// a heartbeat: see SuspectAfter. Default DefaultLoadInterval.
	LoadInterval time.Duration

	// MinPushInterval rate-limits load pushes on change. Default
	// DefaultMinPushInterval.
	MinPushInterval time.Duration

	// SuspectAfter is how long a member may go without a load report
	// before it is StateSuspect. Default DefaultSuspectFactor times the
	// sender's load interval (its own cadence, carried in each report).
	SuspectAfter time.Duration

	// AllToAllMax is the most live peers for which loads are pushed to
	// every peer on change; past it a node pushes every LoadInterval to
	// Fanout random peers and routers pull loads with Sample. Default
	// DefaultAllToAllMax; negative means always sample.
	AllToAllMax int
	// Fanout is how many random peers get each periodic push when
	// sampling. Default DefaultFanout.
	Fanout int
	// PullRate caps Sample's pulls per second. Default DefaultPullRate.
	PullRate float64
	// PullTimeout is Sample's longest wait for answers. Default
	// DefaultPullTimeout.
	PullTimeout time.Duration
	// PullReuse is how old a pulled load may be for Sample to reuse it
	// once PullRate is spent. Default DefaultPullReuse.
	PullReuse time.Duration

	// RetainGone is how long Dead and Left members stay listed. Default
	// DefaultRetainGone.
	RetainGone time.Duration

	// EventBuffer is each subscription's channel capacity; events to a
	// full channel are dropped and counted. Default DefaultEventBuffer.
	EventBuffer int

	// Tune, if set, adjusts the memberlist profile, which starts as
	// memberlist.DefaultLANConfig(). Tests use it to tighten probe and
	// gossip intervals. It runs before New sets the fields it owns (name,
	// addresses, delegates, logger, key), which Tune cannot override.
	Tune func(*memberlist.Config)

	// Logger receives this package's logs and memberlist's, under
	// component=gossip. Nil discards them.
	Logger *slog.Logger
}

// withDefaults returns cfg with defaults applied and checks it.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Name == "" {
		return cfg, fmt.Errorf("%w: gossip name is empty", ErrInvalidConfig)
	}
	if len(cfg.Name) > MaxNameLen {
		return cfg, fmt.Errorf("%w: gossip name is %d bytes (max %d)", ErrInvalidConfig, len(cfg.Name), MaxNameLen)
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = DefaultBindAddr
	}
	if cfg.LoadInterval == 0 {
		cfg.LoadInterval = DefaultLoadInterval
	}
	if cfg.MinPushInterval == 0 {
		cfg.MinPushInterval = DefaultMinPushInterval
	}
	if cfg.RetainGone == 0 {
		cfg.RetainGone = DefaultRetainGone
	}
	if cfg.AllToAllMax == 0 {
		cfg.AllToAllMax = DefaultAllToAllMax
	}
	if cfg.Fanout == 0 {
		cfg.Fanout = DefaultFanout
	}
	if cfg.PullRate == 0 {
		cfg.PullRate = DefaultPullRate
	}
	if cfg.PullTimeout == 0 {
		cfg.PullTimeout = DefaultPullTimeout
	}
	if cfg.PullReuse == 0 {
		cfg.PullReuse = DefaultPullReuse
	}
	if cfg.Fanout < 0 || cfg.PullRate < 0 || cfg.PullTimeout < 0 || cfg.PullReuse < 0 {
		return cfg, fmt.Errorf("%w: gossip fanout, pull_rate, pull_timeout and pull_reuse must not be negative", ErrInvalidConfig)
	}
	if cfg.EventBuffer == 0 {
		cfg.EventBuffer = DefaultEventBuffer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"load_interval", cfg.LoadInterval},
		{"min_push_interval", cfg.MinPushInterval},
		{"suspect_after", cfg.SuspectAfter},
		{"retain_gone", cfg.RetainGone},
	} {
		if d.v < 0 {
			return cfg, fmt.Errorf("%w: gossip.%s is negative (%v)", ErrInvalidConfig, d.name, d.v)
		}
	}
	if cfg.LoadInterval < time.Millisecond {
		return cfg, fmt.Errorf("%w: gossip.load_interval %v is under 1ms", ErrInvalidConfig, cfg.LoadInterval)
	}
	if cfg.EventBuffer < 0 {
		return cfg, fmt.Errorf("%w: gossip.event_buffer is negative", ErrInvalidConfig)
	}
	return cfg, nil
}

// ParseKey decodes gossip.encrypt_key: base64 (standard encoding, as
// `consul keygen` prints) of a 16, 24 or 32 byte AES key. An empty string
// means no encryption and returns nil.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64: %v", ErrInvalidKey, err)
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	default:
		return nil, fmt.Errorf("%w: decodes to %d bytes, want 16, 24 or 32 (AES-128/192/256)", ErrInvalidKey, len(key))
	}
}

// splitHostPort parses "host:port" with a numeric port.
func splitHostPort(field, addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%w: gossip.%s %q: %v", ErrInvalidConfig, field, addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%w: gossip.%s %q: bad port", ErrInvalidConfig, field, addr)
	}
	return host, port, nil
}

// memberlistConfig builds memberlist's config from cfg.
func (cfg Config) memberlistConfig(key []byte) (*memberlist.Config, error) {
	mc := memberlist.DefaultLANConfig()
	if cfg.Tune != nil {
		cfg.Tune(mc)
	}
	host, port, err := splitHostPort("bind_addr", cfg.BindAddr)
	if err != nil {
		return nil, err
	}
	mc.Name = cfg.Name
	mc.BindAddr = host
	mc.BindPort = port
	mc.AdvertiseAddr = ""
	mc.AdvertisePort = port
	if cfg.AdvertiseAddr != "" {
		if strings.Contains(cfg.AdvertiseAddr, ":") && !strings.HasPrefix(cfg.AdvertiseAddr, "[") && net.ParseIP(cfg.AdvertiseAddr) != nil {
			// A bare IPv6 address.
			mc.AdvertiseAddr = cfg.AdvertiseAddr
		} else if h, p, err := net.SplitHostPort(cfg.AdvertiseAddr); err == nil {
			pn, err := strconv.Atoi(p)
			if err != nil || pn <= 0 || pn > 65535 {
				return nil, fmt.Errorf("%w: gossip.advertise_addr %q: bad port", ErrInvalidConfig, cfg.AdvertiseAddr)
			}
			mc.AdvertiseAddr, mc.AdvertisePort = h, pn
		} else {
			mc.AdvertiseAddr = cfg.AdvertiseAddr
		}
		if net.ParseIP(mc.AdvertiseAddr) == nil {
			// memberlist needs an IP here; resolve a host name once.
			ips, err := net.LookupIP(mc.AdvertiseAddr)
			if err != nil || len(ips) == 0 {
				return nil, fmt.Errorf("%w: gossip.advertise_addr %q does not resolve: %v", ErrInvalidConfig, cfg.AdvertiseAddr, err)
			}
			mc.AdvertiseAddr = ips[0].String()
		}
	}
	mc.SecretKey = key
	mc.Keyring = nil
	mc.LogOutput = nil
	mc.Logger = newMemberlistLogger(cfg.Logger)
	mc.DelegateProtocolVersion = 1
	mc.DelegateProtocolMin = 1
	mc.DelegateProtocolMax = 1
	return mc, nil
}
