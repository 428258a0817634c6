package slots

import (
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestKeysFindTheirSlot(t *testing.T) {
	tb := New[string](64)
	require.Same(t, tb.String("a"), tb.Bytes([]byte("a")), "a key's slot is the same whether given as string or bytes")
	require.Same(t, tb.String("a"), tb.String("a"))
	v := "answer"
	tb.String("a").Store(&v)
	require.Equal(t, "answer", *tb.Bytes([]byte("a")).Load())
}

func TestTableHoldsNoMoreThanItsSlots(t *testing.T) {
	tb := New[int](16)
	for i := range 1000 {
		tb.String(strconv.Itoa(i)).Store(&i)
	}
	require.Equal(t, 16, tb.Held(), "a thousand keys share sixteen slots")
	// Every held entry is the last one stored in its slot.
	for i := range 1000 {
		got := *tb.String(strconv.Itoa(i)).Load()
		require.Equal(t, tb.String(strconv.Itoa(got)), tb.String(strconv.Itoa(i)))
	}
}

func TestSeedsDiffer(t *testing.T) {
	a, b := New[int](1<<16), New[int](1<<16)
	same := 0
	for i := range 64 {
		k := "k" + strconv.Itoa(i)
		ia := a.String(k)
		ib := b.String(k)
		if indexOf(a, ia) == indexOf(b, ib) {
			same++
		}
	}
	require.Less(t, same, 8, "two tables place keys alike: the seed is shared")
}

func indexOf[E any](t *Table[E], p *atomic.Pointer[E]) int {
	for i := range t.slots {
		if &t.slots[i] == p {
			return i
		}
	}
	return -1
}
