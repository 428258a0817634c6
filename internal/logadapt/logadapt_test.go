package logadapt

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLevelMapping(t *testing.T) {
	for tag, want := range map[string]slog.Level{
		"TRACE": LevelTrace, "DEBUG": slog.LevelDebug, "INFO": slog.LevelInfo,
		"WARN": slog.LevelWarn, "WARNING": slog.LevelWarn, "ERR": slog.LevelError, "ERROR": slog.LevelError,
		"error": slog.LevelError, "Warn": slog.LevelWarn,
	} {
		got, ok := Level(tag)
		require.True(t, ok, tag)
		require.Equal(t, want, got, tag)
	}
	for _, tag := range []string{"", "BOGUS", "not a level", "FATAL"} {
		_, ok := Level(tag)
		require.False(t, ok, tag)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		line  string
		level slog.Level
		msg   string
		ok    bool
	}{
		{"[DEBUG] memberlist: Stream connection", slog.LevelDebug, "memberlist: Stream connection", true},
		{"[ERR] memberlist: Failed to send ping\n", slog.LevelError, "memberlist: Failed to send ping", true},
		{"2024/01/02 15:04:05 [ERROR] Join attempt returned error", slog.LevelError, "Join attempt returned error", true},
		{"[TRACE] x", LevelTrace, "x", true},
		{"no tag at all", 0, "no tag at all", false},
		{"[BOGUS] x", 0, "[BOGUS] x", false},
		{"[WARN", 0, "[WARN", false},
		{"", 0, "", false},
	}
	for _, tc := range tests {
		level, msg, ok := Parse(tc.line)
		require.Equal(t, tc.ok, ok, tc.line)
		require.Equal(t, tc.msg, msg, tc.line)
		if ok {
			require.Equal(t, tc.level, level, tc.line)
		}
	}
}

func TestWriterAppliesConfig(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(Config{
		Logger:     slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: LevelTrace})),
		Untagged:   slog.LevelDebug,
		TrimPrefix: "lib: ",
		Adjust: func(level slog.Level, msg string) (slog.Level, []any) {
			if strings.Contains(msg, "routine") {
				return slog.LevelWarn, []any{"demoted", true}
			}
			return level, nil
		},
	})
	n, err := w.Write([]byte("[INFO] lib: one\n\n[ERR] lib: routine failure\nuntagged\n"))
	require.NoError(t, err)
	require.Equal(t, 53, n)
	out := buf.String()
	require.Contains(t, out, "level=INFO msg=one")
	require.Contains(t, out, `level=WARN msg="routine failure" demoted=true`)
	require.Contains(t, out, "level=DEBUG msg=untagged")
	require.Equal(t, 3, strings.Count(out, "\n"))
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"[INFO] x", "[ERR] y", "]]][[[", "[WARN]", "a [DEBUG] b\n", "\x00[\xff]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		_, msg, _ := Parse(line)
		if !strings.Contains(line, msg) {
			t.Fatalf("message %q is not part of %q", msg, line)
		}
	})
}
