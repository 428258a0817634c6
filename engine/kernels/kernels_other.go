//go:build !amd64 || purego

package kernels

// AVX2 reports that no assembly kernels exist on this platform.
func AVX2() (Set, bool) { return Set{}, false }

// AVX512 reports that no assembly kernels exist on this platform.
func AVX512() (Set, bool) { return Set{}, false }
