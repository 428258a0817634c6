//go:build unix

package dcache

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// restartRounds is how many times TestOlricWholeClusterRestart stops and starts all members.
const restartRounds = 12

// freePorts returns an Olric address and a memberlist address on loopback that are free now
// (the memberlist one for TCP and UDP alike).
func freePorts(t *testing.T) (string, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	for range 20 {
		ml, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := ml.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		_ = ml.Close()
		if err != nil {
			continue
		}
		_ = udp.Close()
		return ln.Addr().String(), net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	t.Fatal("no free memberlist port")
	return "", ""
}

// processMember is a member running in a child process (this test binary in helper mode)
// that reports its health on stdout.
type processMember struct {
	cmd    *exec.Cmd
	stdin  interface{ Close() error }
	stderr *syncBuffer
	mu     sync.Mutex
	health string // the last "HEALTH ..." line, without the prefix
	exited chan struct{}
}

func startProcessMember(t *testing.T, network, addrs string, peers []string) *processMember {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperWatchEnv+"=1", helperNetworkEnv+"="+network,
		helperAddrsEnv+"="+addrs, helperPeersEnv+"="+strings.Join(peers, ","))
	m := &processMember{cmd: cmd, stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = m.stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	m.stdin = stdin
	require.NoError(t, cmd.Start())
	go func() {
		defer close(m.exited)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if h, ok := strings.CutPrefix(s.Text(), "HEALTH "); ok {
				m.mu.Lock()
				m.health = h
				m.mu.Unlock()
			}
		}
		_ = cmd.Wait()
	}()
	return m
}

func (m *processMember) lastHealth() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.health
}

// stop ends the member: gracefully (stdin closed, Close runs) or with SIGKILL.
func (m *processMember) stop(t *testing.T, kill bool) {
	t.Helper()
	if kill {
		_ = m.cmd.Process.Kill()
	} else {
		_ = m.stdin.Close()
	}
	select {
	case <-m.exited:
	case <-time.After(waitTimeout):
		_ = m.cmd.Process.Kill()
		<-m.exited
		t.Errorf("member did not stop within %s", waitTimeout)
	}
}

// TestOlricWholeClusterRestart starts three members in separate processes at the same instant,
// stops them all and starts them again on the same addresses, several times, alternating a
// graceful stop and SIGKILL, as an operator restarting the whole cluster does. Every member
// must become a healthy member of one 3-member cache each time, without anyone restarting it
// by hand.
func TestOlricWholeClusterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts three member processes several times")
	}
	const n = 3
	addrs := make([]string, n)
	mls := make([]string, n)
	for i := range n {
		var olricAddr string
		olricAddr, mls[i] = freePorts(t)
		addrs[i] = olricAddr + "," + mls[i]
	}
	var members []*processMember
	t.Cleanup(func() {
		for _, m := range members {
			m.stop(t, true)
		}
	})
	for round := range restartRounds {
		members = members[:0]
		began := time.Now()
		for i := range n {
			members = append(members, startProcessMember(t, "local", addrs[i], without(mls, i)))
		}
		healthy := func() bool {
			for _, m := range members {
				if m.lastHealth() != fmt.Sprintf("%s %d", StatusOK, n) {
					return false
				}
			}
			return true
		}
		// A member that starts fine is healthy within seconds; the bound is loose for a loaded
		// machine but shorter than forever, which is what a stuck member took before.
		if !waitFor(60*time.Second, healthy) {
			for i, m := range members {
				t.Logf("round %d member %d: health %q\nstderr:\n%s", round, i, m.lastHealth(), lastLines(m.stderr.String(), 20))
			}
			t.Fatalf("round %d: not every member became a healthy member of one cache", round)
		}
		t.Logf("round %d: all %d members healthy after %s", round, n, time.Since(began).Round(10*time.Millisecond))
		var wg sync.WaitGroup
		for _, m := range members {
			wg.Go(func() { m.stop(t, round%2 == 1) })
		}
		wg.Wait()
	}
	members = members[:0]
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cond()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
