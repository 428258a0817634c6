package gossip

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{{}, testConfig("n0").Meta, {Version: strings.Repeat("v", 400), RaftHasState: true}} {
		b, err := encodeMeta(m)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Add([]byte{metaVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes within the limit to the same value.
		enc, err := encodeMeta(m)
		require.NoError(t, err)
		require.LessOrEqual(t, len(enc), MetaMaxSize)
		again, err := decodeMeta(enc)
		require.NoError(t, err)
		require.Equal(t, m, again)
	})
}

func FuzzEncodeMeta(f *testing.F) {
	f.Add("127.0.0.1:8080", "127.0.0.1:8300", "", "", "v1", 3, false)
	f.Add(strings.Repeat("h", 300), strings.Repeat("r", 300), "c", "g", "v", -1, true)
	f.Fuzz(func(t *testing.T, h, r, c, cg, v string, expect int, hasState bool) {
		m := Meta{HTTPAddr: h, RaftAddr: r, CacheAddr: c, CacheGossipAddr: cg, Version: v, BootstrapExpect: expect, RaftHasState: hasState}
		b, err := encodeMeta(m)
		if err != nil {
			require.ErrorIs(t, err, ErrMetaTooLarge)
			return
		}
		require.LessOrEqual(t, len(b), MetaMaxSize)
		got, err := decodeMeta(b)
		require.NoError(t, err)
		require.Equal(t, m, got)
	})
}

func FuzzDecodeLoad(f *testing.F) {
	f.Add(encodeLoadMsg(loadEntry{Name: "n0", Load: sampleLoad(3), Interval: time.Second}))
	f.Add(encodeLoadMsg(loadEntry{Name: "x"}))
	f.Add(encodeLeaveMsg("n1"))
	f.Add([]byte{msgLoad, 1, 'n', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		switch b[0] {
		case msgLeave:
			name, err := decodeLeaveMsg(b[1:])
			if err == nil {
				require.NotEmpty(t, name)
				require.LessOrEqual(t, len(name), MaxNameLen)
			}
			return
		case msgLoad:
		default:
			return
		}
		e, err := decodeLoadMsg(b[1:])
		if err != nil {
			return
		}
		require.NoError(t, validateLoad(e.Load))
		again, err := decodeLoadMsg(encodeLoadMsg(e)[1:])
		require.NoError(t, err)
		require.Equal(t, e, again)
	})
}

func FuzzDecodeState(f *testing.F) {
	f.Add(encodeState([]loadEntry{{Name: "a", Load: sampleLoad(1)}, {Name: "b", Age: time.Second}}))
	f.Add(encodeState(nil))
	f.Add([]byte{stateVersion, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := decodeState(b)
		if err != nil {
			return
		}
		again, err := decodeState(encodeState(entries))
		require.NoError(t, err)
		require.Equal(t, entries, again)
	})
}

func FuzzParseLogLine(f *testing.F) {
	f.Add("[ERR] memberlist: Decrypt packet failed: x")
	f.Add("[")
	f.Add("]")
	f.Fuzz(func(t *testing.T, line string) {
		_, msg := parseLogLine(line)
		require.LessOrEqual(t, len(msg), len(line))
	})
}

// FuzzNotifyMsg feeds arbitrary user messages to a live node's delegate:
// nothing may panic, and the node must keep working.
func FuzzNotifyMsg(f *testing.F) {
	f.Add(encodeLoadMsg(loadEntry{Name: "peer", Load: sampleLoad(3), Interval: time.Second}))
	f.Add(encodeLeaveMsg("peer"))
	f.Add(appendString([]byte{msgPull}, "peer"))
	f.Add(appendString([]byte{msgPull}, "fuzz"))
	f.Add([]byte{})
	f.Add([]byte{99, 1, 2})
	cfg := testConfig("fuzz")
	g, err := New(cfg)
	require.NoError(f, err)
	f.Cleanup(func() { _ = g.Shutdown() })
	d := &delegate{g: g}
	f.Fuzz(func(t *testing.T, b []byte) {
		d.NotifyMsg(b)
		d.MergeRemoteState(b, false)
		require.NotEmpty(t, g.Members())
	})
}
