package gossip

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMetaRoundTrip(t *testing.T) {
	cases := map[string]Meta{
		"zero": {},
		"full": testConfig("n0").Meta,
		"ipv6 and flags": {
			HTTPAddr: "[::1]:8080", RaftAddr: "[fe80::1%eth0]:8300", Version: "v1.2.3-rc.1+abc",
			BootstrapExpect: -1, RaftHasState: true,
		},
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			b, err := encodeMeta(m)
			require.NoError(t, err)
			require.LessOrEqual(t, len(b), MetaMaxSize)
			got, err := decodeMeta(b)
			require.NoError(t, err)
			require.Equal(t, m, got)
		})
	}
}

func TestEncodeMetaLimit(t *testing.T) {
	// Version byte, five one-byte length prefixes, a one-byte varint and the
	// flags byte leave room for this many string bytes.
	fits := MetaMaxSize - 8 - 1 // the version string needs a two-byte length once over 127
	m := Meta{Version: strings.Repeat("v", fits)}
	b, err := encodeMeta(m)
	require.NoError(t, err)
	require.Equal(t, MetaMaxSize, len(b))

	m.Version += "v"
	_, err = encodeMeta(m)
	require.ErrorIs(t, err, ErrMetaTooLarge)

	_, err = encodeMeta(Meta{HTTPAddr: strings.Repeat("x", 1<<20)})
	require.ErrorIs(t, err, ErrMetaTooLarge)
}

func TestDecodeMetaRejects(t *testing.T) {
	good, err := encodeMeta(testConfig("n0").Meta)
	require.NoError(t, err)
	cases := map[string][]byte{
		"empty":         nil,
		"wrong version": append([]byte{9}, good[1:]...),
		"truncated":     good[:len(good)-3],
		"too long":      make([]byte, MetaMaxSize+1),
		"huge length":   {metaVersion, 0xff, 0xff, 0xff, 0xff, 0x0f},
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := decodeMeta(b)
			require.ErrorIs(t, err, ErrMalformed)
		})
	}
}

func TestDecodeMetaIgnoresAppendedFields(t *testing.T) {
	m := testConfig("n0").Meta
	b, err := encodeMeta(m)
	require.NoError(t, err)
	got, err := decodeMeta(append(b, 1, 2, 3))
	require.NoError(t, err)
	require.Equal(t, m, got)
}

func TestLoadMessageRoundTrip(t *testing.T) {
	cases := map[string]loadEntry{
		"empty load": {Name: "a", Load: Load{Seq: 1}},
		"full": {Name: "node-1", Load: func() Load {
			l := sampleLoad(3)
			l.Seq = math.MaxUint64
			return l
		}(), Interval: time.Second, Age: 1500 * time.Millisecond},
		"negative counters": {Name: "n", Load: Load{Models: map[string]ModelLoad{"m": {QueueDepth: -1}}, GPU: GPU{Count: -2}}},
	}
	for name, e := range cases {
		t.Run(name, func(t *testing.T) {
			msg := encodeLoadMsg(e)
			require.Equal(t, msgLoad, msg[0])
			got, err := decodeLoadMsg(msg[1:])
			require.NoError(t, err)
			require.Equal(t, e, got)
		})
	}
}

func TestSampleLoadFitsOnePacket(t *testing.T) {
	msg := encodeLoadMsg(loadEntry{Name: "node-with-a-long-name-01", Load: sampleLoad(1000), Interval: time.Second})
	require.Less(t, len(msg), 200)
}

func TestDecodeLoadRejects(t *testing.T) {
	good := encodeLoadMsg(loadEntry{Name: "n0", Load: sampleLoad(1)})[1:]
	nan := encodeLoadMsg(loadEntry{Name: "n0", Load: Load{GPU: GPU{UtilizationPct: math.NaN()}}})[1:]
	// Two models with the same name.
	dup := appendLoadEntry(nil, loadEntry{Name: "n0"})
	dup = dup[:len(dup)-1] // drop the zero model count
	dup = append(dup, 2)
	for range 2 {
		dup = appendString(dup, "m")
		dup = append(dup, 0, 0, 0, 0)
		dup = appendFloat(dup, 1)
	}
	cases := map[string][]byte{
		"empty":           nil,
		"truncated":       good[:len(good)-1],
		"empty name":      encodeLoadMsg(loadEntry{Name: ""})[1:],
		"non-finite":      nan,
		"duplicate model": dup,
		"model count over cap": func() []byte {
			b := appendLoadEntry(nil, loadEntry{Name: "n0"})
			b = b[:len(b)-1]
			return binary.AppendUvarint(b, MaxModels+1)
		}(),
		"name over cap": appendString(nil, strings.Repeat("n", MaxNameLen+1)),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := decodeLoadMsg(b)
			require.ErrorIs(t, err, ErrMalformed)
		})
	}
}

