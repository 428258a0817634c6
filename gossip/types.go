package gossip

import (
	"errors"
	"fmt"
	"maps"
	"time"
)

// Errors returned by this package. Callers match them with errors.Is.
var (
	// ErrMetaTooLarge means the encoded node metadata would exceed
	// memberlist's 512-byte limit (MetaMaxSize); shorten the addresses or
	// the version string.
	ErrMetaTooLarge = errors.New("gossip: node metadata exceeds 512 bytes")

	// ErrLoadTooLarge means a Load breaks one of the caps that keep load
	// messages decodable by every peer (MaxModels, MaxNameLen).
	ErrLoadTooLarge = errors.New("gossip: load report too large")

	// ErrMalformed means a received message, metadata blob or push-pull
	// state could not be decoded. Such input is dropped, never trusted.
	ErrMalformed = errors.New("gossip: malformed message")

	// ErrInvalidKey means gossip.encrypt_key is not base64 of a 16, 24 or
	// 32 byte AES key.
	ErrInvalidKey = errors.New("invalid gossip.encrypt_key")

	// ErrInvalidConfig means a Config field other than the key is unusable;
	// the wrapping error names the field.
	ErrInvalidConfig = errors.New("invalid gossip config")

	// ErrLikelyKeyMismatch is wrapped into a Join error when the peer
	// answered but the handshake failed as different (or missing)
	// gossip.encrypt_key values make it fail.
	ErrLikelyKeyMismatch = errors.New("likely gossip.encrypt_key mismatch between this node and the peer")

	// ErrClosed is returned by calls made after Shutdown.
	ErrClosed = errors.New("gossip: shut down")

	// ErrLeft is returned by Join and UpdateMeta after Leave: memberlist
	// cannot rejoin with the same instance; create a new one.
	ErrLeft = errors.New("gossip: node has left the cluster")
)

// Meta is a node's identity, carried in memberlist node metadata. It changes
// rarely; anything that changes with traffic belongs in Load. Its encoding
// must fit memberlist's 512-byte metadata limit: New and UpdateMeta return
// ErrMetaTooLarge otherwise.
type Meta struct {
	// HTTPAddr is where the node serves the OpenAI-style API (host:port).
	HTTPAddr string
	// RaftAddr is the node's Raft transport address (host:port).
	RaftAddr string
	// CacheAddr is the node's Olric client address (host:port).
	CacheAddr string
	// CacheGossipAddr is Olric's own memberlist address (host:port).
	CacheGossipAddr string
	// Version is the shoal build version.
	Version string
	// BootstrapExpect is the node's raft.bootstrap_expect (0: not set).
	BootstrapExpect int
	// RaftHasState says the node already has Raft state on disk, so a
	// node doing bootstrap_expect knows a cluster exists and must not
	// bootstrap a second one.
	RaftHasState bool
}

// ModelLoad is the load of one model on one node.
type ModelLoad struct {
	// QueueDepth is the number of requests waiting for a batch slot.
	QueueDepth int
	// ActiveBatches is the number of batches running now.
	ActiveBatches int
	// Slots is the number of requests the node can run at once.
	Slots int
	// InFlight is the number of requests running now.
	InFlight int
	// TokensPerSec is the recent generation throughput.
	TokensPerSec float64
	// MaxBatch is the most requests in one batch (or running sequences).
	MaxBatch int
	// ServiceBase and ServicePerItem are the node's measured batch cost,
	// base + per-item*size, so routers can predict when one more request
	// would finish there; zero until measured.
	ServiceBase    time.Duration
	ServicePerItem time.Duration
	// Prefix summarises the prompt prefixes the node served recently (and
	// so likely holds in its KV cache); opaque here, at most
	// MaxPrefixSummary bytes. A string so that loads stay comparable.
	Prefix string
}

// GPU is a node's accelerator capacity and use.
type GPU struct {
	// Count is the number of GPUs (0 on a CPU-only node).
	Count int
	// MemoryTotalMB is the total GPU memory over all GPUs.
	MemoryTotalMB int
	// MemoryFreeMB is the free GPU memory over all GPUs.
	MemoryFreeMB int
	// UtilizationPct is the mean GPU utilization, 0-100.
	UtilizationPct float64
}

// Load is what a node reports about its work. Models is keyed by model name.
type Load struct {
	Models map[string]ModelLoad
	GPU    GPU
	// Seq orders a sender's reports; receivers ignore a report whose Seq
	// is lower than one they already hold. SetLoad assigns it.
	Seq uint64
}

// clone returns a copy that shares nothing mutable with l.
func (l Load) clone() Load {
	l.Models = maps.Clone(l.Models)
	return l
}

// State is a member's liveness as this node sees it.
type State int

// Member states. Only StateAlive members should receive work.
const (
	// StateAlive: memberlist considers the node alive and its load
	// reports are arriving.
	StateAlive State = iota
	// StateSuspect: memberlist still lists the node, but no load report
	// arrived for Config.SuspectAfter. memberlist v0.5.4 does not expose
	// its own suspicion state (its Node.State is never updated), so this
	// is the stand-in; it usually fires before memberlist declares the
	// node dead. A fresh load report returns the member to StateAlive.
	StateSuspect
	// StateDead: memberlist's failure detector declared the node failed.
	StateDead
	// StateLeft: the node left gracefully (Leave).
	StateLeft
)

// Listed reports whether memberlist still lists the member (alive or
// suspect): it may be up and answering, though only an alive one gets work.
func (s State) Listed() bool { return s == StateAlive || s == StateSuspect }

// String returns the lower-case state name.
func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	default:
		return fmt.Sprintf("state(%d)", int(s))
	}
}

// Member is a snapshot of one cluster member as this node sees it. It
// shares nothing with the Gossip's state: modifying it is safe.
type Member struct {
	// Name is the unique node name.
	Name string
	// Addr is the member's gossip address (host:port).
	Addr string
	// Meta is the member's identity; zero if its metadata was undecodable.
	Meta Meta
	// State is the member's liveness.
	State State
	// StateChanged is when this node saw State change (local clock).
	StateChanged time.Time
	// Load is the latest load report received (zero until the first).
	Load Load
	// LoadUpdated is when that report was produced, on the local clock:
	// the receipt time for direct messages, receipt time minus the age the
	// sender reported for loads learned second-hand via push-pull. Zero
	// until the first report.
	LoadUpdated time.Time
}

// EventType says what happened to a member.
type EventType int

// Event types, in no particular order of severity.
const (
	// EventJoin: a member joined (or rejoined after Dead/Left).
	EventJoin EventType = iota
	// EventUpdate: a member's Meta or address changed, or it returned to
	// StateAlive from StateSuspect.
	EventUpdate
	// EventLoad: a newer load report (higher Seq) arrived.
	EventLoad
	// EventSuspect: a member's load reports stopped (StateSuspect).
	EventSuspect
	// EventFailed: memberlist declared a member dead (StateDead).
	EventFailed
	// EventLeft: a member left gracefully (StateLeft).
	EventLeft
)

// String returns the lower-case event name.
func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLoad:
		return "load"
	case EventSuspect:
		return "suspect"
	case EventFailed:
		return "failed"
	case EventLeft:
		return "left"
	default:
		return fmt.Sprintf("event(%d)", int(t))
	}
}

// Event reports a change to one member; Member is its state right after.
type Event struct {
	Type   EventType
	Member Member
}
