package node

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// apiWait bounds every wait in the single-node tests; generous because the
// test machine is small and shared.
const apiWait = 20 * time.Second

// testModel is the sim model every test node serves.
const testModel = "sim-test"

// startTestNode starts a real single node on loopback ports (HTTP, Raft,
// gossip, cache) serving testModel, a sim model that costs 1ms a batch and
// streams without delay. mutate may change the configuration before
// start. The node is shut down when the test ends.
func startTestNode(t testing.TB, mutate func(*Config)) *Node {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NodeName = "test-node"
	cfg.DataDir = t.TempDir()
	cfg.HTTPListener = loopbackListener(t)
	cfg.RaftListener = loopbackListener(t)
	cfg.Gossip.Addr = "127.0.0.1:0"
	cfg.Cache.Addr = "127.0.0.1:0"
	cfg.Cache.Backend = "local"
	cfg.Raft.BootstrapExpect = 1
	m := DefaultModelConfig(testModel, "sim")
	m.Sim.Base, m.Sim.PerItem, m.Sim.TokenInterval = time.Millisecond, 0, 0
	cfg.Models = []ModelConfig{m}
	if mutate != nil {
		mutate(&cfg)
	}
	n, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, n.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), apiWait)
		defer cancel()
		_ = n.Shutdown(ctx)
	})
	return n
}

// withSimModel replaces the served models by one sim model named testModel
// shaped by the given costs.
func withSimModel(base, perItem, tokenInterval time.Duration) func(*Config) {
	return func(c *Config) {
		m := DefaultModelConfig(testModel, "sim")
		m.Sim.Base, m.Sim.PerItem, m.Sim.TokenInterval = base, perItem, tokenInterval
		c.Models = []ModelConfig{m}
	}
}

func loopbackListener(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

// baseURL is the node's HTTP root.
func baseURL(n *Node) string { return "http://" + n.HTTPAddr() }

// rawClient talks plain HTTP/1.1 and leaves bodies exactly as sent, so
// tests see the node's Content-Encoding.
func rawClient() *http.Client {
	return &http.Client{Timeout: apiWait, Transport: &http.Transport{DisableCompression: true}}
}

// reply is a fully read response.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// send makes one request; header holds extra headers (Content-Type is
// application/json unless set).
func send(t require.TestingT, method, url string, body []byte, header map[string]string) reply {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	require.NoError(t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		if v == "" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := rawClient().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

func postJSON(t testing.TB, n *Node, path string, body any) reply {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	return send(t, http.MethodPost, baseURL(n)+path, b, nil)
}

// openAIError is the error envelope every failure must carry.
type openAIError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	} `json:"error"`
}

// requireStrictJSON checks the status and a JSON content type, and decodes
// the body into a T, refusing fields T does not have.
func requireStrictJSON[T any](t testing.TB, r reply, status int) T {
	t.Helper()
	require.Equal(t, status, r.status, "body: %s", r.body)
	require.True(t, strings.HasPrefix(r.header.Get("Content-Type"), "application/json"), "content type %q", r.header.Get("Content-Type"))
	var v T
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&v), "body: %s", r.body)
	return v
}

// requireAPIError checks the status and that the body is OpenAI's error
// shape with a message, type and code; it returns the decoded error.
func requireAPIError(t testing.TB, r reply, status int) openAIError {
	t.Helper()
	e := requireStrictJSON[openAIError](t, r, status)
	require.NotEmpty(t, e.Error.Message)
	require.NotEmpty(t, e.Error.Type)
	require.NotEmpty(t, e.Error.Code)
	require.NotEmpty(t, r.header.Get("X-Request-ID"))
	require.Equal(t, "test-node", r.header.Get("X-Shoal-Node"))
	return e
}

func chatRequest(model, content string) map[string]any {
	return map[string]any{"model": model, "messages": []map[string]any{{"role": "user", "content": content}}, "max_tokens": 8}
}
