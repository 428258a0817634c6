package chaos

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// network is a private L2 segment: a bridge inside a namespace of its own
// (so the host's firewall, whose FORWARD policy may be DROP, never sees the
// bridged traffic), one namespace per node with a veth to the bridge, and a
// veth from the host so the test's client reaches every node.
type network struct {
	prefix string // "shc<pid>", unique per test process
	subnet string // "10.231.X"
	nodes  int
	netem  bool // the kernel has sch_netem
}

// namePattern matches every name a suite run creates; the number is the
// creating process's pid, so leftovers of a killed run can be found.
var namePattern = regexp.MustCompile(`^shc(\d+)(sw|n\d+|h)$`)

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (n *network) switchNS() string        { return n.prefix + "sw" }
func (n *network) nodeNS(i int) string     { return fmt.Sprintf("%sn%d", n.prefix, i) }
func (n *network) nodeIP(i int) string     { return fmt.Sprintf("%s.%d", n.subnet, 11+i) }
func (n *network) switchPort(i int) string { return fmt.Sprintf("p%d", i) }

// newNetwork builds the segment; on error it removes what it made.
func newNetwork(nodes int) (*network, error) {
	cleanStale()
	pid := os.Getpid()
	n := &network{prefix: fmt.Sprintf("shc%d", pid), subnet: fmt.Sprintf("10.231.%d", 20+pid%200), nodes: nodes}
	if err := n.build(); err != nil {
		n.close()
		return nil, err
	}
	return n, nil
}

func (n *network) build() error {
	sw := n.switchNS()
	steps := [][]string{
		{"ip", "netns", "add", sw},
		{"ip", "-n", sw, "link", "set", "lo", "up"},
		{"ip", "-n", sw, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", sw, "link", "set", "br0", "up"},
		// Host end: the test's client.
		{"ip", "link", "add", n.prefix + "h", "type", "veth", "peer", "name", n.prefix + "hp"},
		{"ip", "link", "set", n.prefix + "hp", "netns", sw},
		{"ip", "-n", sw, "link", "set", n.prefix + "hp", "master", "br0", "up"},
		{"ip", "addr", "add", n.subnet + ".1/24", "dev", n.prefix + "h"},
		{"ip", "link", "set", n.prefix + "h", "up"},
	}
	for i := range n.nodes {
		ns, port, tmp := n.nodeNS(i), n.switchPort(i), fmt.Sprintf("%sv%d", n.prefix, i)
		steps = append(steps,
			[]string{"ip", "netns", "add", ns},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
			[]string{"ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp + "s"},
			[]string{"ip", "link", "set", tmp, "netns", ns},
			[]string{"ip", "-n", ns, "link", "set", tmp, "name", "eth0"},
			[]string{"ip", "-n", ns, "addr", "add", n.nodeIP(i) + "/24", "dev", "eth0"},
			[]string{"ip", "-n", ns, "link", "set", "eth0", "up"},
			[]string{"ip", "link", "set", tmp + "s", "netns", sw},
			[]string{"ip", "-n", sw, "link", "set", tmp + "s", "name", port},
			[]string{"ip", "-n", sw, "link", "set", port, "master", "br0", "up"},
		)
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return fmt.Errorf("build network: %w", err)
		}
	}
	// netem is missing from some kernels (this project's VMs among them):
	// then loss comes from nftables and there is no delay.
	n.netem = run("ip", "netns", "exec", n.nodeNS(0), "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms") == nil
	if n.netem {
		_ = run("ip", "netns", "exec", n.nodeNS(0), "tc", "qdisc", "del", "dev", "lo", "root")
	}
	return nil
}

// partition cuts node i off from everyone (peers and clients), or heals it.
func (n *network) partition(i int, cut bool) error {
	state := "up"
	if cut {
		state = "down"
	}
	return run("ip", "-n", n.switchNS(), "link", "set", n.switchPort(i), state)
}

// degrade makes every node drop lossPct% of the packets it sends to its
// peers and, where netem exists, delay them; clients' traffic is spared
// where the kernel allows it (nftables). Off removes it.
func (n *network) degrade(lossPct, delayMs int, on bool) error {
	for i := range n.nodes {
		ns := n.nodeNS(i)
		if !on {
			_ = run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "shoalchaos")
			if n.netem {
				_ = run("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root")
			}
			continue
		}
		if n.netem && delayMs > 0 {
			// netem applies to the whole interface, clients' answers included.
			if err := run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
				"delay", fmt.Sprintf("%dms", delayMs), fmt.Sprintf("%dms", delayMs/4)); err != nil {
				return err
			}
		}
		rules := fmt.Sprintf(`table inet shoalchaos {
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr %s.0/24 ip daddr != %s.1 numgen random mod 100 < %d drop
  }
}
`, n.subnet, n.subnet, lossPct)
		cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft in %s: %w: %s", ns, err, out)
		}
	}
	return nil
}

// close removes the namespaces (and with them every veth and the bridge).
func (n *network) close() {
	_ = run("ip", "link", "del", n.prefix+"h")
	for i := range n.nodes {
		killNS(n.nodeNS(i))
		_ = run("ip", "netns", "del", n.nodeNS(i))
	}
	_ = run("ip", "netns", "del", n.switchNS())
}

// killNS ends what still runs in a namespace this suite made.
func killNS(ns string) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
	}
}

// cleanStale removes namespaces and host links left by a suite run whose
// process is gone (one killed by go test's timeout never ran its cleanup).
func cleanStale() {
	alive := func(pid string) bool {
		_, err := os.Stat("/proc/" + pid)
		return err == nil
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			if m := namePattern.FindStringSubmatch(f[0]); m != nil && !alive(m[1]) {
				killNS(f[0])
				_ = run("ip", "netns", "del", f[0])
			}
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if m := namePattern.FindStringSubmatch(name); m != nil && !alive(m[1]) {
				_ = run("ip", "link", "del", name)
			}
		}
	}
}
