package router

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func signedRequest(t *testing.T, secret []byte, to, path string, body []byte, at time.Time) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	r.Header.Set("X-Request-ID", "req-1")
	Sign(secret, r.Header, Forwarded{From: "n1", To: to, Method: r.Method, URI: r.URL.RequestURI(), Body: body,
		RequestID: "req-1", At: at})
	return r
}

func TestVerifyAcceptsOnceAndRefusesReplays(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now()
	v := NewVerifier("n2", 0, 0)
	body := []byte(`{"model":"m","input":"a"}`)
	r := signedRequest(t, secret, "n2", "/v1/infer", body, now)
	require.NoError(t, v.Verify(secret, r, body, now))
	require.ErrorIs(t, v.Verify(secret, r, body, now.Add(time.Second)), ErrReplay, "the same headers again")

	// A captured header set is worth nothing with anything else changed.
	for name, tc := range map[string]struct {
		secret []byte
		path   string
		body   []byte
		to     string
	}{
		"other body":   {secret, "/v1/infer", []byte(`{"model":"m","input":"b"}`), "n2"},
		"other path":   {secret, "/v1/completions", body, "n2"},
		"other target": {secret, "/v1/infer", body, "n3"},
		"other secret": {[]byte("another secret, not the cluster's"), "/v1/infer", body, "n2"},
	} {
		r := signedRequest(t, secret, "n2", "/v1/infer", body, now)
		r2 := httptest.NewRequest(http.MethodPost, tc.path, bytes.NewReader(tc.body))
		r2.Header = r.Header.Clone()
		vv := NewVerifier(tc.to, 0, 0)
		require.ErrorIs(t, vv.Verify(tc.secret, r2, tc.body, now), ErrBadSignature, name)
	}

	old := signedRequest(t, secret, "n2", "/v1/infer", body, now.Add(-time.Minute))
	require.ErrorIs(t, v.Verify(secret, old, body, now), ErrStale)
	future := signedRequest(t, secret, "n2", "/v1/infer", body, now.Add(time.Minute))
	require.ErrorIs(t, v.Verify(secret, future, body, now), ErrStale)

	unsigned := httptest.NewRequest(http.MethodPost, "/v1/infer", bytes.NewReader(body))
	unsigned.Header.Set(HeaderForwarded, "n1")
	require.ErrorIs(t, v.Verify(secret, unsigned, body, now), ErrBadSignature)
	require.ErrorIs(t, v.Verify(nil, r, body, now), ErrBadSignature, "no secret, no trust")
}

func TestReplayCacheIsBoundedAndExpires(t *testing.T) {
	c := newReplayCache(100)
	now := time.Now()
	for i := range 1000 {
		require.True(t, c.add(strconv.Itoa(i), now.Add(time.Minute), now))
	}
	require.LessOrEqual(t, c.len(), 100)
	require.False(t, c.add("999", now.Add(time.Minute), now), "a recent ID is remembered")
	later := now.Add(2 * time.Minute)
	require.True(t, c.add("999", later.Add(time.Minute), later), "an expired ID is forgotten")
	require.Equal(t, 1, c.len())
}

