//go:build !linux

package engine

import "os"

// mapFile reads path into memory once; platforms without the mmap path pay
// the file's size in heap, still only once.
func mapFile(path string) (data []byte, release func() error, err error) {
	data, err = os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return data, func() error { return nil }, nil
}
