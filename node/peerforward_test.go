package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/peer"
	"github.com/shoal-dev/shoal/router"
)

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// Forwarded requests (prompts and answers) travel on the peer plane, never
// on the target's client HTTP port: with the key over its mutual TLS, without
// one from a member's address. Plain answers and streams (flushed, with
// their usage settled across the hop) both; a caller without the key, or
// not a member, cannot submit one there.
func TestForwardedRequestsTravelThePeerPlane(t *testing.T) {
	for _, mode := range securityModes {
		t.Run(mode.name, func(t *testing.T) {
			var targetHTTP *countingListener
			tc := mustNewCluster(t, 2, func(i int, cfg *Config) {
				withSecurity(mode.key)(i, cfg)
				if i == 0 {
					// The entry node serves another model only, so it must forward.
					cfg.Models[0].Name = "elsewhere"
				} else {
					targetHTTP = &countingListener{Listener: cfg.HTTPListener}
					cfg.HTTPListener = targetHTTP
				}
			})
			entry, target := tc.nodes[0], tc.nodes[1]
			require.Eventually(t, func() bool { return len(entry.candidates("sim-fast")) == 1 }, clusterWait, 10*time.Millisecond)

			res := send(t, http.MethodPost, baseURL(entry)+"/v1/infer", []byte(`{"model":"sim-fast","input":"hello","parameters":{"temperature":1}}`), nil)
			require.Equal(t, http.StatusOK, res.status, "%s", res.body)
			require.Contains(t, res.header.Get(router.HeaderRoute), "forward")
			require.Equal(t, target.Name(), res.header.Get("X-Shoal-Node"))

			// A stream arrives event by event, ends, and reports usage.
			resp, err := http.Post(baseURL(entry)+"/v1/chat/completions", "application/json", strings.NewReader(
				`{"model":"sim-fast","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"temperature":1}`))
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
			events, usage, done := 0, false, false
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				line := sc.Text()
				if !strings.HasPrefix(line, "data: ") {
					continue
				}
				events++
				usage = usage || strings.Contains(line, `"usage"`)
				done = done || line == "data: [DONE]"
			}
			require.NoError(t, sc.Err())
			require.True(t, done, "stream never ended")
			require.True(t, usage, "no usage event")
			require.Greater(t, events, 3)
			require.Empty(t, resp.Trailer.Get(router.HeaderUsage), "internal trailer leaked")

			require.EqualValues(t, 2, target.peer.forwardsServed.Load(), "the target's peer plane served both forwards")
			require.Zero(t, targetHTTP.accepted.Load(), "a forward reached the target's client HTTP port")

			// Nobody outside the cluster may submit a forward on the plane.
			ctx, cancel := context.WithTimeout(context.Background(), apiWait)
			defer cancel()
			body := []byte(`{"model":"sim-fast","input":"forged"}`)
			stranger := peer.NewClient(peer.ClientConfig{Self: "stranger", Attempts: 1})
			pr, err := stranger.Post(ctx, target.Store().Addr(), "/v1/infer", body)
			if mode.key == "" {
				require.NoError(t, err)
				require.Equal(t, http.StatusForbidden, pr.Status, "a non-member: %s", pr.Body)
			} else if err == nil {
				// net/http's TLS server answers plain HTTP with a bare 400.
				require.Equal(t, http.StatusBadRequest, pr.Status, "no TLS: %s", pr.Body)
			}
			if mode.key != "" {
				otherTLS, err := consensus.ClusterTLS([]byte("not the cluster key, another one"))
				require.NoError(t, err)
				other := peer.NewClient(peer.ClientConfig{Self: entry.Name(), TLS: otherTLS, Attempts: 1})
				_, err = other.Post(ctx, target.Store().Addr(), "/v1/infer", body)
				require.ErrorIs(t, err, peer.ErrUnreachable, "TLS under another key")
			}
			require.EqualValues(t, 2, target.peer.forwardsServed.Load(), "a refused caller reached the handler")
		})
	}
}

// With the key, what crosses the peer plane is TLS: a forwarded prompt is
// not readable on the wire (without one it is, which shows the tap works).
// The tap sits between the entry node and the target's Raft port, as an
// eavesdropper would.
func TestForwardedPromptIsEncryptedWithTheKey(t *testing.T) {
	for _, mode := range securityModes {
		t.Run(mode.name, func(t *testing.T) {
			tc := mustNewCluster(t, 2, func(i int, cfg *Config) {
				withSecurity(mode.key)(i, cfg)
				if i == 0 {
					cfg.Models[0].Name = "elsewhere"
				}
			})
			entry, target := tc.nodes[0], tc.nodes[1]
			require.Eventually(t, func() bool { return len(entry.candidates("sim-fast")) == 1 }, clusterWait, 10*time.Millisecond)

			tap := newTap(t, target.Store().Addr())
			const secret = "the-secret-prompt-4711"
			cand := entry.candidates("sim-fast")[0]
			cand.PeerAddr = tap.ln.Addr().String()
			body := []byte(`{"model":"sim-fast","input":"` + secret + `","parameters":{"temperature":1}}`)
			r := httptest.NewRequest(http.MethodPost, "/v1/infer", bytes.NewReader(body))
			rec := httptest.NewRecorder()
			_, err := entry.fwd.Forward(context.Background(), rec, r, body, cand, "test")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, rec.Code, "%s", rec.Body)
			var answer struct {
				Outputs []struct{ Text string } `json:"outputs"`
			}
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &answer))
			require.Len(t, answer.Outputs, 1)
			text := answer.Outputs[0].Text
			require.NotEmpty(t, text)

			sent, received := tap.captured()
			require.NotEmpty(t, sent)
			require.Equal(t, peer.Header, sent[0], "the peer plane's header byte")
			if mode.key == "" {
				require.Contains(t, string(sent), secret, "without a key the plane is plaintext")
				require.Contains(t, string(received), text, "without a key the plane is plaintext")
				return
			}
			require.NotContains(t, string(sent), secret, "the prompt crossed in clear")
			require.NotContains(t, string(sent), "/v1/infer", "the request line crossed in clear")
			require.NotContains(t, string(received), text, "the answer crossed in clear")
		})
	}
}

// tap relays connections to addr and records both directions.
type tap struct {
	ln             net.Listener
	mu             sync.Mutex
	sent, received bytes.Buffer
}

// tapWriter appends to one of a tap's buffers.
type tapWriter struct {
	tp  *tap
	buf *bytes.Buffer
}

func (w tapWriter) Write(b []byte) (int, error) {
	w.tp.mu.Lock()
	defer w.tp.mu.Unlock()
	return w.buf.Write(b)
}

func newTap(t *testing.T, addr string) *tap {
	tp := &tap{ln: listenLoopback(t)}
	t.Cleanup(func() { _ = tp.ln.Close() })
	go func() {
		for {
			c, err := tp.ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", addr)
			if err != nil {
				_ = c.Close()
				continue
			}
			t.Cleanup(func() { _ = c.Close(); _ = up.Close() })
			go func() { _, _ = io.Copy(c, io.TeeReader(up, tapWriter{tp, &tp.received})) }()
			go func() { _, _ = io.Copy(up, io.TeeReader(c, tapWriter{tp, &tp.sent})) }()
		}
	}()
	return tp
}

func (tp *tap) captured() (sent, received []byte) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return bytes.Clone(tp.sent.Bytes()), bytes.Clone(tp.received.Bytes())
}