// A full replay cache takes each new ID without copying the ones it
// holds: the old cache slid a slice forward and re-allocated it (65,536
// IDs, about 1 MB) every few thousand forwards, under the lock every
// verified forward takes.
func TestFullReplayCacheAddsWithoutCopying(t *testing.T) {
	const max = 1 << 16
	c := newReplayCache(max)
	now := time.Now()
	ids := make([]string, 4*max)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	for _, id := range ids[:max] {
		require.True(t, c.add(id, now.Add(time.Minute), now))
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, id := range ids[max:] {
		require.True(t, c.add(id, now.Add(time.Minute), now))
	}
	runtime.ReadMemStats(&after)
	perAdd := float64(after.TotalAlloc-before.TotalAlloc) / float64(len(ids)-max)
	require.Less(t, perAdd, 16.0, "bytes allocated per ID once the cache is full")
	require.Equal(t, max, c.len())
}

// An ID seen again after it expired is remembered for its new window,
// even when its first record is still queued behind a longer-lived one.
func TestReplayCacheKeepsARenewedID(t *testing.T) {
	c := newReplayCache(100)
	now := time.Now()
	require.True(t, c.add("x", now.Add(10*time.Minute), now))
	require.True(t, c.add("a", now.Add(time.Minute), now))
	later := now.Add(2 * time.Minute)
	require.True(t, c.add("a", later.Add(time.Minute), later), "expired, so new again")
	evenLater := later.Add(30 * time.Second)
	require.True(t, c.add("b", evenLater.Add(time.Minute), evenLater))
	require.False(t, c.add("a", evenLater.Add(time.Minute), evenLater), "its renewed window has not passed")
	require.Equal(t, 3, c.len())
}

// A hop to a target with history waits a few times its service time; with
// none, half the time left so the retry fits.
func TestHeaderTimeoutFollowsServiceTime(t *testing.T) {
	f := NewForwarder(ForwarderConfig{Self: "n1", MinHeaderTimeout: 100 * time.Millisecond})
	ctx, cancel := contextWithTimeout(t, 10*time.Second)
	defer cancel()
	target := Candidate{Node: "n2", Model: "m", Slots: 1}
	d := f.headerTimeout(ctx, target, false)
	require.InDelta(t, float64(5*time.Second), float64(d), float64(200*time.Millisecond))
	f.observe(target, false, 200*time.Millisecond)
	require.Equal(t, 800*time.Millisecond, f.headerTimeout(ctx, target, false))
	busy := target
	busy.QueueDepth = 3
	require.Equal(t, 3200*time.Millisecond, f.headerTimeout(ctx, busy, false))
	f.observe(target, false, 100*time.Millisecond)
	require.Equal(t, 4*180*time.Millisecond, f.headerTimeout(ctx, target, false), "smoothed: 200ms then 100ms")
	fast := NewForwarder(ForwarderConfig{Self: "n1", MinHeaderTimeout: 100 * time.Millisecond})
	fast.observe(target, false, time.Millisecond)
	require.Equal(t, 100*time.Millisecond, fast.headerTimeout(ctx, target, false), "floor")
}

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	t.Helper()
	return context.WithTimeout(context.Background(), d)
}

// FuzzVerify: any header values, path or body are refused or accepted,
// never a panic.
func FuzzVerify(f *testing.F) {
	f.Add("n1", "1700000000", "abc", "deadbeef", "/v1/infer", []byte(`{}`))
	f.Add("", "-1", "", "", "/", []byte(nil))
	f.Add("n1", "99999999999999999999", "x", "zz", "/v1/infer?x=1", []byte(`{"a":1}`))
	secret := []byte("0123456789abcdef0123456789abcdef")
	f.Fuzz(func(t *testing.T, from, ts, id, mac, path string, body []byte) {
		r, err := http.NewRequest(http.MethodPost, "http://n2"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		r.Header.Set(HeaderForwarded, from)
		r.Header.Set(HeaderForwardTime, ts)
		r.Header.Set(HeaderForwardID, id)
		r.Header.Set(HeaderForwardAuth, mac)
		_ = NewVerifier("n2", 0, 16).Verify(secret, r, body, time.Unix(1700000000, 0))
	})
}

func BenchmarkSignVerify(b *testing.B) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	body := bytes.Repeat([]byte("x"), 4096)
	v := NewVerifier("n2", 0, 0)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, "/v1/infer", bytes.NewReader(body))
		Sign(secret, r.Header, Forwarded{From: "n1", To: "n2", Method: r.Method, URI: "/v1/infer", Body: body, At: now})
		if err := v.Verify(secret, r, body, now); err != nil {
			b.Fatal(err)
		}
	}
}