func TestStateRoundTrip(t *testing.T) {
	entries := []loadEntry{
		{Name: "a", Load: sampleLoad(1), Interval: time.Second},
		{Name: "b", Load: Load{Seq: 9}, Interval: 200 * time.Millisecond, Age: 3 * time.Second},
	}
	got, err := decodeState(encodeState(entries))
	require.NoError(t, err)
	require.Equal(t, entries, got)

	empty, err := decodeState(encodeState(nil))
	require.NoError(t, err)
	require.Empty(t, empty)

	_, err = decodeState([]byte{stateVersion, 0xff, 0xff, 0x03})
	require.ErrorIs(t, err, ErrMalformed, "an entry count larger than the bytes left")
	_, err = decodeState([]byte{7, 0})
	require.ErrorIs(t, err, ErrMalformed)
}

// Fields added after the first release travel in a trailer: an older
// node's decoder (which reads the entries only) still parses a newer node's
// messages and state, and a newer decoder parses an older node's with the
// new fields zero.
func TestLoadExtensionIsBackwardCompatible(t *testing.T) {
	withExt := loadEntry{Name: "a", Load: sampleLoad(2), Interval: time.Second}
	old := withExt
	old.Load = old.Load.clone()
	for name, m := range old.Load.Models {
		m.MaxBatch, m.ServiceBase, m.ServicePerItem, m.Prefix = 0, 0, 0, ""
		old.Load.Models[name] = m
	}

	// Old decoder, new message: readLoadEntry alone is the old decoder.
	r := reader{b: encodeLoadMsg(withExt)[1:]}
	require.Equal(t, old, readLoadEntry(&r))
	require.NoError(t, r.err)
	// Old decoder, new state: entries first, trailer ignored.
	st := encodeState([]loadEntry{withExt, {Name: "b", Load: Load{Seq: 3}}})
	r = reader{b: st[1:]}
	require.Equal(t, 2, r.count(maxStateEntries))
	require.Equal(t, old, readLoadEntry(&r))
	require.Equal(t, "b", readLoadEntry(&r).Name)
	require.NoError(t, r.err)

	// New decoder, old message and state.
	got, err := decodeLoadMsg(appendLoadEntry(nil, withExt))
	require.NoError(t, err)
	require.Equal(t, old, got)
	oldState := binary.AppendUvarint([]byte{stateVersion}, 1)
	oldState = appendLoadEntry(oldState, withExt)
	entries, err := decodeState(oldState)
	require.NoError(t, err)
	require.Equal(t, []loadEntry{old}, entries)

	// A trailer that does not match the entry is malformed.
	bad := binary.AppendUvarint(appendLoadEntry(nil, withExt), 5)
	_, err = decodeLoadMsg(bad)
	require.ErrorIs(t, err, ErrMalformed)
}

func TestPrefixSummaryIsCapped(t *testing.T) {
	l := Load{Models: map[string]ModelLoad{"m": {Prefix: strings.Repeat("x", MaxPrefixSummary+1)}}}
	require.ErrorIs(t, validateLoad(l), ErrLoadTooLarge)
}

func TestLeaveMessageRoundTrip(t *testing.T) {
	msg := encodeLeaveMsg("node-7")
	require.Equal(t, msgLeave, msg[0])
	name, err := decodeLeaveMsg(msg[1:])
	require.NoError(t, err)
	require.Equal(t, "node-7", name)
	_, err = decodeLeaveMsg(nil)
	require.ErrorIs(t, err, ErrMalformed)
	_, err = decodeLeaveMsg([]byte{0})
	require.ErrorIs(t, err, ErrMalformed)
}

func TestAgeAndIntervalAreCapped(t *testing.T) {
	b := appendLoadEntry(nil, loadEntry{Name: "n", Interval: 1000 * time.Hour, Age: 1000 * time.Hour})
	e, err := decodeLoadMsg(b)
	require.NoError(t, err)
	require.Equal(t, 24*time.Hour, e.Interval)
	require.Equal(t, 24*time.Hour, e.Age)
}

func TestParseKey(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		got, err := ParseKey(base64.StdEncoding.EncodeToString(make([]byte, n)))
		require.NoError(t, err, "length %d", n)
		require.Len(t, got, n)
	}
	got, err := ParseKey("  ")
	require.NoError(t, err)
	require.Nil(t, got, "blank means no encryption")
}

// A load report with one model's prefix summary (router's 1 KiB filter)
// still goes out as one UDP packet.
func TestLoadWithPrefixSummaryFitsOnePacket(t *testing.T) {
	l := sampleLoad(10)
	m := l.Models["llama-3-8b"]
	m.Prefix = strings.Repeat("\xa5", 1024)
	l.Models["llama-3-8b"] = m
	msg := encodeLoadMsg(loadEntry{Name: "node-with-a-long-name-01", Load: l, Interval: time.Second})
	require.Less(t, len(msg), 1400-64)
}
