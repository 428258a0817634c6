package cli

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSimCommandPrintsTable(t *testing.T) {
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"sim", "--nodes", "12", "--duration", "10s"})
	require.NoError(t, cmd.Execute())
	for _, want := range []string{"| 12 | omniscient |", "| 12 | all-to-all |", "| 12 | probe 2 + heartbeat"} {
		require.Contains(t, out.String(), want)
	}
}

func TestSimCommandBadInputIsUsageError(t *testing.T) {
	for _, args := range [][]string{{"sim", "--nodes", "1"}, {"sim", "--utilization", "1.5"}, {"sim", "--nodes", "x"}} {
		code, stderr := runShoal(t, nil, args...)
		require.Equal(t, 2, code, "%v: %s", args, stderr)
	}
}
