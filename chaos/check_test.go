package chaos

import (
	"math"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"
)

// These run in `make test`: they prove the suite's checker can fail.

func write(v int, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: 0, Input: regInput{write: true, value: v}, Call: call, Return: ret}
}

func read(v int, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: 1, Input: regInput{}, Output: v, Call: call, Return: ret}
}

func TestRegisterModelRejectsLostAcknowledgedWrite(t *testing.T) {
	// write(1) was acknowledged, then every read sees the initial value.
	h := []porcupine.Operation{write(baseRPM+1, 0, 10), read(baseRPM, 20, 30)}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(registerModel, prune(h), 10*time.Second))
}

func TestRegisterModelAcceptsUnknownWriteSeenLater(t *testing.T) {
	// write(1) timed out, yet took effect: a later read may see it.
	h := []porcupine.Operation{write(baseRPM+1, 0, math.MaxInt64), read(baseRPM, 5, 6), read(baseRPM+1, 20, 30)}
	require.Equal(t, porcupine.Ok, porcupine.CheckOperationsTimeout(registerModel, prune(h), 10*time.Second))
}

func TestPruneKeepsOnlyObservedUnknownWrites(t *testing.T) {
	h := []porcupine.Operation{
		write(baseRPM+1, 0, math.MaxInt64), // never seen: dropped
		write(baseRPM+2, 1, math.MaxInt64), // seen: kept
		write(baseRPM+3, 2, 3),             // acknowledged: kept
		read(baseRPM+2, 4, 5),
	}
	got := prune(h)
	require.Len(t, got, 3)
	require.Equal(t, baseRPM+2, got[0].Input.(regInput).value)
}

func TestRegisterModelRejectsReadOfValueGoneBack(t *testing.T) {
	// Reads see 2 and then 1 again after both writes were acknowledged.
	h := []porcupine.Operation{
		write(baseRPM+1, 0, 1), write(baseRPM+2, 2, 3),
		read(baseRPM+2, 4, 5), read(baseRPM+1, 6, 7),
	}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(registerModel, prune(h), 10*time.Second))
}
