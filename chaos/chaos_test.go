package chaos

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/shoal-dev/shoal/internal/testbin"
)

// binPath is the shoal binary the suite runs: SHOAL_CHAOS_BIN, or one
// TestMain builds.
var binPath string

func TestMain(m *testing.M) {
	if os.Getenv("SHOAL_CHAOS") != "1" {
		os.Exit(m.Run())
	}
	testbin.Main(m, "chaos", "SHOAL_CHAOS_BIN", "..", &binPath)
}

// suite runs the scenarios on one network and collects the table.
type suite struct {
	t        *testing.T
	net      *network
	dir      string
	quick    bool
	baseline time.Duration // p99 with no fault, for the pause criterion
	rows     []row
	fresh    row // every fresh three-node start, over all scenarios
}

// row is one line of the table.
type row struct {
	name, config string
	runs         int
	errPct       float64
	requests     int
	p99          time.Duration
	health       time.Duration // longest time to full health over the runs
	healthFails  int
	writes       bool
	noLoad       bool // the fresh-start row: no client columns
	acked, lost  int
	lin          string
	failures     []string
	notes        []string
}

func (r row) pass() bool { return len(r.failures) == 0 }

// env is what a scenario body works with.
type env struct {
	s   *suite
	c   *cluster
	tg  *targets
	st  *stats
	adm *admin
	row *row
	rl  *relays // the scenario's relays, when its config has them

	stopLoad    func()
	healthTimes []string // seconds to full health (or to giving up) per fault
}

func (e *env) quick(full, quick int) int {
	if e.s.quick {
		return quick
	}
	return full
}

func (e *env) seconds(full, quick float64) time.Duration {
	if e.s.quick {
		return time.Duration(quick * float64(time.Second))
	}
	return time.Duration(full * float64(time.Second))
}

// loadOn starts the client load and the admin writes and reads.
func (e *env) loadOn() {
	if e.stopLoad != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { newLoad(e.tg, e.st).run(ctx) })
	if e.adm != nil {
		wg.Go(func() { e.adm.run(ctx) })
	}
	e.stopLoad = func() { cancel(); wg.Wait() }
}

func (e *env) loadOff() {
	if e.stopLoad != nil {
		e.stopLoad()
		e.stopLoad = nil
	}
}

// hold lets the scenario run for d: the length of a fault or of a steady
// window, not a wait for anything to happen.
func (e *env) hold(d time.Duration) { time.Sleep(d) }

// awaitHealth waits for full health and records its time, or the failure.
func (e *env) awaitHealth(what string, since time.Time) bool {
	_, err := e.c.waitFullHealth(context.Background(), healthWait)
	d := time.Since(since)
	if d > e.row.health {
		e.row.health = d
	}
	e.healthTimes = append(e.healthTimes, fmt.Sprintf("%.1f", d.Seconds()))
	if err != nil {
		e.row.healthFails++
		e.fail(fmt.Sprintf("%s: %v", what, err))
		return false
	}
	return true
}

func (e *env) fail(msg string) {
	e.s.t.Logf("chaos %s: FAIL %s", e.row.name, msg)
	e.row.failures = append(e.row.failures, msg)
}

func (e *env) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	e.s.t.Logf("chaos %s: %s", e.row.name, msg)
	e.row.notes = append(e.row.notes, msg)
}

func (e *env) all() []*proc { return e.c.nodes }

func (e *env) others(victim *proc) []*proc {
	var out []*proc
	for _, p := range e.c.nodes {
		if p != victim {
			out = append(out, p)
		}
	}
	return out
}

// leader returns the leader, or the first node when none answers (the
// failure shows in the health columns).
func (e *env) leader() *proc {
	p, err := e.c.leader(context.Background())
	if err != nil {
		e.note("no leader found: %v", err)
		return e.c.nodes[0]
	}
	return p
}

// follower returns a node that is not the leader.
func (e *env) follower() *proc {
	l := e.leader()
	for i := len(e.c.nodes) - 1; i >= 0; i-- {
		if e.c.nodes[i] != l {
			return e.c.nodes[i]
		}
	}
	return e.c.nodes[0]
}

