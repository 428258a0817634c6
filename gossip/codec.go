package gossip

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// Wire formats. Every format starts with a version or type byte and is
// decoded as a prefix: bytes after the known fields are ignored, so a later
// version may append fields without breaking older nodes. Integers are
// varints, floats are IEEE-754 little-endian, strings are length-prefixed.

// Caps that every decoder enforces, so a hostile or corrupt peer cannot make
// a node allocate without bound.
const (
	// MetaMaxSize is memberlist's limit on node metadata.
	MetaMaxSize = memberlist.MetaMaxSize
	// MaxNameLen caps node and model names in load messages.
	MaxNameLen = 256
	// MaxModels caps the models in one load report.
	MaxModels = 1024
	// MaxPrefixSummary caps one model's ModelLoad.Prefix.
	MaxPrefixSummary = 8 << 10
	// maxExtSize caps one model's extension record.
	maxExtSize = MaxPrefixSummary + 64
	// maxStateEntries caps the loads in one push-pull state.
	maxStateEntries = 4096
	// maxMessageSize caps a user message or push-pull state we decode.
	maxMessageSize = 4 << 20
)

const (
	metaVersion  byte = 1
	stateVersion byte = 1

	// User message types: the first byte of every NotifyMsg payload.
	msgLoad  byte = 1
	msgLeave byte = 2

	flagRaftHasState byte = 1 << 0
)

// encodeMeta returns the compact encoding of m, or ErrMetaTooLarge if it
// would not fit memberlist's metadata limit.
func encodeMeta(m Meta) ([]byte, error) {
	strs := []string{m.HTTPAddr, m.RaftAddr, m.CacheAddr, m.CacheGossipAddr, m.Version}
	total := 0
	for _, s := range strs {
		total += len(s)
	}
	if total > MetaMaxSize {
		// Fail before allocating for an absurd input.
		return nil, fmt.Errorf("%w: strings alone are %d bytes", ErrMetaTooLarge, total)
	}
	b := make([]byte, 0, total+32)
	b = append(b, metaVersion)
	for _, s := range strs {
		b = appendString(b, s)
	}
	b = binary.AppendVarint(b, int64(m.BootstrapExpect))
	var flags byte
	if m.RaftHasState {
		flags |= flagRaftHasState
	}
	b = append(b, flags)
	if len(b) > MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrMetaTooLarge, len(b))
	}
	return b, nil
}

// decodeMeta parses encodeMeta's output. It never panics.
func decodeMeta(b []byte) (Meta, error) {
	if len(b) > MetaMaxSize {
		return Meta{}, fmt.Errorf("%w: metadata of %d bytes", ErrMalformed, len(b))
	}
	r := reader{b: b}
	if v := r.byte(); r.err == nil && v != metaVersion {
		return Meta{}, fmt.Errorf("%w: metadata version %d", ErrMalformed, v)
	}
	var m Meta
	m.HTTPAddr = r.string(MetaMaxSize)
	m.RaftAddr = r.string(MetaMaxSize)
	m.CacheAddr = r.string(MetaMaxSize)
	m.CacheGossipAddr = r.string(MetaMaxSize)
	m.Version = r.string(MetaMaxSize)
	m.BootstrapExpect = r.int()
	m.RaftHasState = r.byte()&flagRaftHasState != 0
	if r.err != nil {
		return Meta{}, fmt.Errorf("%w: metadata: %v", ErrMalformed, r.err)
	}
	return m, nil
}

// loadEntry is one node's load as carried in a message or push-pull state.
type loadEntry struct {
	Name string
	Load Load // Load.Seq is the sender's sequence number
	// Interval is the sender's periodic refresh interval, so receivers can
	// judge staleness by the sender's own cadence.
	Interval time.Duration
	// Age is how old the report was when sent (zero for direct messages;
	// the relay's view of its age for push-pull).
	Age time.Duration
}

// validateLoad checks the caps a load must meet to be sent.
func validateLoad(l Load) error {
	if len(l.Models) > MaxModels {
		return fmt.Errorf("%w: %d models (max %d)", ErrLoadTooLarge, len(l.Models), MaxModels)
	}
	for name, m := range l.Models {
		if len(name) > MaxNameLen {
			return fmt.Errorf("%w: model name of %d bytes (max %d)", ErrLoadTooLarge, len(name), MaxNameLen)
		}
		if len(m.Prefix) > MaxPrefixSummary {
			return fmt.Errorf("%w: prefix summary of %d bytes for %q (max %d)", ErrLoadTooLarge, len(m.Prefix), name, MaxPrefixSummary)
		}
	}
	return nil
}

