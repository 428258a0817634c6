package gossip

import (
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
)

// The level mapping is internal/logadapt's (tested there); memberlist's
// policy adds the prefix trim and Info for untagged lines.
func TestParseLogLine(t *testing.T) {
	level, msg := parseLogLine("[ERR] memberlist: Failed to send ping: write: broken pipe\n")
	require.Equal(t, slog.LevelError, level)
	require.Equal(t, "Failed to send ping: write: broken pipe", msg)
	level, msg = parseLogLine("[BOGUS] memberlist: x")
	require.Equal(t, slog.LevelInfo, level, "untagged lines are Info")
	require.Equal(t, "[BOGUS] memberlist: x", msg)
	_, msg = parseLogLine("[WARN] Refuting without the prefix")
	require.Equal(t, "Refuting without the prefix", msg)
}

func TestLogWriterRoutesLevelsAndFlagsKeyMismatch(t *testing.T) {
	buf := &logBuffer{}
	l := newMemberlistLogger(slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	l.Printf("[DEBUG] memberlist: hidden below info")
	l.Printf("[WARN] memberlist: shown as warn")
	l.Printf("[DEBUG] memberlist: failed to receive: No installed keys could decrypt the message from=127.0.0.1:1")
	l.Printf("[ERR] memberlist: failed to receive: encryption is configured but remote state is not encrypted from=x")
	out := buf.String()
	require.NotContains(t, out, "hidden below info")
	require.Contains(t, out, `level=WARN msg="shown as warn" source=memberlist`)
	require.Contains(t, out, `level=ERROR msg="failed to receive: No installed keys could decrypt the message`)
	require.Contains(t, out, `remote state is not encrypted from=x"`)
	require.Equal(t, 2, countOf(out, "hint="), out)
}

func countOf(s, sub string) int {
	n := 0
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			n++
		}
	}
	return n
}
