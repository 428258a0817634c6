//go:build !linux && !darwin && !freebsd && !netbsd && !openbsd

package cli

// cbreak leaves the terminal as it is: q then Enter quits.
func cbreak(int) func() { return func() {} }
