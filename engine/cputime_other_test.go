//go:build !unix

package engine

import "time"

// cpuTime is unavailable here; CPU-time metrics read as zero.
func cpuTime() time.Duration { return 0 }
