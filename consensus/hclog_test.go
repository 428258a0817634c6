package consensus

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
)

func TestHCLogAdapterRendersFormatValues(t *testing.T) {
	var buf bytes.Buffer
	a := newHCLogAdapter(slog.New(slog.NewTextHandler(&buf, nil)), "raft")
	args := []any{"index", 3, "servers", hclog.Fmt("%+v", []string{"a", "b"})}
	a.Info("initial configuration", args...)
	require.Contains(t, buf.String(), `index=3 servers="[a b]"`)
	require.IsType(t, hclog.Format{}, args[3], "the caller's arguments are not modified")
}
