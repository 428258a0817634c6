package dcache

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
)

// slogWriter receives the lines Olric, its client and memberlist write to a *log.Logger
// ("[LEVEL] message") and turns each into an slog record.
type slogWriter struct {
	log *slog.Logger
}

// newStdLogger returns a *log.Logger for Olric and memberlist that writes into l.
func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(slogWriter{log: l}, "", 0)
}

func (w slogWriter) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		level, msg := parseLogLine(string(line))
		if msg == "" {
			continue
		}
		w.log.Log(context.Background(), level, msg)
	}
	return len(p), nil
}

// parseLogLine splits "[LEVEL] message" (with anything before the bracket, e.g. a timestamp)
// into a slog level and the trimmed message. Olric and memberlist log routine events, such as
// failed join attempts while peers come up, as [ERR]/[ERROR]; those become Warn, because they
// are not errors of ours. Everything else, unknown levels included, is Debug.
func parseLogLine(line string) (slog.Level, string) {
	line = strings.TrimSpace(line)
	open := strings.IndexByte(line, '[')
	if open < 0 {
		return slog.LevelDebug, line
	}
	end := strings.IndexByte(line[open:], ']')
	if end < 0 {
		return slog.LevelDebug, line
	}
	end += open
	level := slog.LevelDebug
	switch strings.ToUpper(line[open+1 : end]) {
	case "WARN", "WARNING", "ERR", "ERROR":
		level = slog.LevelWarn
	case "DEBUG", "INFO", "TRACE":
	default:
		// Not a level tag: keep the whole line.
		return slog.LevelDebug, line
	}
	return level, strings.TrimSpace(line[end+1:])
}
