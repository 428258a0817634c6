package ops

import (
	"context"
	"errors"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseNvidiaSMI(t *testing.T) {
	out := []byte("0, NVIDIA H100 80GB HBM3, 81559, 1024, 80535, 37\n1, NVIDIA H100 80GB HBM3, 81559, [N/A], 81559, [Not Supported]\n")
	gpus, err := ParseNvidiaSMI(out)
	require.NoError(t, err)
	require.Len(t, gpus, 2)
	require.Equal(t, GPU{Index: 0, Name: "NVIDIA H100 80GB HBM3", MemoryTotalMB: 81559, MemoryUsedMB: 1024, MemoryFreeMB: 80535, UtilizationPct: 37}, gpus[0])
	require.Equal(t, 0, gpus[1].MemoryUsedMB)
	c := Sum(gpus)
	require.Equal(t, 2, c.Count)
	require.Equal(t, 163118, c.MemoryTotalMB)
	require.InDelta(t, 18.5, c.UtilizationPct, 1e-9)
}

func TestParseNvidiaSMIRejectsWrongShape(t *testing.T) {
	_, err := ParseNvidiaSMI([]byte("0, name, 1\n"))
	require.ErrorContains(t, err, "want 6")
	_, err = ParseNvidiaSMI([]byte("x, name, 1, 2, 3, 4\n"))
	require.ErrorContains(t, err, "bad index")
}

// TestQueryGPUs runs the real nvidia-smi where one exists (a GPU machine),
// and checks the not-found path elsewhere.
func TestQueryGPUs(t *testing.T) {
	gpus, err := QueryGPUs(context.Background())
	if _, lerr := exec.LookPath("nvidia-smi"); lerr != nil {
		require.True(t, errors.Is(err, ErrNoNvidiaSMI))
		return
	}
	require.NoError(t, err)
	require.NotEmpty(t, gpus)
	for _, g := range gpus {
		require.Positive(t, g.MemoryTotalMB)
	}
}

func FuzzParseNvidiaSMI(f *testing.F) {
	f.Add([]byte("0, NVIDIA A100, 40960, 100, 40860, 5\n"))
	f.Add([]byte("0, \"a,b\", 1, 2, 3, 4\n"))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		gpus, err := ParseNvidiaSMI(b)
		if err != nil {
			return
		}
		for _, g := range gpus {
			if g.MemoryTotalMB < 0 || g.UtilizationPct < 0 {
				t.Fatalf("negative value from %q: %+v", b, g)
			}
		}
	})
}