// scenario describes one row.
type scenario struct {
	name   string
	config clusterConfig
	runs   func(e *env) int
	body   func(e *env)
	// pauseCriterion: p99 at healthy nodes within 100 ms of the baseline.
	pauseCriterion bool
}

func (s *suite) run(sc scenario) {
	start := time.Now()
	r := &row{name: sc.name, writes: sc.config.adminToken != ""}
	r.config = describeConfig(sc.config)
	dir := filepath.Join(s.dir, sc.name)
	e := &env{s: s, tg: &targets{}, st: &stats{}, row: r}
	defer func() {
		s.rows = append(s.rows, *r)
		s.t.Logf("chaos %s: done in %s", sc.name, time.Since(start).Round(time.Second))
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.fail(err.Error())
		return
	}
	c, err := newCluster(binPath, s.net, dir, sc.config)
	if err != nil {
		e.fail(err.Error())
		return
	}
	if sc.config.relayed {
		rl, err := startRelays(s.net)
		if err != nil {
			e.fail(err.Error())
			return
		}
		defer rl.close() // after the nodes stop (defers run last first)
		e.rl = rl
	}
	e.c = c
	defer c.stopAll(false)
	e.tg.set(c.nodes...)
	if r.writes {
		e.adm = newAdmin(c, e.tg)
	}
	if err := c.startAll(); err != nil {
		e.fail(err.Error())
		return
	}
	// A fault is measured from a whole cluster: a fresh cluster that stays
	// unhealthy is restarted once. Fresh starts have a row of
	// their own, so this row judges its fault alone.
	for attempt := 1; ; attempt++ {
		if s.freshStart(c, sc.name) {
			break
		}
		if attempt == 2 {
			e.note("the fault began on a cluster that never became whole (2 fresh starts)")
			break
		}
		c.stopAll(false)
		if err := c.startAll(); err != nil {
			e.fail(err.Error())
			return
		}
	}
	r.runs = sc.runs(e)
	e.healthTimes = nil
	sc.body(e) // may lower r.runs when it ran out of time
	if len(e.healthTimes) > 1 {
		e.note("seconds to full health per run: %s", strings.Join(e.healthTimes, " "))
	}
	e.loadOff()
	r.errPct, r.p99 = e.st.errPct(), e.st.p99()
	e.st.mu.Lock()
	r.requests = e.st.total
	e.st.mu.Unlock()
	if r.errPct >= 0.5 {
		e.fail(fmt.Sprintf("client errors %.2f%% >= 0.5%% (%s)", r.errPct, e.st.sortedFailures()))
	} else if e.st.failed > 0 {
		e.note("client failures: %s", e.st.sortedFailures())
	}
	if r.requests == 0 {
		e.fail("no client request completed")
	}
	if sc.pauseCriterion && s.baseline > 0 && r.p99 > s.baseline+100*time.Millisecond {
		e.fail(fmt.Sprintf("p99 at healthy nodes %s > baseline %s + 100ms", r.p99.Round(time.Millisecond), s.baseline.Round(time.Millisecond)))
	}
	if e.adm != nil {
		v := e.adm.check(context.Background())
		r.acked, r.lost = v.acked, v.lost
		switch v.result {
		case porcupine.Ok:
			r.lin = "yes"
		case porcupine.Illegal:
			r.lin = "NO"
			e.fail("admin history not linearizable: " + v.detail)
			s.visualize(sc.name, e.adm)
		default:
			r.lin = "unknown"
			e.fail("porcupine gave no answer within its time bound")
		}
		if v.lost > 0 {
			e.fail(fmt.Sprintf("%d acknowledged writes lost (final values %v)", v.lost, v.finals))
		}
		if v.refused > 0 {
			e.fail(fmt.Sprintf("%d admin writes refused, last: %s", v.refused, v.refusal))
		}
		if v.failed > 0 {
			e.note("%d admin writes failed or timed out (outcome unknown to the checker): %v", v.failed, v.whyFail)
		}
	}
	if !r.pass() {
		for _, p := range c.nodes {
			s.t.Logf("chaos %s: %s warnings and errors (last 15):\n%s", sc.name, p.name, logTail(p, 15))
		}
	}
	if sc.name == "baseline (no fault)" {
		s.baseline = r.p99
	}
}