// appendLoadEntry appends e's encoding (without a type byte). Models are
// sorted so the encoding is deterministic.
func appendLoadEntry(b []byte, e loadEntry) []byte {
	b = appendString(b, e.Name)
	b = binary.AppendUvarint(b, e.Load.Seq)
	b = binary.AppendUvarint(b, uint64(max(e.Interval, 0)/time.Millisecond))
	b = binary.AppendUvarint(b, uint64(max(e.Age, 0)/time.Millisecond))
	g := e.Load.GPU
	b = binary.AppendVarint(b, int64(g.Count))
	b = binary.AppendVarint(b, int64(g.MemoryTotalMB))
	b = binary.AppendVarint(b, int64(g.MemoryFreeMB))
	b = appendFloat(b, g.UtilizationPct)
	names := sortedModels(e.Load.Models)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, name := range names {
		m := e.Load.Models[name]
		b = appendString(b, name)
		b = binary.AppendVarint(b, int64(m.QueueDepth))
		b = binary.AppendVarint(b, int64(m.ActiveBatches))
		b = binary.AppendVarint(b, int64(m.Slots))
		b = binary.AppendVarint(b, int64(m.InFlight))
		b = appendFloat(b, m.TokensPerSec)
	}
	return b
}

// readLoadEntry decodes one entry; errors are left in r.err.
func readLoadEntry(r *reader) loadEntry {
	var e loadEntry
	e.Name = r.string(MaxNameLen)
	e.Load.Seq = r.uvarint()
	e.Interval = r.millis()
	e.Age = r.millis()
	e.Load.GPU.Count = r.int()
	e.Load.GPU.MemoryTotalMB = r.int()
	e.Load.GPU.MemoryFreeMB = r.int()
	e.Load.GPU.UtilizationPct = r.float()
	n := r.count(MaxModels)
	if n > 0 {
		e.Load.Models = make(map[string]ModelLoad, n)
	}
	for i := 0; i < n && r.err == nil; i++ {
		name := r.string(MaxNameLen)
		var m ModelLoad
		m.QueueDepth = r.int()
		m.ActiveBatches = r.int()
		m.Slots = r.int()
		m.InFlight = r.int()
		m.TokensPerSec = r.float()
		if _, dup := e.Load.Models[name]; dup && r.err == nil {
			r.err = fmt.Errorf("duplicate model %q", name)
		}
		e.Load.Models[name] = m
	}
	if r.err == nil && e.Name == "" {
		r.err = fmt.Errorf("empty node name")
	}
	return e
}

// Load extensions: fields added after the first release travel in a
// trailer after the entries (a load message's one entry, or all of a
// push-pull state's), because bytes inside an entry would shift the fields
// an older decoder reads next, while a trailer is ignored by it. The
// trailer holds, per entry, the model count and then one length-prefixed
// record per model in wire (sorted) order; a record's own later fields are
// ignored by decoders that know fewer.

// appendLoadExt appends e's extension records.
func appendLoadExt(b []byte, e loadEntry) []byte {
	names := sortedModels(e.Load.Models)
	b = binary.AppendUvarint(b, uint64(len(names)))
	var rec []byte
	for _, name := range names {
		m := e.Load.Models[name]
		rec = rec[:0]
		rec = binary.AppendUvarint(rec, uint64(max(m.ServiceBase, 0)/time.Microsecond))
		rec = binary.AppendUvarint(rec, uint64(max(m.ServicePerItem, 0)/time.Microsecond))
		rec = binary.AppendVarint(rec, int64(m.MaxBatch))
		rec = appendString(rec, m.Prefix)
		b = binary.AppendUvarint(b, uint64(len(rec)))
		b = append(b, rec...)
	}
	return b
}

// readLoadExt reads e's extension records into its models (matched in
// sorted order, as the encoder writes them); errors are left in r.err.
func readLoadExt(r *reader, e *loadEntry) {
	names := sortedModels(e.Load.Models)
	n := r.count(MaxModels)
	if r.err == nil && n != len(names) {
		r.fail("extension for %d models, entry has %d", n, len(names))
		return
	}
	for i := 0; i < n && r.err == nil; i++ {
		rec := reader{b: r.bytes(maxExtSize)}
		m := e.Load.Models[names[i]]
		m.ServiceBase = rec.micros()
		m.ServicePerItem = rec.micros()
		m.MaxBatch = rec.int()
		m.Prefix = rec.string(MaxPrefixSummary)
		if rec.err != nil {
			r.fail("model %q extension: %v", names[i], rec.err)
			return
		}
		e.Load.Models[names[i]] = m
	}
}

