package cli

import (
	"io"
	"os"

	"golang.org/x/term"
)

// terminalKeys returns f for reading single key presses when f is a
// terminal, switched (where the platform allows) to deliver each key at
// once without echo, and the function that restores it. Signals still work
// (Ctrl-C). Elsewhere it returns nil: nothing to read keys from.
func terminalKeys(f *os.File) (io.Reader, func()) {
	if !term.IsTerminal(int(f.Fd())) {
		return nil, func() {}
	}
	return f, cbreak(int(f.Fd()))
}
