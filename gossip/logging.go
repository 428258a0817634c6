package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
)

// keyMismatchHint is attached to log records whose text shows that a peer
// uses a different (or no) gossip.encrypt_key.
const keyMismatchHint = "gossip.encrypt_key differs between this node and the peer (or only one side has a key)"

// newMemberlistLogger adapts memberlist's *log.Logger output into slog.
func newMemberlistLogger(l *slog.Logger) *log.Logger {
	return log.New(&logWriter{log: l.With("source", "memberlist")}, "", 0)
}

// logWriter turns memberlist's "[LEVEL] memberlist: message" lines into slog
// records at the matching level.
type logWriter struct {
	log *slog.Logger
}

// Write logs each line of p; it never fails, so memberlist never sees a
// logging error.
func (w *logWriter) Write(p []byte) (int, error) {
	for line := range bytes.SplitSeq(p, []byte{'\n'}) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		level, msg := parseLogLine(string(line))
		if keyMismatch(msg) {
			// memberlist logs some of these at DEBUG; an operator must see them.
			w.log.Log(context.Background(), slog.LevelError, msg, "hint", keyMismatchHint)
			continue
		}
		w.log.Log(context.Background(), level, msg)
	}
	return len(p), nil
}

// parseLogLine splits a memberlist log line into a level and the message
// without the level tag and "memberlist: " prefix. Lines without a known
// tag are logged at Info as they are.
func parseLogLine(line string) (slog.Level, string) {
	line = strings.TrimSpace(line)
	level := slog.LevelInfo
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			if lv, ok := logLevel(line[1:end]); ok {
				level = lv
				line = strings.TrimSpace(line[end+1:])
			}
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	return level, line
}

// logLevel maps memberlist's level tags to slog levels.
func logLevel(tag string) (slog.Level, bool) {
	switch tag {
	case "TRACE":
		return slog.LevelDebug - 4, true
	case "DEBUG":
		return slog.LevelDebug, true
	case "INFO":
		return slog.LevelInfo, true
	case "WARN":
		return slog.LevelWarn, true
	case "ERR", "ERROR":
		return slog.LevelError, true
	}
	return 0, false
}

// keyMismatch reports whether a memberlist message or error text is one of
// those that different gossip keys produce.
func keyMismatch(s string) bool {
	s = strings.ToLower(s)
	return strings.Contains(s, "decrypt") ||
		strings.Contains(s, "encryption is not configured") ||
		strings.Contains(s, "remote state is not encrypted")
}
