package consensus

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"

	"github.com/shoal-dev/shoal/internal/logadapt"
)

// hclogAdapter lets hashicorp/raft log through a *slog.Logger. hclog's
// key/value argument convention is slog's, so arguments pass through as-is.
type hclogAdapter struct {
	logger  *slog.Logger
	name    string
	implied []any
	// level is shared by loggers derived with With/Named, as in hclog.
	level *atomic.Int32
}

var _ hclog.Logger = (*hclogAdapter)(nil)

func newHCLogAdapter(logger *slog.Logger, name string) *hclogAdapter {
	lvl := &atomic.Int32{}
	lvl.Store(int32(hclog.Trace))
	return &hclogAdapter{logger: logger.With("logger", name), name: name, level: lvl}
}

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return logadapt.LevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (a *hclogAdapter) enabled(l hclog.Level) bool {
	if l < hclog.Level(a.level.Load()) {
		return false
	}
	return a.logger.Enabled(context.Background(), slogLevel(l))
}

// Log implements hclog.Logger.
func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off || !a.enabled(level) {
		return
	}
	a.logger.Log(context.Background(), slogLevel(level), msg, formatArgs(args)...)
}

// formatArgs renders hclog's deferred formatting values (hclog.Fmt, which
// raft uses for its configuration) the way hclog would; slog would print
// the format string and its arguments as a list.
func formatArgs(args []any) []any {
	out, copied := args, false
	for i := 1; i < len(args); i += 2 {
		f, ok := args[i].(hclog.Format)
		if !ok || len(f) == 0 {
			continue
		}
		if !copied {
			out, copied = append([]any(nil), args...), true
		}
		if format, ok := f[0].(string); ok {
			out[i] = fmt.Sprintf(format, f[1:]...)
		} else {
			out[i] = fmt.Sprint(f...)
		}
	}
	return out
}

// Trace implements hclog.Logger.
func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }

// Debug implements hclog.Logger.
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }

// Info implements hclog.Logger.
func (a *hclogAdapter) Info(msg string, args ...any) { a.Log(hclog.Info, msg, args...) }

// Warn implements hclog.Logger.
func (a *hclogAdapter) Warn(msg string, args ...any) { a.Log(hclog.Warn, msg, args...) }

// Error implements hclog.Logger.
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

// IsTrace implements hclog.Logger.
func (a *hclogAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }

// IsDebug implements hclog.Logger.
func (a *hclogAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }

// IsInfo implements hclog.Logger.
func (a *hclogAdapter) IsInfo() bool { return a.enabled(hclog.Info) }

// IsWarn implements hclog.Logger.
func (a *hclogAdapter) IsWarn() bool { return a.enabled(hclog.Warn) }

// IsError implements hclog.Logger.
func (a *hclogAdapter) IsError() bool { return a.enabled(hclog.Error) }

// ImpliedArgs implements hclog.Logger.
func (a *hclogAdapter) ImpliedArgs() []any { return a.implied }

// With implements hclog.Logger.
func (a *hclogAdapter) With(args ...any) hclog.Logger {
	c := *a
	c.logger = a.logger.With(args...)
	c.implied = append(append([]any(nil), a.implied...), args...)
	return &c
}

// Name implements hclog.Logger.
func (a *hclogAdapter) Name() string { return a.name }

// Named implements hclog.Logger.
func (a *hclogAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.ResetNamed(name)
}

// ResetNamed implements hclog.Logger. The parent's "logger" attribute stays
// on the slog logger; the new name is added after it.
func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *a
	c.name = name
	c.logger = a.logger.With("logger", name)
	return &c
}

// SetLevel implements hclog.Logger; it can only make logging quieter than
// the slog handler already is.
func (a *hclogAdapter) SetLevel(level hclog.Level) { a.level.Store(int32(level)) }

// GetLevel implements hclog.Logger.
func (a *hclogAdapter) GetLevel() hclog.Level { return hclog.Level(a.level.Load()) }

// StandardLogger implements hclog.Logger.
func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

// StandardWriter implements hclog.Logger: each written line is logged, at the
// level its "[ERROR]"-style prefix names, else at Info.
func (a *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return stdWriter{a}
}

type stdWriter struct{ a *hclogAdapter }

func (w stdWriter) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		level, msg, ok := logadapt.Parse(string(line))
		if !ok {
			level = slog.LevelInfo
		}
		w.a.Log(hclogLevel(level), msg)
	}
	return len(p), nil
}

// hclogLevel is slogLevel's inverse.
func hclogLevel(l slog.Level) hclog.Level {
	switch {
	case l < slog.LevelDebug:
		return hclog.Trace
	case l < slog.LevelInfo:
		return hclog.Debug
	case l < slog.LevelWarn:
		return hclog.Info
	case l < slog.LevelError:
		return hclog.Warn
	}
	return hclog.Error
}
