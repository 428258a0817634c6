package gossip

import (
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseLogLine(t *testing.T) {
	cases := []struct {
		line  string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:5", slog.LevelDebug, "Stream connection from=127.0.0.1:5"},
		{"[INFO] memberlist: Suspect n2 has failed, no acks received", slog.LevelInfo, "Suspect n2 has failed, no acks received"},
		{"[WARN] memberlist: Refuting a suspect message (from: n1)", slog.LevelWarn, "Refuting a suspect message (from: n1)"},
		{"[ERR] memberlist: Failed to send ping: write: broken pipe\n", slog.LevelError, "Failed to send ping: write: broken pipe"},
		{"[ERROR] memberlist: Failed to encrypt local state", slog.LevelError, "Failed to encrypt local state"},
		{"[ERR] Failed to shutdown transport: x", slog.LevelError, "Failed to shutdown transport: x"},
		{"no tag at all", slog.LevelInfo, "no tag at all"},
		{"[BOGUS] memberlist: x", slog.LevelInfo, "[BOGUS] memberlist: x"},
		{"[", slog.LevelInfo, "["},
	}
	for _, tc := range cases {
		level, msg := parseLogLine(tc.line)
		require.Equal(t, tc.level, level, tc.line)
		require.Equal(t, tc.msg, msg, tc.line)
	}
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