// freshStart waits for a freshly started cluster to be whole and records
// the outcome in the fresh-start row.
func (s *suite) freshStart(c *cluster, scenario string) bool {
	start := time.Now()
	_, err := c.waitFullHealth(context.Background(), healthWait)
	d := time.Since(start)
	f := &s.fresh
	f.runs++
	f.health = max(f.health, d)
	if err != nil {
		f.healthFails++
		f.failures = append(f.failures, fmt.Sprintf("before %q: %v", scenario, err))
		s.t.Logf("chaos fresh start before %s: FAIL %v", scenario, err)
		for _, p := range c.nodes {
			s.t.Logf("chaos fresh start: %s warnings and errors (last 8):\n%s", p.name, logTail(p, 8))
		}
		return false
	}
	return true
}

func (s *suite) visualize(name string, a *admin) {
	a.mu.Lock()
	hist := append([]porcupine.Operation(nil), a.history...)
	a.mu.Unlock()
	_, info := porcupine.CheckOperationsVerbose(registerModel, prune(hist), 30*time.Second)
	path := filepath.Join(s.dir, strings.ReplaceAll(name, " ", "_")+"-history.html")
	if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
		s.t.Logf("chaos %s: history written to %s", name, path)
	}
}

func describeConfig(c clusterConfig) string {
	parts := []string{}
	if c.gossipKey != "" {
		parts = append(parts, "key")
	} else {
		parts = append(parts, "no key")
	}
	if c.adminToken != "" {
		parts = append(parts, "token")
	} else {
		parts = append(parts, "no token")
	}
	if c.relayed {
		parts = append(parts, "relayed")
	}
	return strings.Join(parts, ", ")
}

