package node

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/consensus"
	"github.com/shoal-dev/shoal/peer"
	"github.com/shoal-dev/shoal/raftwrite"
	"github.com/shoal-dev/shoal/router"
)

// securityModes are the configurations users run: no admin token and no
// gossip key (the default), and a gossip key without a token. The peer
// plane must work in both; neither may need the operator's token.
var securityModes = []struct {
	name string
	key  string
}{
	{"no token, no key", ""},
	{"no token, gossip key", base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))},
}

func withSecurity(key string) func(int, *Config) {
	return func(_ int, cfg *Config) {
		cfg.Admin.Token = ""
		cfg.Gossip.EncryptKey = key
	}
}

// A follower whose backend fails opens its breaker for the whole cluster
// with no admin token: the transition reaches the leader over the peer
// plane (before it, the leader's admin API refused it with 403 and the
// breaker never opened).
func TestFollowerBreakerOpensClusterWideWithoutAdminToken(t *testing.T) {
	for _, mode := range securityModes {
		t.Run(mode.name, func(t *testing.T) {
			ups := []*upstream{newUpstream(t), newUpstream(t), newUpstream(t)}
			tc := mustNewCluster(t, 3, func(i int, cfg *Config) {
				withSecurity(mode.key)(i, cfg)
				cfg.Models = []ModelConfig{openAIModel(ups[i].srv.URL)}
				cfg.CircuitBreaker.FailureThreshold = 3
				cfg.CircuitBreaker.Timeout = time.Minute
			})
			leader := tc.waitLeader(tc.nodes...)
			tc.waitServing("up", tc.nodes...)
			fi := 0
			for tc.nodes[fi].Name() == leader {
				fi++
			}
			follower := tc.nodes[fi]
			ups[fi].failing.Store(true)

			// Requests entering at the follower reach its failing backend
			// until the breaker opens.
			if !assert.Eventually(t, func() bool {
				_ = tryInfer(follower, "up")
				return follower.Store().State().Breaker(follower.Name(), "up").State == consensus.BreakerOpen
			}, clusterWait, time.Millisecond, "the follower's breaker never opened") {
				t.Fatalf("the follower's upstream saw %d calls; %s", ups[fi].calls.Load(), breakerDiagnosis(follower, "up"))
			}
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				for _, nd := range tc.nodes {
					assert.Equal(c, consensus.BreakerOpen, nd.Store().State().Breaker(follower.Name(), "up").State, nd.Name())
				}
			}, clusterWait, 20*time.Millisecond, "the breaker is not open on every node")
			for i := range 20 {
				require.Equal(t, http.StatusOK, tryInfer(follower, "up"), "request %d entering at the follower", i)
			}
		})
	}
}