func sortedModels(models map[string]ModelLoad) []string {
	names := make([]string, 0, len(models))
	for name := range models {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// encodeLoadMsg returns the user message carrying e.
func encodeLoadMsg(e loadEntry) []byte {
	return appendLoadExt(appendLoadEntry([]byte{msgLoad}, e), e)
}

// decodeLoadMsg parses a load message body (after the type byte). A message
// from an older node has no extension trailer.
func decodeLoadMsg(b []byte) (loadEntry, error) {
	r := reader{b: b}
	e := readLoadEntry(&r)
	if r.err == nil && len(r.b) > 0 {
		readLoadExt(&r, &e)
	}
	if r.err != nil {
		return loadEntry{}, fmt.Errorf("%w: load: %v", ErrMalformed, r.err)
	}
	return e, nil
}

// encodeLeaveMsg returns the user message announcing that name is leaving.
func encodeLeaveMsg(name string) []byte {
	return appendString([]byte{msgLeave}, name)
}

// decodeLeaveMsg parses a leave message body (after the type byte).
func decodeLeaveMsg(b []byte) (string, error) {
	r := reader{b: b}
	name := r.string(MaxNameLen)
	if r.err == nil && name == "" {
		r.err = fmt.Errorf("empty node name")
	}
	if r.err != nil {
		return "", fmt.Errorf("%w: leave: %v", ErrMalformed, r.err)
	}
	return name, nil
}

// encodeState returns the push-pull state: every load this node knows.
func encodeState(entries []loadEntry) []byte {
	b := []byte{stateVersion}
	b = binary.AppendUvarint(b, uint64(len(entries)))
	for _, e := range entries {
		b = appendLoadEntry(b, e)
	}
	for _, e := range entries {
		b = appendLoadExt(b, e)
	}
	return b
}

// decodeState parses encodeState's output. It never panics.
func decodeState(b []byte) ([]loadEntry, error) {
	if len(b) > maxMessageSize {
		return nil, fmt.Errorf("%w: state of %d bytes", ErrMalformed, len(b))
	}
	r := reader{b: b}
	if v := r.byte(); r.err == nil && v != stateVersion {
		return nil, fmt.Errorf("%w: state version %d", ErrMalformed, v)
	}
	n := r.count(maxStateEntries)
	entries := make([]loadEntry, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		entries = append(entries, readLoadEntry(&r))
	}
	if r.err == nil && len(r.b) > 0 {
		for i := range entries {
			readLoadExt(&r, &entries[i])
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: state: %v", ErrMalformed, r.err)
	}
	return entries, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendFloat(b []byte, f float64) []byte {
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
}

// reader decodes the primitives above. The first error sticks and later
// reads return zero values, so decoders check r.err once at the end.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 1 {
		r.fail("truncated")
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad uvarint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) int() int {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	if v < math.MinInt || v > math.MaxInt {
		r.fail("integer out of range")
		return 0
	}
	r.b = r.b[n:]
	return int(v)
}

// count reads a length and checks it against limit and the bytes left
// (every counted item takes at least one byte), so a tiny message cannot
// announce a huge allocation.
func (r *reader) count(limit int) int {
	v := r.uvarint()
	if r.err != nil {
		return 0
	}
	if v > uint64(limit) || v > uint64(len(r.b)) {
		r.fail("count %d over limit", v)
		return 0
	}
	return int(v)
}

func (r *reader) string(limit int) string {
	n := r.count(limit)
	if r.err != nil {
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// bytes reads a length-prefixed byte string, sharing r's buffer.
func (r *reader) bytes(limit int) []byte {
	n := r.count(limit)
	if r.err != nil {
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// micros reads a uvarint count of microseconds, capped at a day.
func (r *reader) micros() time.Duration {
	v := r.uvarint()
	if v > uint64(24*time.Hour/time.Microsecond) {
		v = uint64(24 * time.Hour / time.Microsecond)
	}
	return time.Duration(v) * time.Microsecond
}

func (r *reader) float() float64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.fail("truncated float")
		return 0
	}
	f := math.Float64frombits(binary.LittleEndian.Uint64(r.b))
	r.b = r.b[8:]
	if math.IsNaN(f) || math.IsInf(f, 0) {
		r.fail("non-finite float")
		return 0
	}
	return f
}

// millis reads a uvarint count of milliseconds, capped at a day so the
// conversion cannot overflow.
func (r *reader) millis() time.Duration {
	v := r.uvarint()
	if v > uint64(24*time.Hour/time.Millisecond) {
		v = uint64(24 * time.Hour / time.Millisecond)
	}
	return time.Duration(v) * time.Millisecond
}