func randomKey(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// TestChaos runs every scenario, prints the table and writes it to
// SHOAL_CHAOS_OUT (default chaos-results.md here). It fails when any
// scenario misses a goal; the table is complete either way.
func TestChaos(t *testing.T) {
	if os.Getenv("SHOAL_CHAOS") != "1" {
		t.Skip("the chaos suite runs with SHOAL_CHAOS=1 (make test-chaos), as root")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the chaos suite needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("the chaos suite needs iproute2 (ip) for network namespaces: apt-get install iproute2")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatal("the chaos suite needs nftables (nft) for packet loss: apt-get install nftables")
	}
	began := time.Now()
	nw, err := newNetwork(3)
	if err != nil {
		t.Fatal(err)
	}
	defer nw.close()
	dir := os.Getenv("SHOAL_CHAOS_LOGS")
	if dir == "" {
		dir, err = os.MkdirTemp("", "shoal-chaos-")
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("chaos: node logs and data under %s; netem available: %v", dir, nw.netem)
	s := &suite{t: t, net: nw, dir: dir, quick: os.Getenv("SHOAL_CHAOS_QUICK") == "1"}
	var only *regexp.Regexp
	if o := os.Getenv("SHOAL_CHAOS_ONLY"); o != "" {
		only = regexp.MustCompile(o)
	}
	for _, sc := range scenarios(t, nw, s.quick) {
		if only != nil && !only.MatchString(sc.name) {
			continue
		}
		if time.Since(began) > suiteBudget {
			s.rows = append(s.rows, row{name: sc.name, config: describeConfig(sc.config),
				failures: []string{fmt.Sprintf("not run: the suite passed its %s budget", suiteBudget)}})
			continue
		}
		s.run(sc)
	}
	s.fresh.name, s.fresh.config, s.fresh.noLoad = "fresh 3-node start (before each scenario)", "as the scenario", true
	s.rows = append(s.rows, s.fresh)
	wall := time.Since(began)
	table := s.table(wall)
	fmt.Println(table)
	out := os.Getenv("SHOAL_CHAOS_OUT")
	if out == "" {
		out = "chaos-results.md"
	}
	if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
		t.Errorf("write %s: %v", out, err)
	}
	for _, r := range s.rows {
		if !r.pass() {
			t.Errorf("chaos %s failed: %s", r.name, strings.Join(r.failures, "; "))
		}
	}
}

func (s *suite) table(wall time.Duration) string {
	var b strings.Builder
	mode := "full"
	if s.quick {
		mode = "quick (SHOAL_CHAOS_QUICK=1)"
	}
	fmt.Fprintf(&b, "Chaos suite, %s run, 3 nodes in network namespaces, total wall time %s.\n\n", mode, wall.Round(time.Second))
	b.WriteString("| scenario | config | runs | requests | client errors % | p99 healthy ms | time to full health s | writes acked | lost | linearizable | result |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range s.rows {
		acked, lost, lin := "-", "-", "-"
		if r.writes {
			acked, lost, lin = fmt.Sprint(r.acked), fmt.Sprint(r.lost), r.lin
		}
		health := fmt.Sprintf("%.1f", r.health.Seconds())
		if r.healthFails > 0 {
			health = fmt.Sprintf("%s (%d/%d never)", health, r.healthFails, max(r.runs, 1))
		}
		result := "pass"
		if !r.pass() {
			result = "FAIL"
		}
		requests, errPct, p99 := fmt.Sprint(r.requests), fmt.Sprintf("%.2f", r.errPct), fmt.Sprint(r.p99.Milliseconds())
		if r.noLoad {
			requests, errPct, p99 = "-", "-", "-"
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.name, r.config, r.runs, requests, errPct, p99, health, acked, lost, lin, result)
	}
	b.WriteString("\nGoals: client errors < 0.5% (one client retry on another node), full health (every node 200 and ok, all alive in gossip, one Raft leader, the Olric cache ok with every node a member) within 60 s of each fault's end, no acknowledged admin write lost, the admin history linearizable (porcupine; reads on the leader and, at the end, on every node); SIGSTOP: p99 within 100 ms of the baseline. Delay: p99 is reported, not gated (forwarded requests wait on the delay by design).\n")
	for _, r := range s.rows {
		if len(r.failures) == 0 && len(r.notes) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s:\n", r.name)
		for _, f := range r.failures {
			fmt.Fprintf(&b, "- FAIL: %s\n", f)
		}
		for _, n := range r.notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

// scenarios is the suite, in order; the baseline comes first.
func scenarios(t *testing.T, nw *network, quick bool) []scenario {
	pause, crash := 20, 60
	if quick {
		pause, crash = 8, 15
	}
	key := randomKey(t)
	const token = "chaos-admin-token"
	full := clusterConfig{adminToken: token, gossipKey: key}
	relayed := full
	relayed.relayed = true
	lossName := "packet loss 5% between nodes"
	if nw.netem {
		lossName = "packet loss 5% + delay 30ms between nodes"
	}
	return []scenario{
		{name: "baseline (no fault)", config: full, runs: one, body: func(e *env) {
			e.loadOn()
			e.hold(e.seconds(8, 4))
		}},
		{name: "whole-cluster restart", config: full, runs: func(e *env) int { return e.quick(20, 3) }, body: restartAll},
		{name: "SIGKILL leader under load", config: full, runs: func(e *env) int { return e.quick(5, 2) }, body: killLeader},
		{name: fmt.Sprintf("SIGSTOP one node %ds", pause), config: clusterConfig{adminToken: token}, runs: one, pauseCriterion: true, body: func(e *env) {
			freeze(e, time.Duration(pause)*time.Second)
		}},
		{name: "partition one node", config: full, runs: one, body: func(e *env) { partition(e, e.follower()) }},
		{name: "partition the leader", config: full, runs: one, body: func(e *env) { partition(e, e.leader()) }},
		{name: lossName, config: clusterConfig{adminToken: token}, runs: one, body: func(e *env) { loss(e, 5, 30) }},
		{name: "delay 30ms ±10ms each way between nodes (TCP)", config: relayed, runs: one, body: func(e *env) {
			delay(e, 30*time.Millisecond, 10*time.Millisecond)
		}},
		{name: fmt.Sprintf("crash loop (restart every 3s for %ds)", crash), config: clusterConfig{gossipKey: key}, runs: one, body: func(e *env) {
			crashLoop(e, time.Duration(crash)*time.Second)
		}},
		{name: "rejoin with wiped data dir", config: full, runs: one, body: wipeRejoin},
	}
}

func one(*env) int { return 1 }

// restartBudget bounds the restart scenario, so a cluster that keeps
// failing to heal cannot push the suite past CI's time.
const restartBudget = 4 * time.Minute

// suiteBudget stops starting scenarios once passed, so a cluster that keeps
// failing to heal cannot run into go test's timeout and lose the table.
const suiteBudget = 15 * time.Minute

// restartAll stops every node (SIGTERM on odd runs, SIGKILL on even ones)
// and starts them again; each time every node must come back whole, its
// cache included. Load runs in the healthy window between restarts.
func restartAll(e *env) {
	runs := e.quick(20, 3)
	budget := time.Now().Add(restartBudget)
	for i := 1; i <= runs; i++ {
		if time.Now().After(budget) {
			e.row.runs = i - 1
			e.fail(fmt.Sprintf("only %d of %d restarts within the scenario's %s budget", i-1, runs, restartBudget))
			break
		}
		e.loadOn()
		e.hold(1500 * time.Millisecond)
		e.loadOff()
		graceful := i%2 == 1
		e.c.stopAll(graceful)
		if err := e.c.startAll(); err != nil {
			e.fail(err.Error())
			return
		}
		how := "SIGKILL"
		if graceful {
			how = "SIGTERM"
		}
		e.awaitHealth(fmt.Sprintf("run %d (%s)", i, how), time.Now())
	}
	e.loadOn()
	e.hold(1500 * time.Millisecond)
}

// killLeader SIGKILLs the leader under load, restarts it a second later,
// and waits for full health, five times.
func killLeader(e *env) {
	e.loadOn()
	e.hold(2 * time.Second)
	for i := 1; i <= e.quick(5, 2); i++ {
		victim := e.leader()
		e.tg.set(e.others(victim)...)
		killed := time.Now()
		victim.stop(false)
		failover := waitNewLeader(e, victim)
		e.note("run %d: killed leader %s; new leader after %s", i, victim.name, failover)
		e.hold(time.Second)
		if err := victim.start(e.c.bin); err != nil {
			e.fail(err.Error())
			return
		}
		e.awaitHealth(fmt.Sprintf("run %d", i), killed)
		e.tg.set(e.all()...)
		e.hold(2 * time.Second)
	}
}

// waitNewLeader polls the survivors until one leads, up to 15 s.
func waitNewLeader(e *env, old *proc) string {
	start := time.Now()
	for time.Since(start) < 15*time.Second {
		for _, p := range e.others(old) {
			if h, err := getHealth(context.Background(), p); err == nil {
				if _, is := h.leader(); is {
					return time.Since(start).Round(10 * time.Millisecond).String()
				}
			}
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	return "never (15s)"
}

// freeze SIGSTOPs a follower for d while clients use the others.
func freeze(e *env, d time.Duration) {
	victim := e.follower()
	via := e.others(victim)[0]
	// The probe's answer is in the shared cache and in the victim's near
	// cache when it stops.
	storeProbe(e, victim)
	e.tg.set(e.others(victim)...)
	e.loadOn()
	e.hold(2 * time.Second)
	if err := victim.signal(syscall.SIGSTOP); err != nil {
		e.fail(err.Error())
		return
	}
	stopped := time.Now()
	// A second in, gossip holds the victim suspect, not dead: the purge
	// asks it to confirm and must not wait on it past its bounds.
	e.hold(time.Second)
	purgeWhileFrozen(e, via, victim)
	e.hold(d - time.Since(stopped))
	if err := victim.signal(syscall.SIGCONT); err != nil {
		e.fail(err.Error())
		return
	}
	if e.awaitHealth("after SIGCONT", time.Now()) {
		purgeAfterThaw(e, via, victim)
	}
	e.tg.set(e.all()...)
	e.hold(2 * time.Second)
}

// partition cuts victim off the network for 15 s while clients use the
// others, then heals it.
func partition(e *env, victim *proc) {
	e.note("partitioned %s", victim.name)
	e.tg.set(e.others(victim)...)
	e.loadOn()
	e.hold(2 * time.Second)
	if err := e.c.net.partition(victim.idx, true); err != nil {
		e.fail(err.Error())
		return
	}
	e.hold(e.seconds(15, 6))
	if err := e.c.net.partition(victim.idx, false); err != nil {
		e.fail(err.Error())
		return
	}
	e.awaitHealth("after healing", time.Now())
	e.tg.set(e.all()...)
	e.hold(2 * time.Second)
}

// loss drops pct% of the packets between nodes (and delays them where the
// kernel has netem) for 20 s under load.
func loss(e *env, pct, delayMs int) {
	e.loadOn()
	e.hold(2 * time.Second)
	if err := e.c.net.degrade(pct, delayMs, true); err != nil {
		e.fail(err.Error())
		_ = e.c.net.degrade(0, 0, false)
		return
	}
	e.hold(e.seconds(20, 8))
	_ = e.c.net.degrade(0, 0, false)
	e.awaitHealth("after the loss ends", time.Now())
	e.hold(2 * time.Second)
	if !e.c.net.netem {
		e.note("no sch_netem in this kernel: loss from nftables only, no delay")
	}
}

// delay holds back every chunk of TCP between nodes (HTTP forwarding, Raft
// and the peer plane, Olric) by base±jitter each way, for 20 s under load.
// Gossip stays direct (relay_test.go says why). p99 is reported, not gated:
// a request forwarded to a peer now waits on the delay by design.
func delay(e *env, base, jitter time.Duration) {
	e.loadOn()
	e.hold(2 * time.Second)
	e.rl.set(base, jitter)
	e.hold(e.seconds(20, 10))
	e.rl.set(0, 0)
	chunks, held := e.rl.d.chunks.Load(), time.Duration(e.rl.d.heldNs.Load())
	e.awaitHealth("after the delay ends", time.Now())
	e.hold(2 * time.Second)
	if chunks == 0 {
		e.fail("no traffic between nodes went through the delaying relays")
		return
	}
	e.note("%d connections between nodes relayed; %d chunks delayed, mean %.1f ms each way",
		e.rl.d.conns.Load(), chunks, float64(held.Microseconds())/float64(chunks)/1000)
}

// crashLoop SIGKILLs and restarts one follower every 3 s for d.
func crashLoop(e *env, d time.Duration) {
	victim := e.follower()
	e.note("crash-looping %s", victim.name)
	e.tg.set(e.others(victim)...)
	e.loadOn()
	e.hold(2 * time.Second)
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		victim.stop(false)
		if err := victim.start(e.c.bin); err != nil {
			e.fail(err.Error())
			return
		}
		e.hold(3 * time.Second)
	}
	e.awaitHealth("after the loop ends", time.Now())
	e.tg.set(e.all()...)
	e.hold(2 * time.Second)
}

// wipeRejoin SIGKILLs a follower, deletes its data directory and starts it
// again under the same name.
func wipeRejoin(e *env) {
	victim := e.follower()
	e.note("wiped %s", victim.name)
	e.tg.set(e.others(victim)...)
	e.loadOn()
	e.hold(2 * time.Second)
	victim.stop(false)
	if err := os.RemoveAll(victim.dataDir); err != nil {
		e.fail(err.Error())
		return
	}
	restarted := time.Now()
	if err := victim.start(e.c.bin); err != nil {
		e.fail(err.Error())
		return
	}
	e.awaitHealth("after the restart", restarted)
	e.tg.set(e.all()...)
	e.hold(2 * time.Second)
}
