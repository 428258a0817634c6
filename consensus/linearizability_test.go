package consensus

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"
)

// registerInput is one operation on the register "max_size of model reg".
type registerInput struct {
	write bool
	value int
}

// registerModel is a single register: writes set it, reads return it.
var registerModel = porcupine.Model{
	Init: func() any { return 0 },
	Step: func(state, input, output any) (bool, any) {
		in := input.(registerInput)
		if in.write {
			return true, in.value
		}
		return output.(int) == state.(int), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(registerInput)
		if in.write {
			return fmt.Sprintf("write(%d)", in.value)
		}
		return fmt.Sprintf("read() -> %d", output.(int))
	},
}

func TestRegisterModelRejectsStaleRead(t *testing.T) {
	// write(1) completes before read starts, yet read sees the old value:
	// the checker must call this illegal, or the test below proves nothing.
	history := []porcupine.Operation{
		{ClientId: 0, Input: registerInput{write: true, value: 1}, Call: 0, Output: 0, Return: 10},
		{ClientId: 1, Input: registerInput{}, Call: 20, Output: 0, Return: 30},
	}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(registerModel, history, 10*time.Second))
}

// TestLinearizableWritesAndLeaderReads runs concurrent writes (Apply) and
// reads (ConsistentState on the leader) of one register against a real
// three-node cluster while leadership is moved around, and checks the
// history with porcupine.
func TestLinearizableWritesAndLeaderReads(t *testing.T) {
	c := mustNewCluster(t, 3)
	c.waitLeader()
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }

	var mu sync.Mutex
	var history []porcupine.Operation
	record := func(op porcupine.Operation) {
		mu.Lock()
		history = append(history, op)
		mu.Unlock()
	}

	const clients, opsPerClient = 4, 40
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for client := range clients {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(client), 99))
			for seq := 0; seq < opsPerClient && ctx.Err() == nil; {
				leader := c.currentLeader()
				if leader == nil {
					time.Sleep(5 * time.Millisecond) // no leader yet: back off, not a sync point
					continue
				}
				opCtx, opCancel := context.WithTimeout(ctx, 5*time.Second)
				if r.IntN(2) == 0 {
					in := registerInput{write: true, value: client*opsPerClient + seq + 1}
					call := now()
					_, err := leader.store.Apply(opCtx, setBatching("reg", in.value))
					ret := now()
					switch {
					case err == nil:
						record(porcupine.Operation{ClientId: client, Input: in, Call: call, Output: 0, Return: ret})
					case errors.Is(err, ErrNotLeader), errors.Is(err, ErrNoLeader):
						// Not proposed: the write did not happen; retry it.
						opCancel()
						time.Sleep(5 * time.Millisecond) // retry backoff, not a sync point
						continue
					default:
						// Unknown outcome: it may take effect at any later
						// time, so it never returns.
						record(porcupine.Operation{ClientId: client, Input: in, Call: call, Output: 0, Return: math.MaxInt64})
					}
				} else {
					call := now()
					st, err := leader.store.ConsistentState(opCtx)
					ret := now()
					if err != nil {
						// A failed read observed nothing; retry it.
						opCancel()
						time.Sleep(5 * time.Millisecond) // retry backoff, not a sync point
						continue
					}
					record(porcupine.Operation{ClientId: client, Input: registerInput{}, Call: call, Output: st.Batching["reg"].MaxSize, Return: ret})
				}
				opCancel()
				seq++
			}
		})
	}
	// Move leadership when a third and two thirds of the operations are
	// done, so that writes and reads straddle leader changes.
	transfers := 0
	for _, target := range []int{clients * opsPerClient / 3, clients * opsPerClient * 2 / 3} {
		waitFor(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(history) >= target
		}, "clients made progress")
		if leader := c.currentLeader(); leader != nil && leader.store.raft.LeadershipTransfer().Error() == nil {
			transfers++
		}
	}
	wg.Wait()
	t.Logf("leadership transfers: %d", transfers)

	writes, reads := 0, 0
	for _, op := range history {
		if op.Input.(registerInput).write {
			writes++
		} else {
			reads++
		}
	}
	t.Logf("history: %d writes, %d reads", writes, reads)
	require.Greater(t, writes, clients*opsPerClient/4)
	require.Greater(t, reads, clients*opsPerClient/4)
	res, info := porcupine.CheckOperationsVerbose(registerModel, history, 30*time.Second)
	if res != porcupine.Ok {
		t.Logf("partial linearizations: %v", info.PartialLinearizations())
	}
	require.Equal(t, porcupine.Ok, res, "history is not linearizable")
}
