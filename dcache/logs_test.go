package dcache

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// The level mapping is internal/logadapt's (tested there); the libraries'
// policy demotes their errors to Warn and everything else to Debug.
func TestParseLogLine(t *testing.T) {
	for line, want := range map[string]slog.Level{
		"2024/01/02 15:04:05 [ERROR] Join attempt returned error": slog.LevelWarn,
		"[ERR] memberlist: Failed to send":                        slog.LevelWarn,
		"[WARN] memberlist: Refuting a suspect message":           slog.LevelWarn,
		"[INFO] Join completed":                                   slog.LevelDebug,
		"no level at all":                                         slog.LevelDebug,
	} {
		level, _ := parseLogLine(line)
		require.Equal(t, want, level, line)
	}
	_, msg := parseLogLine("[DEBUG] memberlist: Stream connection\n")
	require.Equal(t, "memberlist: Stream connection", msg, "the tag goes, the library's prefix stays")
}

func FuzzParseLogLine(f *testing.F) {
	for _, s := range []string{"[INFO] x", "[ERR] y", "]]][[[", "[WARN]", "a [DEBUG] b\n", "\x00[\xff]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		level, msg := parseLogLine(line)
		if level != slog.LevelDebug && level != slog.LevelWarn {
			t.Fatalf("level %v", level)
		}
		if !strings.Contains(line, msg) {
			t.Fatalf("message %q is not part of %q", msg, line)
		}
	})
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a slog handler.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSlogWriterSplitsLines(t *testing.T) {
	var buf syncBuffer
	w := newStdLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))).Writer()
	n, err := w.Write([]byte("[INFO] one\n[WARN] two\n\n"))
	require.NoError(t, err)
	require.Equal(t, 23, n)
	out := buf.String()
	require.Contains(t, out, "level=DEBUG msg=one")
	require.Contains(t, out, "level=WARN msg=two")
	require.Equal(t, 2, strings.Count(out, "\n"))
}
