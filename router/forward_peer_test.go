package router

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// With a PeerDial, a forward goes to the target's peer address, unsigned;
// a target whose plane has no inference endpoints (an older node during a
// rolling upgrade answers its own 404) gets it on its HTTP port, signed.
func TestForwardUsesThePeerPlaneAndFallsBackForOlderNodes(t *testing.T) {
	var peerCalls, httpCalls atomic.Int64
	var peerHasRoutes atomic.Bool
	peerSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peerCalls.Add(1)
		if !peerHasRoutes.Load() {
			http.Error(w, `{"error":{"message":"no peer endpoint","code":"not_found"}}`, http.StatusNotFound)
			return
		}
		if r.Header.Get(HeaderForwarded) != "self" || r.Header.Get(HeaderForwardAuth) != "" {
			http.Error(w, "bad forward headers", http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Shoal-Node", "target")
		_, _ = w.Write([]byte("via peer"))
	}))
	defer peerSrv.Close()
	httpSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpCalls.Add(1)
		if r.Header.Get(HeaderForwardAuth) == "" {
			http.Error(w, "unsigned", http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Shoal-Node", "target")
		_, _ = w.Write([]byte("via http"))
	}))
	defer httpSrv.Close()

	f := NewForwarder(ForwarderConfig{Self: "self", Secret: func() []byte { return []byte("secret") },
		PeerDial: (&net.Dialer{}).DialContext})
	defer f.Close()
	target := Candidate{Node: "target", Model: "m", HTTPAddr: httpSrv.Listener.Addr().String(), PeerAddr: peerSrv.Listener.Addr().String()}
	forward := func() string {
		body := []byte(`{"model":"m"}`)
		rec := httptest.NewRecorder()
		_, err := f.Forward(context.Background(), rec, httptest.NewRequest(http.MethodPost, "/v1/infer", bytes.NewReader(body)), body, target, "r")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		return rec.Body.String()
	}

	require.Equal(t, "via http", forward(), "an older node's plane: its HTTP port")
	require.EqualValues(t, 1, peerCalls.Load())
	peerHasRoutes.Store(true)
	require.Equal(t, "via peer", forward())
	require.Equal(t, "via peer", forward())
	require.EqualValues(t, 1, httpCalls.Load(), "the HTTP port once, for the older node only")
}