// tryInfer sends one uncacheable request and returns its status (0 when
// the request itself failed).
func tryInfer(nd *Node, model string) int {
	b, _ := json.Marshal(map[string]any{"model": model, "input": "q", "parameters": map[string]any{"temperature": 1}})
	resp, err := http.Post("http://"+nd.HTTPAddr()+"/v1/infer", "application/json", bytes.NewReader(b))
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// With the gossip key the peer plane is mutual TLS under it: a caller
// without the key (plain, or TLS under another key) gets no answer; one
// with it does. Without a key a caller that is not a member is refused.
func TestPeerPlaneRefusesCallersWithoutTheKey(t *testing.T) {
	key := securityModes[1].key
	n := startTestNode(t, func(c *Config) { c.Gossip.EncryptKey = key })
	require.Eventually(t, n.Store().IsLeader, apiWait, 10*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), apiWait)
	defer cancel()
	body := applyBody(t, "w1", 7)

	plain := peer.NewClient(peer.ClientConfig{Self: n.Name(), Attempts: 1})
	resp, err := plain.Post(ctx, n.Store().Addr(), raftwrite.Path, body)
	if err == nil {
		// net/http's TLS server answers plain HTTP with a bare 400.
		require.Equal(t, http.StatusBadRequest, resp.Status, "no TLS: %s", resp.Body)
	}
	otherTLS, err := consensus.ClusterTLS([]byte("not the cluster key, another one"))
	require.NoError(t, err)
	other := peer.NewClient(peer.ClientConfig{Self: n.Name(), TLS: otherTLS, Attempts: 1})
	_, err = other.Post(ctx, n.Store().Addr(), raftwrite.Path, body)
	require.ErrorIs(t, err, peer.ErrUnreachable, "TLS under another key")
	require.NotEqual(t, 7, n.Store().State().Batching[testModel].MaxSize)

	raw, err := base64.StdEncoding.DecodeString(key)
	require.NoError(t, err)
	keyTLS, err := consensus.ClusterTLS(raw)
	require.NoError(t, err)
	member := peer.NewClient(peer.ClientConfig{Self: n.Name(), TLS: keyTLS, Attempts: 1})
	resp, err = member.Post(ctx, n.Store().Addr(), raftwrite.Path, body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.Status, "%s", resp.Body)
	require.Equal(t, 7, n.Store().State().Batching[testModel].MaxSize)

	open := startTestNode(t, func(c *Config) { c.NodeName = "open-node" })
	stranger := peer.NewClient(peer.ClientConfig{Self: "stranger", Attempts: 1})
	resp, err = stranger.Post(ctx, open.Store().Addr(), raftwrite.Path, body)
	require.NoError(t, err)
	require.Equal(t, http.StatusForbidden, resp.Status, "%s", resp.Body)
}

func applyBody(t *testing.T, id string, maxSize int) []byte {
	t.Helper()
	once, err := consensus.NewOnce(id, consensus.SetBatching{Model: testModel,
		Settings: consensus.BatchingSettings{MaxSize: maxSize, FlushTimeout: time.Millisecond}})
	require.NoError(t, err)
	b, err := json.Marshal(raftwrite.Request{Once: once})
	require.NoError(t, err)
	return b
}

// A forwarded request's headers, captured, carry no other body past the
// limits and cannot be delivered twice: the signature covers the body and
// the forward ID is remembered. Before, it covered the sender and request
// ID only and 5 bodies passed an rpm=1 limit.
func TestReplayedForwardHeadersAreRefused(t *testing.T) {
	for _, mode := range []struct{ name, key string }{
		{"gossip key", securityModes[1].key},
		{"no key: secret agreed through raft", ""},
	} {
		t.Run(mode.name, func(t *testing.T) {
			n := startTestNode(t, func(c *Config) {
				c.Gossip.EncryptKey = mode.key
				c.RateLimit.RPM = 1
			})
			require.Eventually(t, func() bool { return n.forwardSecret() != nil }, apiWait, 10*time.Millisecond)

			// Capture what this node's forwarder sends a peer named like
			// this node, as an eavesdropper on the wire would.
			var mu sync.Mutex
			var captured http.Header
			capture := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				captured = r.Header.Clone()
				mu.Unlock()
				w.WriteHeader(http.StatusOK)
			}))
			defer capture.Close()
			original := []byte(`{"model":"` + testModel + `","input":"original"}`)
			r := httptest.NewRequest(http.MethodPost, "/v1/infer", bytes.NewReader(original))
			rec := httptest.NewRecorder()
			rec.Header().Set("X-Request-ID", "captured-1")
			_, err := n.fwd.Forward(context.Background(), rec, r, original,
				router.Candidate{Node: n.Name(), Model: testModel, HTTPAddr: capture.Listener.Addr().String()}, "test")
			require.NoError(t, err)
			mu.Lock()
			headers := captured
			mu.Unlock()

			replay := func(body []byte) int {
				req, err := http.NewRequest(http.MethodPost, baseURL(n)+"/v1/infer", bytes.NewReader(body))
				require.NoError(t, err)
				for k, v := range headers {
					req.Header[k] = v
				}
				resp, err := rawClient().Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				_, _ = io.Copy(io.Discard, resp.Body)
				return resp.StatusCode
			}
			admitted := 0
			clearOfMinuteEdge(t)
			for i := range 5 {
				if replay([]byte(fmt.Sprintf(`{"model":%q,"input":"other %d"}`, testModel, i))) == http.StatusOK {
					admitted++
				}
			}
			require.LessOrEqual(t, admitted, 1, "5 other bodies under captured headers past an rpm=1 limit")
			require.Equal(t, http.StatusOK, replay(original), "the captured request itself, delivered once")
			require.Equal(t, http.StatusTooManyRequests, replay(original), "the same headers again are a replay: limited as a client request")
		})
	}
}

