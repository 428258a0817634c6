// Package fakeclock is a clock that tests move by hand, for code that takes
// a Now func: windows, expiry and timeouts are tested without sleeping.
package fakeclock

import (
	"sync"
	"time"
)

// Clock is safe for use from many goroutines.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// New returns a clock that reads start until it is advanced.
func New(start time.Time) *Clock { return &Clock{now: start} }

// Now is the clock's time; pass it where the code under test takes a Now.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
