package gossip

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// waitTimeout is generous: the test machine is small and shared.
const waitTimeout = 20 * time.Second

// fastTune tightens memberlist for tests: failures are detected in one to
// two seconds and gossip spreads in tens of milliseconds. Push-pull stays at
// its 30 s default so tests show loads do not depend on it. The probe
// timeout leaves room for a machine loaded by other test packages: at 100ms
// with a suspicion multiplier of 2, six members under make test's load
// flapped dead and alive for the whole 20 s a test waited for them to agree.
func fastTune(c *memberlist.Config) {
	c.ProbeInterval = 300 * time.Millisecond
	c.ProbeTimeout = 200 * time.Millisecond
	c.SuspicionMult = 3
	c.GossipInterval = 20 * time.Millisecond
	c.GossipToTheDeadTime = time.Second
	c.TCPTimeout = 2 * time.Second
}

// logBuffer collects log output across goroutines, so a test can read what
// a node logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger returns a logger that writes to buf (if non-nil) and, with
// GOSSIP_TEST_LOG=1, to stderr. It never writes through t, because
// memberlist may log after a test has finished.
func testLogger(buf *logBuffer) *slog.Logger {
	var out []io.Writer
	if buf != nil {
		out = append(out, buf)
	}
	if os.Getenv("GOSSIP_TEST_LOG") == "1" {
		out = append(out, os.Stderr)
	}
	if len(out) == 0 {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(io.MultiWriter(out...), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testConfig is a node on 127.0.0.1, port 0, with test timings.
func testConfig(name string) Config {
	return Config{
		Name:     name,
		BindAddr: "127.0.0.1:0",
		Meta: Meta{
			HTTPAddr:        "127.0.0.1:8080",
			RaftAddr:        "127.0.0.1:8300",
			CacheAddr:       "127.0.0.1:3320",
			CacheGossipAddr: "127.0.0.1:3322",
			Version:         "test-" + name,
			BootstrapExpect: 3,
		},
		LoadInterval: 200 * time.Millisecond,
		// Generous, so a busy machine does not make members flap Suspect;
		// the suspect test sets its own.
		SuspectAfter: 10 * time.Second,
		Tune:         fastTune,
		Logger:       testLogger(nil),
	}
}

// startNode starts a node and shuts it down when the test ends.
func startNode(t testing.TB, cfg Config) *Gossip {
	t.Helper()
	g, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = g.Shutdown() })
	return g
}

// startCluster starts n nodes named n0..n{n-1}, lets edit adjust each
// config, joins each to all started before it, and waits until every node
// sees all n alive. Joining every earlier node (as `shoal node join` with
// several addresses does) makes each of them learn the newcomer from a
// push-pull of its own: joined to n0 alone, a node that missed the UDP
// gossip about a newcomer (dropped on a loaded machine) learnt of it only
// at the next push-pull, 30 s away, past waitTimeout.
func startCluster(t testing.TB, n int, edit func(i int, cfg *Config)) []*Gossip {
	t.Helper()
	nodes := make([]*Gossip, n)
	for i := range nodes {
		cfg := testConfig(fmt.Sprintf("n%d", i))
		if edit != nil {
			edit(i, &cfg)
		}
		nodes[i] = startNode(t, cfg)
	}
	for i, g := range nodes[1:] {
		mustJoin(t, g, nodes[:i+1]...)
	}
	waitAllAlive(t, nodes)
	return nodes
}

func mustJoin(t testing.TB, g *Gossip, to ...*Gossip) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	addrs := make([]string, len(to))
	for i, peer := range to {
		addrs[i] = peer.LocalAddr()
	}
	_, err := g.Join(ctx, addrs)
	require.NoError(t, err)
}

// waitAllAlive waits until every node sees every node alive.
// A failure says what each node saw last.
func waitAllAlive(t testing.TB, nodes []*Gossip) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, g := range nodes {
			if len(g.Alive()) == len(nodes) {
				continue
			}
			var view []string
			for _, m := range g.Members() {
				view = append(view, fmt.Sprintf("%s:%v", m.Name, m.State))
			}
			assert.Fail(c, "cluster did not converge", "%s sees %v", g.cfg.Name, view)
		}
	}, waitTimeout, 10*time.Millisecond)
}

// memberState returns what g knows of name (State -1 if unknown).
func memberState(g *Gossip, name string) State {
	m, ok := g.Member(name)
	if !ok {
		return -1
	}
	return m.State
}

// waitEvent waits for an event of type typ about name on ch.
func waitEvent(t testing.TB, ch <-chan Event, typ EventType, name string) Event {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case ev, ok := <-ch:
			require.True(t, ok, "event channel closed while waiting for %v of %s", typ, name)
			if ev.Type == typ && ev.Member.Name == name {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %v event for %s within %v", typ, name, waitTimeout)
		}
	}
}

func sampleLoad(queue int) Load {
	return Load{
		Models: map[string]ModelLoad{
			"llama-3-8b": {QueueDepth: queue, ActiveBatches: 2, Slots: 32, InFlight: 17, TokensPerSec: 1234.5,
				MaxBatch: 64, ServiceBase: 20 * time.Millisecond, ServicePerItem: 1500 * time.Microsecond, Prefix: "\x01\x80"},
			"qwen-0.5b": {QueueDepth: 1, Slots: 8},
		},
		GPU: GPU{Count: 2, MemoryTotalMB: 81920, MemoryFreeMB: 4096, UtilizationPct: 87.5},
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// aliveNames lists the members g sees alive.
func aliveNames(g *Gossip) []string {
	var names []string
	for _, m := range g.Alive() {
		names = append(names, m.Name)
	}
	return names
}