// Publishing load never waits on Raft: with the cluster loop stuck in a
// membership change, a load change still reaches the peers.
func TestLoadPublishesWhileAMembershipChangeBlocks(t *testing.T) {
	var block atomic.Bool
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	tc := mustNewCluster(t, 2, func(i int, cfg *Config) {
		withSecurity("")(i, cfg)
		if i == 1 {
			slow := DefaultModelConfig("slow", "sim")
			slow.Sim.Base, slow.Sim.PerItem, slow.Sim.TokenInterval = 5*time.Second, 0, 0
			cfg.Models = append(cfg.Models, slow)
			cfg.Tuning.ReconcileHook = func() {
				if block.Load() {
					select {
					case entered <- struct{}{}:
					default:
					}
					<-release
				}
			}
		}
	})
	t.Cleanup(func() { close(release) }) // before the nodes stop
	n1, n2 := tc.nodes[0], tc.nodes[1]
	require.Eventually(t, func() bool {
		m, ok := n1.Gossip().Member(n2.Name())
		_, has := m.Load.Models["slow"]
		return ok && has
	}, clusterWait, 20*time.Millisecond)

	block.Store(true)
	select {
	case <-entered:
	case <-time.After(clusterWait):
		t.Fatal("the membership change never started")
	}
	go func() { _ = tryInfer(n2, "slow") }()
	require.Eventually(t, func() bool {
		m, _ := n1.Gossip().Member(n2.Name())
		l := m.Load.Models["slow"]
		return l.InFlight+l.QueueDepth > 0
	}, 4*time.Second, 20*time.Millisecond, "n2's load change never reached n1 while its membership change blocked")
}

// stallListener accepts connections whose reads block while stalled: a
// node frozen mid-flight (as by SIGSTOP) that the kernel still accepts for.
// On the Raft port it stalls only peer-plane connections, so Raft (and the
// cluster's leader) stays as it was.
type stallListener struct {
	net.Listener
	peerOnly bool
	stalled  atomic.Bool
	mu       sync.Mutex
	resume   chan struct{}
}

func newStallListener(ln net.Listener) *stallListener {
	return &stallListener{Listener: ln, resume: make(chan struct{})}
}

func (l *stallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &stallConn{Conn: c, l: l, closed: make(chan struct{})}, nil
}

func (l *stallListener) stall() { l.stalled.Store(true) }

func (l *stallListener) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stalled.Swap(false) {
		close(l.resume)
	}
}

type stallConn struct {
	net.Conn
	l      *stallListener
	once   sync.Once
	closed chan struct{}
	// kind is the connection's first byte plus one, once read (the mux
	// reads it alone); 0 before.
	kind atomic.Uint32
}

