package engine

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func feed(o *textOut, pieces ...string) (emitted []string, stopped bool) {
	for _, p := range pieces {
		e, s := o.add(p)
		emitted = append(emitted, e)
		if s {
			return emitted, true
		}
	}
	return emitted, false
}

func TestTextOutJoinsUTF8SplitAcrossByteTokens(t *testing.T) {
	var o textOut
	o.reset(nil)
	em, _ := feed(&o, "a", "\xe6", "\x97", "\xa5", "b")
	require.Equal(t, []string{"a", "", "", "日", "b"}, em)
}

func TestTextOutReplacesInvalidBytes(t *testing.T) {
	var o textOut
	o.reset(nil)
	em, _ := feed(&o, "x", "\xff", "y", "\xe6\x97")
	rest, _ := o.flush()
	require.Equal(t, "x\uFFFDy\uFFFD", strings.Join(em, "")+rest)
	require.Equal(t, "x\uFFFDy\uFFFD", string(o.text))
}

func TestTextOutDropsControlBytesLikeRunC(t *testing.T) {
	var o textOut
	o.reset(nil)
	em, _ := feed(&o, "a", "\x01", "\n", "\x7f", "b")
	require.Equal(t, "a\nb", strings.Join(em, ""))
}

func TestTextOutHoldsBackPossibleStopString(t *testing.T) {
	var o textOut
	o.reset([]string{"END", ""})
	em, stopped := feed(&o, "foo E", "N", "X")
	require.False(t, stopped)
	require.Equal(t, []string{"foo ", "", "ENX"}, em)
}

func TestTextOutStopsAcrossPieces(t *testing.T) {
	var o textOut
	o.reset([]string{"zzz", "\n\n"})
	em, stopped := feed(&o, "one", "\n", "\ntwo")
	require.True(t, stopped)
	require.Equal(t, "one", strings.Join(em, ""))
	require.Equal(t, "one", string(o.text))
}

func TestTextOutEarliestStopWins(t *testing.T) {
	var o textOut
	o.reset([]string{"cd", "bc"})
	_, stopped := feed(&o, "abcd")
	require.True(t, stopped)
	require.Equal(t, "a", string(o.text))
}
