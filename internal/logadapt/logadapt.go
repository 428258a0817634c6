// Package logadapt turns the "[LEVEL] message" lines that libraries write
// to a standard *log.Logger (memberlist, Olric, raft's standard writer) into
// slog records, with one level mapping for all of them.
package logadapt

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"strings"
)

// LevelTrace is below slog.LevelDebug, for the libraries' TRACE lines.
const LevelTrace = slog.LevelDebug - 4

// Level maps a library's level tag (case-insensitive, without brackets) to
// a slog level: TRACE, DEBUG, INFO, WARN/WARNING, ERR/ERROR. ok is false for
// any other text.
func Level(tag string) (level slog.Level, ok bool) {
	switch strings.ToUpper(tag) {
	case "TRACE":
		return LevelTrace, true
	case "DEBUG":
		return slog.LevelDebug, true
	case "INFO":
		return slog.LevelInfo, true
	case "WARN", "WARNING":
		return slog.LevelWarn, true
	case "ERR", "ERROR":
		return slog.LevelError, true
	}
	return 0, false
}

// Parse splits a "[LEVEL] message" line into its level and trimmed
// message. The tag may follow a prefix such as a timestamp, which is
// dropped with it. Without a known tag, ok is false and msg is the whole
// trimmed line; msg is always a substring of line.
func Parse(line string) (level slog.Level, msg string, ok bool) {
	line = strings.TrimSpace(line)
	open := strings.IndexByte(line, '[')
	if open < 0 {
		return 0, line, false
	}
	end := strings.IndexByte(line[open:], ']')
	if end < 0 {
		return 0, line, false
	}
	end += open
	level, ok = Level(line[open+1 : end])
	if !ok {
		return 0, line, false
	}
	return level, strings.TrimSpace(line[end+1:]), true
}

// Config says how a Writer logs lines.
type Config struct {
	// Logger receives the records.
	Logger *slog.Logger
	// Untagged is the level of a line without a level tag (zero: Info).
	Untagged slog.Level
	// TrimPrefix is cut from the start of messages, e.g. "memberlist: ".
	TrimPrefix string
	// Adjust, when set, may change a line's level and add attributes, for
	// a library that logs routine events as errors or hides ones that
	// matter at debug.
	Adjust func(level slog.Level, msg string) (slog.Level, []any)
}

// Line applies cfg to one line: the level and message a Writer logs.
func (cfg Config) Line(line string) (level slog.Level, msg string, attrs []any) {
	level, msg, ok := Parse(line)
	if !ok {
		level = cfg.Untagged
	}
	if cfg.TrimPrefix != "" {
		msg = strings.TrimPrefix(msg, cfg.TrimPrefix)
	}
	if cfg.Adjust != nil {
		level, attrs = cfg.Adjust(level, msg)
	}
	return level, msg, attrs
}

// Writer logs each line written to it; it never fails, so the library
// never sees a logging error.
type Writer struct{ cfg Config }

// NewWriter returns a Writer for cfg.
func NewWriter(cfg Config) *Writer { return &Writer{cfg: cfg} }

// NewStdLogger returns a *log.Logger, for a library's config, that logs
// into cfg.Logger.
func NewStdLogger(cfg Config) *log.Logger { return log.New(NewWriter(cfg), "", 0) }

var _ io.Writer = (*Writer)(nil)

// Write logs every non-blank line of p.
func (w *Writer) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		level, msg, attrs := w.cfg.Line(string(line))
		w.cfg.Logger.Log(context.Background(), level, msg, attrs...)
	}
	return len(p), nil
}