func (c *stallConn) Read(b []byte) (int, error) {
	k := c.kind.Load()
	if c.l.stalled.Load() && (!c.l.peerOnly || k == uint32(peer.Header)+1) {
		select {
		case <-c.l.resume:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	n, err := c.Conn.Read(b)
	if k == 0 && n > 0 {
		c.kind.Store(uint32(b[0]) + 1)
	}
	return n, err
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// A peer that accepts and hangs does not hold a forwarded request for its
// whole deadline: the hop's header timeout gives it back in time for the
// one retry on another node.
func TestForwardToAHungPeerRetriesElsewhereInTime(t *testing.T) {
	for _, mode := range securityModes {
		t.Run(mode.name, func(t *testing.T) {
			var stall *stallListener
			tc := mustNewCluster(t, 3, func(i int, cfg *Config) {
				withSecurity(mode.key)(i, cfg)
				switch i {
				case 0:
					cfg.Models = []ModelConfig{DefaultModelConfig("other", "sim")}
					cfg.Router.Policy = router.PolicyRoundRobin
				case 1:
					// Forwards reach it on the peer plane (Raft port).
					stall = newStallListener(cfg.RaftListener)
					stall.peerOnly = true
					cfg.RaftListener = stall
				}
			})
			entry := tc.nodes[0]
			require.Eventually(t, func() bool { return len(entry.candidates("sim-fast")) == 2 }, clusterWait, 20*time.Millisecond)
			stall.stall()
			t.Cleanup(stall.release) // before the nodes stop

			retried := 0
			for i := range 4 {
				res := send(t, http.MethodPost, baseURL(entry)+"/v1/infer",
					[]byte(fmt.Sprintf(`{"model":"sim-fast","input":"q%d","parameters":{"temperature":1}}`, i)),
					map[string]string{"X-Shoal-Timeout": "4s"})
				require.Equal(t, http.StatusOK, res.status, "request %d: %s", i, res.body)
				if strings.Contains(res.header.Get(router.HeaderRoute), "retry") {
					retried++
				}
			}
			require.Positive(t, retried, "no request went to the hung node first")
		})
	}
}

// A write a follower forwards while the leader dies follows the new leader
// within its deadline and is read back at once on the follower.
func TestWriteFollowsANewLeaderWhenTheLeaderDies(t *testing.T) {
	for _, mode := range securityModes {
		t.Run(mode.name, func(t *testing.T) {
			tc := mustNewCluster(t, 3, withSecurity(mode.key))
			leader := tc.node(tc.waitLeader(tc.nodes...))
			var follower *Node
			for _, nd := range tc.nodes {
				if nd != leader {
					follower = nd
				}
			}
			// The followers still name the dead leader for a heartbeat
			// timeout: the write's first attempts go to it.
			stopNode(leader)
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			err := follower.applyCommand(ctx, consensus.SetBatching{Model: "sim-fast",
				Settings: consensus.BatchingSettings{MaxSize: 7, FlushTimeout: 3 * time.Millisecond}})
			require.NoError(t, err)
			require.Equal(t, 7, follower.Store().State().Batching["sim-fast"].MaxSize, "read your write")
		})
	}
}

// PUT limits on a follower answers with the policy it just set: the node
// waits until its own state has applied the write.
func TestFollowerPutLimitsAnswersTheNewPolicy(t *testing.T) {
	for _, key := range []string{"", securityModes[1].key} {
		t.Run(fmt.Sprintf("key=%t", key != ""), func(t *testing.T) {
			tc := mustNewCluster(t, 3, func(i int, cfg *Config) { withAdminToken(i, cfg); cfg.Gossip.EncryptKey = key })
			leader := tc.waitLeader(tc.nodes...)
			follower := tc.nodes[0]
			if follower.Name() == leader {
				follower = tc.nodes[1]
			}
			for rpm := 71; rpm < 76; rpm++ {
				res := doJSON(t, http.MethodPut, "http://"+follower.HTTPAddr()+"/admin/v1/limits", testToken, map[string]any{"default_rpm": rpm})
				require.Equal(t, http.StatusOK, res.status, "%s", res.body)
				var p consensus.LimitPolicy
				require.NoError(t, json.Unmarshal(res.body, &p))
				require.Equal(t, rpm, p.DefaultRPM)
			}
		})
	}
}
