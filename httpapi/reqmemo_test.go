package httpapi

import (
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/scheduler"
	"github.com/stretchr/testify/require"
)

func TestReqMemoGivesEachRequestItsOwnCopy(t *testing.T) {
	m := newReqMemo()
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}`)
	req, err := decodeChat(body)
	require.NoError(t, err)
	decoded := *req
	got, e := m.get(body)
	require.Nil(t, got, "nothing memoized yet")
	require.Nil(t, e)

	m.put(body, &decoded, memoKey{scope: "s", stamp: 2, key: "k", cacheable: true})
	first, e := m.get(body)
	require.NotNil(t, first)
	require.Same(t, e, first.memo)
	// What the handler and the limiter change on a request.
	first.Priority = scheduler.PriorityHigh
	first.KeyHash, first.KeyHashed = "h", true
	first.Charged.Tokens = 7
	first.keyed = true

	second, _ := m.get(body)
	fresh, err := decodeChat(body)
	require.NoError(t, err)
	second.memo = nil
	require.Equal(t, *fresh, *second, "a change to one request's copy reached the next")

	key, ok, found := e.cachedKey("s", 2)
	require.True(t, found)
	require.True(t, ok)
	require.Equal(t, "k", key)
	_, _, found = e.cachedKey("other scope", 2)
	require.False(t, found, "a key of another scope")
	_, _, found = e.cachedKey("s", 3)
	require.False(t, found, "a key of another stamp (a purge, a setting)")
}

func TestReqMemoNeedsTheSameBytes(t *testing.T) {
	m := newReqMemo()
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	req, err := decodeChat(body)
	require.NoError(t, err)
	m.put(body, req, memoKey{})
	// Same length, one byte apart; and the body with a space more.
	other := []byte(strings.Replace(string(body), "hi", "ho", 1))
	got, _ := m.get(other)
	require.Nil(t, got)
	got, _ = m.get([]byte(strings.Replace(string(body), ":", ": ", 1)))
	require.Nil(t, got)

	// A body past the bound is never kept.
	big := []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", reqMemoMaxBody) + `"}]}`)
	breq, err := decodeChat(big)
	require.NoError(t, err)
	m.put(big, breq, memoKey{})
	got, _ = m.get(big)
	require.Nil(t, got)
}
