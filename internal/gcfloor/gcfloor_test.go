package gcfloor

import (
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The tests change the process's collector settings, so none runs in
// parallel, and each gives the settings back.

const mib = 1 << 20

func TestPercent(t *testing.T) {
	for _, tc := range []struct {
		name               string
		floor, live, roots uint64
		base, want         int
	}{
		{"small heap raised to the floor", 64 * mib, 8 * mib, 0, 100, 700},
		{"roots count toward the goal", 64 * mib, 8 * mib, 8 * mib, 100, 350},
		{"the runtime's minimum scales with the percent", 64 * mib, 1 * mib, 0, 100, 1600},
		{"base goal reaches the floor", 64 * mib, 40 * mib, 0, 100, 100},
		{"live heap past the floor", 64 * mib, 100 * mib, 0, 100, 100},
		{"a larger GOGC is kept", 64 * mib, 10 * mib, 0, 1000, 1000},
		{"no collection yet", 64 * mib, 0, 1 * mib, 100, 100},
		{"huge floor", 1 << 50, 1, 0, 100, maxPercent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Percent(tc.floor, tc.base, tc.live, tc.roots))
		})
	}
}

// gcCycles is the number of collections the process has completed.
func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// gogc is the collector's percent as the runtime holds it.
func gogc() int64 {
	s := []metrics.Sample{{Name: mGOGC}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

// heapGoal is the heap size at which the runtime plans the next collection.
func heapGoal() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

var sink []byte

// churn allocates total bytes of garbage in 4 KiB pieces, as requests do.
func churn(total int) {
	for i := 0; i < total/4096; i++ {
		sink = make([]byte, 4096)
	}
	sink = nil
}

// quietGC runs a collection with nothing else allocating, so the live heap
// the runtime reports is the heap's, not what a starved concurrent mark
// counted as live while the test allocated beside it (objects allocated
// during marking are kept by that cycle). On a loaded machine the latter
// reads tens of MiB for a heap of a few hundred KiB.
func quietGC() { runtime.GC() }

// collections counts the collections that churning 256 MiB takes.
func collections() uint64 {
	quietGC()
	before := gcCycles()
	churn(256 * mib)
	return gcCycles() - before
}

func TestFloorRaisesTheGoalOfASmallHeapToTheFloor(t *testing.T) {
	quietGC()
	without := heapGoal()
	f, err := Start(Config{Floor: 64 * mib})
	require.NoError(t, err)
	defer f.Stop()
	require.Greater(t, f.Percent(), 100, "a test process's live heap is far below 64 MiB")
	require.Equal(t, int64(f.Percent()), gogc())
	t.Logf("heap goal %d MiB without a floor", without/mib)
	require.Less(t, without, uint64(16*mib))

	// The goal is the floor itself, not a multiple of it: the heap grows
	// by no more than the floor allows. Each collection's cleanup
	// recomputes it, including after garbage churn.
	churn(128 * mib)
	require.Eventually(t, func() bool {
		quietGC()
		return heapGoal() == 64*mib
	}, 10*time.Second, 10*time.Millisecond, "heap goal with a 64 MiB floor never reached it")
}

// stwChild names the environment variable under which the collection
// count test runs its measurement in a child process.
const stwChild = "GCFLOOR_TEST_STW_CHILD"

// TestFloorCutsCollectionsOfASmallHeap counts real collections with and
// without the floor. It measures in a child process with every collection
// stopping the world: a concurrent collector starved of CPU by a loaded
// machine keeps what is allocated during its long marks, and the counts
// then measure the machine, not the floor (one measured 2 collections
// without a floor). With the world stopped the live heap each cycle reports
// is exact and the pacer's goal is the one the floor sets.
func TestFloorCutsCollectionsOfASmallHeap(t *testing.T) {
	if os.Getenv(stwChild) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFloorCutsCollectionsOfASmallHeap$", "-test.count=1", "-test.v")
		godebug := "gcstoptheworld=1"
		if cur := os.Getenv("GODEBUG"); cur != "" {
			godebug = cur + "," + godebug
		}
		cmd.Env = append(os.Environ(), stwChild+"=1", "GODEBUG="+godebug)
		out, err := cmd.CombinedOutput()
		t.Logf("child:\n%s", out)
		require.NoError(t, err)
		return
	}
	without := collections()
	f, err := Start(Config{Floor: 64 * mib})
	require.NoError(t, err)
	defer f.Stop()
	with := collections()
	t.Logf("collections churning 256 MiB: %d without a floor, %d with a 64 MiB floor", without, with)
	// Without the floor the goal is a few MiB, so 256 MiB of garbage
	// takes dozens of collections; with it, about 256/64.
	require.Less(t, with*4, without)
	require.LessOrEqual(t, with, uint64(12))
}

func TestFloorStepsAsideForALargeLiveHeap(t *testing.T) {
	quietGC()
	f, err := Start(Config{Floor: 32 * mib})
	require.NoError(t, err)
	defer f.Stop()
	raised := f.Percent()
	require.Greater(t, raised, 100)

	// 48 MiB kept live: GOGC's own goal (96 MiB) is above the floor, so
	// the collector gets its configured percent back after a collection.
	live := make([][]byte, 48)
	for i := range live {
		live[i] = make([]byte, mib)
	}
	require.Eventually(t, func() bool {
		runtime.GC()
		return f.Percent() == 100 && gogc() == 100
	}, 10*time.Second, 10*time.Millisecond, "percent %d with 48 MiB live", f.Percent())

	// And once that memory is garbage the floor applies again.
	runtime.KeepAlive(live)
	live = nil
	require.Eventually(t, func() bool {
		runtime.GC()
		return f.Percent() > 100 && gogc() == int64(f.Percent())
	}, 10*time.Second, 10*time.Millisecond, "percent %d after the live heap was freed", f.Percent())
}

func TestStopGivesTheConfiguredPercentBack(t *testing.T) {
	old := debug.SetGCPercent(150)
	defer debug.SetGCPercent(old)
	quietGC()
	f, err := Start(Config{Floor: 64 * mib})
	require.NoError(t, err)
	require.Greater(t, gogc(), int64(150))
	f.Stop()
	f.Stop()
	require.Equal(t, int64(150), gogc())
	// A collection after Stop changes nothing (the cleanup stays disarmed).
	runtime.GC()
	runtime.GC()
	require.Equal(t, int64(150), gogc())
}

func TestNoFloorWhenGOGCIsOffOrTheFloorIsZero(t *testing.T) {
	f, err := Start(Config{})
	require.NoError(t, err)
	require.Nil(t, f)
	f.Stop() // safe on nil

	old := debug.SetGCPercent(-1)
	defer debug.SetGCPercent(old)
	f, err = Start(Config{Floor: 64 * mib})
	require.NoError(t, err)
	require.Nil(t, f)
	require.Equal(t, int64(-1), gogc())
}
