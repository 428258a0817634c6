package gossip

import (
	"log"
	"log/slog"
	"strings"

	"github.com/shoal-dev/shoal/internal/logadapt"
)

// keyMismatchHint is attached to log records whose text shows that a peer
// uses a different (or no) gossip.encrypt_key.
const keyMismatchHint = "gossip.encrypt_key differs between this node and the peer (or only one side has a key)"

// memberlistLog is how memberlist's "[LEVEL] memberlist: message" lines
// become slog records: key-mismatch messages, some of which memberlist logs
// at DEBUG, are raised to Error with a hint, because an operator must see
// them.
var memberlistLog = logadapt.Config{
	TrimPrefix: "memberlist: ",
	Adjust: func(level slog.Level, msg string) (slog.Level, []any) {
		if keyMismatch(msg) {
			return slog.LevelError, []any{"hint", keyMismatchHint}
		}
		return level, nil
	},
}

// newMemberlistLogger adapts memberlist's *log.Logger output into slog.
func newMemberlistLogger(l *slog.Logger) *log.Logger {
	cfg := memberlistLog
	cfg.Logger = l.With("source", "memberlist")
	return logadapt.NewStdLogger(cfg)
}

// parseLogLine is the level and message memberlistLog gives a line,
// before the key-mismatch check.
func parseLogLine(line string) (slog.Level, string) {
	cfg := memberlistLog
	cfg.Adjust = nil
	level, msg, _ := cfg.Line(line)
	return level, msg
}

// keyMismatch reports whether a memberlist message or error text is one of
// those that different gossip keys produce.
func keyMismatch(s string) bool {
	s = strings.ToLower(s)
	return strings.Contains(s, "decrypt") ||
		strings.Contains(s, "encryption is not configured") ||
		strings.Contains(s, "remote state is not encrypted")
}
