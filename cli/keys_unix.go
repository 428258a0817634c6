//go:build linux || darwin || freebsd || netbsd || openbsd

package cli

import "golang.org/x/sys/unix"

// cbreak turns off line buffering and echo on the terminal fd, keeping
// signals and output processing (unlike raw mode, so "\n" still returns
// the carriage), and returns the function that restores it.
func cbreak(fd int) func() {
	old, err := unix.IoctlGetTermios(fd, ioctlGetTermios)
	if err != nil {
		return func() {}
	}
	t := *old
	t.Lflag &^= unix.ICANON | unix.ECHO
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, ioctlSetTermios, &t); err != nil {
		return func() {}
	}
	return func() { _ = unix.IoctlSetTermios(fd, ioctlSetTermios, old) }
}
