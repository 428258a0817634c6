package dcache

import (
	"log"
	"log/slog"

	"github.com/shoal-dev/shoal/internal/logadapt"
)

// libraryLog is how the "[LEVEL] message" lines of Olric, its client and
// memberlist become slog records. They log routine events, such as failed
// join attempts while peers come up, as [ERR]/[ERROR]; those become Warn,
// because they are not errors of ours. Everything else, untagged lines
// included, is Debug.
var libraryLog = logadapt.Config{
	Untagged: slog.LevelDebug,
	Adjust: func(level slog.Level, _ string) (slog.Level, []any) {
		if level >= slog.LevelWarn {
			return slog.LevelWarn, nil
		}
		return slog.LevelDebug, nil
	},
}

// newStdLogger returns a *log.Logger for Olric and memberlist that writes into l.
func newStdLogger(l *slog.Logger) *log.Logger {
	cfg := libraryLog
	cfg.Logger = l
	return logadapt.NewStdLogger(cfg)
}

// parseLogLine is the level and message libraryLog gives a line.
func parseLogLine(line string) (slog.Level, string) {
	level, msg, _ := libraryLog.Line(line)
	return level, msg
}
