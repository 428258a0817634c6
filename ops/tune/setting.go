package tune

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/ops/adminapi"
)

// Setting is one model's batching configuration: a point of the search.
// Its JSON is the admin API's (consensus.BatchingSettings).
type Setting struct {
	MaxSize      int
	FlushTimeout time.Duration
}

func (s Setting) String() string {
	return fmt.Sprintf("max_size=%d flush=%s", s.MaxSize, s.FlushTimeout)
}

// MarshalJSON writes {"max_size": N, "flush_timeout": "10ms"}.
func (s Setting) MarshalJSON() ([]byte, error) {
	return json.Marshal(consensus.BatchingSettings(s))
}

// UnmarshalJSON reads what MarshalJSON writes; a number is taken as
// nanoseconds.
func (s *Setting) UnmarshalJSON(b []byte) error {
	var v consensus.BatchingSettings
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = Setting(v)
	return nil
}

// batching reads every model's setting through the admin API.
func batching(ctx context.Context, c *adminapi.Client) (map[string]Setting, error) {
	all, err := c.Batching(ctx)
	if err != nil {
		return nil, fmt.Errorf("get batching: %w", err)
	}
	out := make(map[string]Setting, len(all))
	for m, s := range all {
		out[m] = Setting(s)
	}
	return out, nil
}

// setBatching applies s to model cluster-wide.
func setBatching(ctx context.Context, c *adminapi.Client, model string, s Setting) error {
	size := s.MaxSize
	if _, err := c.SetBatching(ctx, adminapi.BatchingPut{Model: model, MaxSize: &size, FlushTimeout: s.FlushTimeout.String()}); err != nil {
		return fmt.Errorf("set batching of %s to %s: %w", model, s, err)
	}
	return nil
}
