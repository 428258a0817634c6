// Package clustersim is a discrete-event simulator of a shoal cluster's
// routing: N nodes with their own service times (some slow, some failing),
// requests arriving at every node, load reports that travel with delay and
// loss, a pluggable dissemination policy, and the real router's scoring
// (router.PickAt) on simulated time. It exists to choose a load
// dissemination design for large clusters by numbers; see DESIGN.md.
//
// A run is deterministic from its seed: one goroutine, one event queue,
// every random draw from one PCG stream.
package clustersim

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/shoal-dev/shoal/router"
)

// Policies: how load reports reach routers.
const (
	// Omniscient gives every router the exact current load of any node it
	// samples, with no messages: the bound the others are measured against.
	Omniscient = "omniscient"
	// AllToAll is shoal's original dissemination: each node sends its load
	// to every other node on each change (at most every MinPush) and every
	// Refresh.
	AllToAll = "all-to-all"
	// Epidemic sends, every Interval, the node's own load plus the Piggyback
	// freshest loads it has heard to Fanout random peers.
	Epidemic = "epidemic"
	// Probe asks two random nodes for their load when a request arrives
	// and waits one round trip (Sparrow-style sampling), sending nothing
	// otherwise.
	Probe = "probe"
)

// Config is one simulation run. Zero fields take the defaults of
// DefaultConfig.
type Config struct {
	Nodes  int
	Seed   uint64
	Policy string
	// Duration is simulated time; requests arriving in the first Warmup
	// are served but not measured.
	Duration time.Duration
	Warmup   time.Duration
	// Slots per node and the mean service time of a normal node; service
	// times are lognormal with ServiceSigma.
	Slots        int
	MeanService  time.Duration
	ServiceSigma float64
	// Utilization is offered load over total capacity (0..1).
	Utilization float64
	// SlowFraction of nodes serve SlowFactor times slower.
	SlowFraction float64
	SlowFactor   float64
	// SlowNodes, when set, makes exactly nodes 0..SlowNodes-1 slow instead
	// (to mirror a real test cluster).
	SlowNodes int
	// FailFraction of nodes crash at a third of Duration; their queued
	// requests are retried elsewhere after DetectFail.
	FailFraction float64
	DetectFail   time.Duration
	// Network: one-way delay is NetDelay plus an exponential jitter with
	// mean NetJitter; LossRate of load messages are lost.
	NetDelay  time.Duration
	NetJitter time.Duration
	LossRate  float64
	// AllToAll timing (gossip.DefaultMinPushInterval, DefaultLoadInterval).
	MinPush time.Duration
	Refresh time.Duration
	// Epidemic parameters; Fanout is also Probe's heartbeat fanout per
	// Refresh.
	Fanout    int
	Interval  time.Duration
	Piggyback int
	// ViewSize bounds the loads each node remembers under Epidemic (the
	// freshest heard); routers sample from them.
	ViewSize int
	// MaxAge, when set, drops Epidemic loads older than it: they are
	// neither passed on nor used by the router.
	MaxAge time.Duration
	// StaleAfter is the router's StaleAfter.
	StaleAfter time.Duration
	// PullRate caps Probe's pulls per node per second
	// (gossip.DefaultPullRate); past it the router uses the loads its
	// earlier pulls returned. Negative: no cap.
	PullRate float64
	// PullReuse is how old a pulled load may be to be reused past the
	// pull budget (gossip.Config.PullReuse).
	PullReuse time.Duration
	// PullCarriesLoad sends the requester's load with each pull, so the
	// node asked learns it for free.
	PullCarriesLoad bool
	// ReportCost makes loads carry what a shoal node with a batch backend
	// of max_size 1 reports: its measured batch cost (the node's mean
	// service time, MaxBatch 1) and one active batch per running request.
	// The router's least-expected scoring then knows a slow node is slow
	// (without it every node is scored as one unit per request). The
	// real-process scale test (scaletest/) sets it.
	ReportCost bool
}

// DefaultConfig is the scenario of the README table: 4 slots per node,
// 1 s mean service (LLM-like), 80% utilization, 10% of nodes 3x slower,
// 1% crashing, 0.3 ms + 0.2 ms jitter one-way delay and 1% loss.
func DefaultConfig() Config {
	return Config{
		Nodes: 10, Seed: 1, Policy: Epidemic,
		Duration: 60 * time.Second, Warmup: 5 * time.Second,
		Slots: 4, MeanService: time.Second, ServiceSigma: 0.6,
		Utilization: 0.8, SlowFraction: 0.1, SlowFactor: 3,
		FailFraction: 0.01, DetectFail: time.Second,
		NetDelay: 300 * time.Microsecond, NetJitter: 200 * time.Microsecond, LossRate: 0.01,
		MinPush: 25 * time.Millisecond, Refresh: time.Second,
		Fanout: 4, Interval: 100 * time.Millisecond, Piggyback: 16, ViewSize: 256,
		StaleAfter: 5 * time.Second, PullRate: 20, PullReuse: 250 * time.Millisecond,
	}
}

func (c *Config) fill() error {
	d := DefaultConfig()
	setD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	if c.Nodes < 2 {
		return fmt.Errorf("clustersim: Nodes must be at least 2, got %d", c.Nodes)
	}
	if c.Policy == "" {
		c.Policy = d.Policy
	}
	switch c.Policy {
	case Omniscient, AllToAll, Epidemic, Probe:
	default:
		return fmt.Errorf("clustersim: unknown policy %q", c.Policy)
	}
	setD(&c.Duration, d.Duration)
	setD(&c.Warmup, d.Warmup)
	setD(&c.MeanService, d.MeanService)
	setD(&c.DetectFail, d.DetectFail)
	setD(&c.MinPush, d.MinPush)
	setD(&c.Refresh, d.Refresh)
	setD(&c.Interval, d.Interval)
	setD(&c.StaleAfter, d.StaleAfter)
	setD(&c.PullReuse, d.PullReuse)
	if c.Slots == 0 {
		c.Slots = d.Slots
	}
	if c.ServiceSigma == 0 {
		c.ServiceSigma = d.ServiceSigma
	}
	if c.Utilization == 0 {
		c.Utilization = d.Utilization
	}
	if c.SlowFactor == 0 {
		c.SlowFactor = d.SlowFactor
	}
	if c.Fanout == 0 {
		c.Fanout = d.Fanout
	}
	if c.ViewSize == 0 {
		c.ViewSize = d.ViewSize
	}
	if c.PullRate == 0 {
		c.PullRate = d.PullRate
	}
	if c.Warmup >= c.Duration {
		return fmt.Errorf("clustersim: Warmup %v must be shorter than Duration %v", c.Warmup, c.Duration)
	}
	return nil
}

// Result is what a run measured.
type Result struct {
	Config Config
	// Requests measured (arrived after Warmup and finished).
	Requests int
	// P50 and P99 end-to-end latency, queueing included.
	P50, P99 time.Duration
	// Imbalance is the mean, over samples every 100 ms, of the coefficient
	// of variation of work per slot across live nodes.
	Imbalance float64
	// MsgsPerNodeSec counts load messages (reports, probes and replies)
	// per node per simulated second.
	MsgsPerNodeSec float64
	// Retries counts requests that hit a crashed node and went elsewhere.
	Retries int
	// Wall is the real time the run took.
	Wall time.Duration
}

// event kinds.
const (
	evArrive  = iota // request a arrives at its origin
	evDeliver        // request a reaches node b
	evDone           // node a finishes a request
	evPush           // all-to-all: node a's delayed push is due
	evGossip         // epidemic: node a's round
	evMsg            // epidemic: message m reaches node b
	evProbed         // probe: request a's probes are back
	evCrash          // node a crashes
	evSample         // imbalance sample
	evRetry          // request a retries after hitting a crashed node
)

type event struct {
	t    float64
	seq  uint64 // ties broken by insertion order, for determinism
	kind int
	a, b int
	m    *message
}

type eventQueue []event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].t != q[j].t {
		return q[i].t < q[j].t
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// report is one node's load as produced at time at.
type report struct {
	node     int32
	queue    int32
	running  int32
	at       float64
	received float64
}

type message struct {
	entries []report
}

type request struct {
	origin  int
	arrived float64
	exclude map[string]bool
	probes  [2]report
}

type node struct {
	name    string
	speed   float64 // service time multiplier
	dead    bool
	queue   []int // request ids waiting
	running int
	router  *router.Router

	// all-to-all: pushes, newest last (ring of the last pushHist).
	pushes   []report
	lastPush float64
	pushDue  bool
	// epidemic: loads heard, a ring of the freshest ViewSize.
	view    []report
	viewPos int
	// probe: the pull budget and the loads earlier pulls returned.
	pullTokens float64
	pullAt     float64
	recent     []report // a ring of the last loads pulled (or received with a pull)
	recentPos  int
	pullInit   bool
}

const pushHist = 128

// reuse fills r's probes from the origin's recent pulled loads: two at
// random among those at most PullReuse old, else the two newest.
func (s *sim) reuse(r *request) {
	o := &s.nodes[r.origin]
	var fresh []int
	for i, h := range o.recent {
		if s.now-h.at <= s.cfg.PullReuse.Seconds() {
			fresh = append(fresh, i)
		}
	}
	for k := range r.probes {
		r.probes[k] = report{at: -1}
	}
	if len(fresh) >= 2 {
		for k := range r.probes {
			r.probes[k] = o.recent[fresh[s.rng.IntN(len(fresh))]]
		}
		return
	}
	for k := range r.probes {
		// The newest are just before recentPos in a full ring, at the
		// end of a filling one.
		i := len(o.recent) - 1 - k
		if len(o.recent) == recentSize {
			i = (o.recentPos - 1 - k + 2*recentSize) % recentSize
		}
		if i >= 0 {
			r.probes[k] = o.recent[i]
		}
	}
}

// recentSize is how many pulled loads a node keeps for reuse.
const recentSize = 64

// remember keeps a pulled load at node i for reuse past the pull budget.
func (s *sim) remember(i int, r report) {
	n := &s.nodes[i]
	if int(r.node) == i {
		return
	}
	if len(n.recent) < recentSize {
		n.recent = append(n.recent, r)
		return
	}
	n.recent[n.recentPos] = r
	n.recentPos = (n.recentPos + 1) % recentSize
}

type sim struct {
	cfg   Config
	rng   *rand.Rand // network, sampling and dissemination draws
	work  *rand.Rand // arrivals and service times
	now   float64
	seq   uint64
	q     eventQueue
	nodes []node
	reqs  []request
	free  []*message
	base  time.Time

	lat      []float64
	msgs     int64
	draining bool // past Duration: messages are no longer counted
	retries  int
	cvSum    float64
	cvN      int
}

// Run simulates one configuration.
func Run(cfg Config) (Result, error) {
	start := time.Now()
	if err := cfg.fill(); err != nil {
		return Result{}, err
	}
	s := &sim{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5851f42d4c957f2d)),
		work: rand.New(rand.NewPCG(cfg.Seed, 0x2545f4914f6cdd1d)), base: time.Unix(1_000_000, 0)}
	// The cluster (slow and failing nodes) comes from its own stream, so
	// every policy runs on the same cluster for a seed.
	topo := rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15))
	s.nodes = make([]node, cfg.Nodes)
	capacity := 0.0
	for i := range s.nodes {
		n := &s.nodes[i]
		n.name = "n" + strconv.Itoa(i)
		n.speed = 1
		slow, fail := topo.Float64(), topo.Float64()
		if (cfg.SlowNodes == 0 && slow < cfg.SlowFraction) || i < cfg.SlowNodes {
			n.speed = cfg.SlowFactor
		}
		capacity += float64(cfg.Slots) / (n.speed * cfg.MeanService.Seconds())
		r, err := router.New(router.Config{StaleAfter: cfg.StaleAfter, Seed: cfg.Seed*1_000_003 + uint64(i) + 1})
		if err != nil {
			return Result{}, fmt.Errorf("router for %s: %w", n.name, err)
		}
		n.router = r
		n.lastPush = -1
		if cfg.Policy == AllToAll {
			n.pushes = make([]report, 0, pushHist)
			s.recordPush(i)
			s.schedule(s.rng.Float64()*cfg.Refresh.Seconds(), evPush, i, 1, nil)
		}
		if cfg.Policy == Epidemic {
			n.view = make([]report, 0, cfg.ViewSize)
			s.schedule(s.rng.Float64()*cfg.Interval.Seconds(), evGossip, i, 0, nil)
		}
		if fail < cfg.FailFraction {
			s.schedule(cfg.Duration.Seconds()/3, evCrash, i, 0, nil)
		}
	}
	perNode := cfg.Utilization * capacity / float64(cfg.Nodes)
	for i := range s.nodes {
		s.scheduleArrival(i, perNode)
	}
	s.schedule(cfg.Warmup.Seconds(), evSample, 0, 0, nil)
	end := cfg.Duration.Seconds()
	rates := make([]float64, cfg.Nodes)
	for i := range rates {
		rates[i] = perNode
	}
	for s.q.Len() > 0 {
		e := heap.Pop(&s.q).(event)
		if e.t > end {
			// No new work after the end, but what arrived is followed to
			// completion: cutting it off would drop the slowest requests
			// and flatter p99.
			if e.kind == evArrive || e.kind == evGossip || e.kind == evSample || (e.kind == evPush && e.b == 1) {
				continue
			}
			s.draining = true
		}
		s.now = e.t
		switch e.kind {
		case evArrive:
			s.arrive(e.a)
			s.scheduleArrival(s.reqs[e.a].origin, rates[s.reqs[e.a].origin])
		case evDeliver:
			s.deliver(e.a, e.b)
		case evRetry:
			s.route(e.a)
		case evDone:
			s.done(e.a, e.b)
		case evPush:
			s.pushDue(e.a, e.b == 1)
		case evGossip:
			s.gossip(e.a)
		case evMsg:
			s.receive(e.b, e.m)
		case evProbed:
			s.probed(e.a, true)
		case evCrash:
			s.crash(e.a)
		case evSample:
			s.sample()
		}
	}
	res := Result{Config: cfg, Requests: len(s.lat), Retries: s.retries, Wall: time.Since(start)}
	if len(s.lat) > 0 {
		slices.Sort(s.lat)
		res.P50 = secs(s.lat[len(s.lat)/2])
		res.P99 = secs(s.lat[min(len(s.lat)-1, len(s.lat)*99/100)])
	}
	if s.cvN > 0 {
		res.Imbalance = s.cvSum / float64(s.cvN)
	}
	if cfg.Policy == Probe {
		// shoal's sampling mode also pushes to Fanout random peers every
		// Refresh, as a heartbeat (gossip.Config.Fanout).
		s.msgs += int64(float64(cfg.Nodes*cfg.Fanout) * cfg.Duration.Seconds() / cfg.Refresh.Seconds())
	}
	res.MsgsPerNodeSec = float64(s.msgs) / float64(cfg.Nodes) / cfg.Duration.Seconds()
	return res, nil
}

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

func (s *sim) schedule(t float64, kind, a, b int, m *message) {
	s.seq++
	heap.Push(&s.q, event{t: t, seq: s.seq, kind: kind, a: a, b: b, m: m})
}

func (s *sim) scheduleArrival(origin int, rate float64) {
	s.reqs = append(s.reqs, request{origin: origin, arrived: s.now + s.work.ExpFloat64()/rate})
	id := len(s.reqs) - 1
	s.schedule(s.reqs[id].arrived, evArrive, id, 0, nil)
}

func (s *sim) delay() float64 {
	return s.cfg.NetDelay.Seconds() + s.rng.ExpFloat64()*s.cfg.NetJitter.Seconds()
}

func (s *sim) load(i int) report {
	n := &s.nodes[i]
	return report{node: int32(i), queue: int32(len(n.queue)), running: int32(n.running), at: s.now}
}

func (s *sim) clock(t float64) time.Time { return s.base.Add(secs(t)) }

func (s *sim) candidate(r report) router.Candidate {
	c := router.Candidate{Node: s.nodes[r.node].name, QueueDepth: int(r.queue), Running: int(r.running), Slots: s.cfg.Slots,
		LoadAge: secs(s.now - r.at), LoadAt: s.clock(r.at)}
	if s.cfg.ReportCost {
		c.ActiveBatches, c.MaxBatch = int(r.running), 1
		c.ServiceBase = time.Duration(s.nodes[r.node].speed * float64(s.cfg.MeanService))
	}
	return c
}

// arrive routes a new request from its origin; a crashed origin's clients
// go elsewhere, so its arrivals are dropped.
func (s *sim) arrive(id int) {
	if s.nodes[s.reqs[id].origin].dead {
		return
	}
	if s.cfg.Policy == Probe {
		r := &s.reqs[id]
		if !s.takePulls(r.origin, len(r.probes)) {
			// Over the pull budget: route at once on held loads, as
			// gossip.Sample does.
			s.reuse(r)
			s.probed(id, false)
			return
		}
		for k := range r.probes {
			j := s.randomPeer(r.origin)
			// The probe reports the load half a round trip from now; a
			// crashed node or a lost message gives no answer.
			r.probes[k] = report{node: int32(j), at: -1}
			if !s.draining {
				s.msgs += 2
			}
			if s.nodes[j].dead || s.rng.Float64() < s.cfg.LossRate {
				continue
			}
			if s.cfg.PullCarriesLoad {
				s.remember(j, s.load(r.origin))
			}
			r.probes[k] = s.load(j)
		}
		s.schedule(s.now+2*s.delay(), evProbed, id, 0, nil)
		return
	}
	s.route(id)
}

// takePulls spends n pulls of node i's budget (a token bucket with a
// burst of one second's worth).
func (s *sim) takePulls(i, n int) bool {
	rate := s.cfg.PullRate
	if rate < 0 {
		return true
	}
	nd := &s.nodes[i]
	if !nd.pullInit {
		nd.pullInit = true
		nd.pullTokens = rate
	} else {
		nd.pullTokens = min(nd.pullTokens+(s.now-nd.pullAt)*rate, rate)
	}
	nd.pullAt = s.now
	if nd.pullTokens < float64(n) {
		return false
	}
	nd.pullTokens -= float64(n)
	return true
}

func (s *sim) randomPeer(self int) int {
	j := s.rng.IntN(len(s.nodes) - 1)
	if j >= self {
		j++
	}
	return j
}

// route picks a target for request id with the real router.
func (s *sim) route(id int) {
	r := &s.reqs[id]
	o := r.origin
	cands := []router.Candidate{s.localCandidate(o)}
	for range 2 {
		if c, ok := s.sample2(o); ok {
			cands = append(cands, c)
		}
	}
	s.pick(id, cands)
}

func (s *sim) probed(id int, fresh bool) {
	r := &s.reqs[id]
	cands := []router.Candidate{s.localCandidate(r.origin)}
	for _, p := range r.probes {
		if p.at >= 0 {
			cands = append(cands, s.candidate(p))
			if fresh {
				s.remember(r.origin, p)
			}
		}
	}
	s.pick(id, cands)
}

func (s *sim) localCandidate(o int) router.Candidate {
	c := s.candidate(s.load(o))
	c.Local = true
	return c
}

func (s *sim) pick(id int, cands []router.Candidate) {
	r := &s.reqs[id]
	c, _, err := s.nodes[r.origin].router.PickAt(cands, r.exclude, s.clock(s.now))
	if err != nil {
		// Every candidate excluded: serve locally.
		s.enqueue(r.origin, id)
		return
	}
	t, _ := strconv.Atoi(c.Node[1:])
	if t == r.origin {
		s.enqueue(t, id)
		return
	}
	s.schedule(s.now+s.delay(), evDeliver, id, t, nil)
}

// sample2 returns one remote candidate as the origin's router sees it.
func (s *sim) sample2(o int) (router.Candidate, bool) {
	switch s.cfg.Policy {
	case Omniscient:
		for range 8 {
			j := s.randomPeer(o)
			if !s.nodes[j].dead {
				return s.candidate(s.load(j)), true
			}
		}
	case AllToAll:
		j := s.randomPeer(o)
		if r, ok := s.heardPush(o, j); ok {
			return s.candidate(r), true
		}
	case Epidemic:
		v := s.nodes[o].view
		if len(v) == 0 {
			return router.Candidate{}, false
		}
		for range 8 {
			if e := v[s.rng.IntN(len(v))]; s.now-e.at <= s.maxAge() {
				return s.candidate(e), true
			}
		}
	}
	return router.Candidate{}, false
}

// heardPush is what o holds of j's all-to-all pushes: the newest push that
// has arrived (each has its own delay) and was not lost. Pushes are
// modelled lazily, on lookup, because at 10,000 nodes sending each one
// would be billions of events.
func (s *sim) heardPush(o, j int) (report, bool) {
	p := s.nodes[j].pushes
	for k := len(p) - 1; k >= 0; k-- {
		h := mix(uint64(o)<<32|uint64(j), math.Float64bits(p[k].at)^s.cfg.Seed)
		d := s.cfg.NetDelay.Seconds() - math.Log(1-float64(h>>11)/(1<<53))*s.cfg.NetJitter.Seconds()
		lost := float64(mix(h, 7)>>11)/(1<<53) < s.cfg.LossRate
		if p[k].at+d <= s.now && !lost {
			return p[k], true
		}
	}
	return report{}, false
}

// mix is splitmix64 over two words: a per-(receiver, push) random number
// that does not depend on when it is looked up.
func mix(a, b uint64) uint64 {
	z := a*0x9e3779b97f4a7c15 ^ b
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (s *sim) deliver(id, t int) {
	if s.nodes[t].dead {
		s.failOver(id, t)
		return
	}
	s.enqueue(t, id)
}

// failOver retries a request that reached a crashed node once the
// connection error is seen, excluding that node.
func (s *sim) failOver(id, t int) {
	r := &s.reqs[id]
	if r.exclude == nil {
		r.exclude = map[string]bool{}
	}
	r.exclude[s.nodes[t].name] = true
	s.retries++
	s.schedule(s.now+s.cfg.DetectFail.Seconds(), evRetry, id, 0, nil)
}

func (s *sim) enqueue(i, id int) {
	n := &s.nodes[i]
	if n.running < s.cfg.Slots {
		s.start(i, id)
	} else {
		n.queue = append(n.queue, id)
	}
	s.changed(i)
}

func (s *sim) start(i, id int) {
	n := &s.nodes[i]
	n.running++
	mu := math.Log(s.cfg.MeanService.Seconds()) - s.cfg.ServiceSigma*s.cfg.ServiceSigma/2
	d := math.Exp(mu+s.cfg.ServiceSigma*s.work.NormFloat64()) * n.speed
	s.schedule(s.now+d, evDone, i, id, nil)
}

func (s *sim) done(i, id int) {
	n := &s.nodes[i]
	if n.dead {
		return
	}
	n.running--
	r := &s.reqs[id]
	if r.arrived >= s.cfg.Warmup.Seconds() {
		back := 0.0
		if i != r.origin {
			back = s.delay()
		}
		s.lat = append(s.lat, s.now+back-r.arrived)
	}
	if len(n.queue) > 0 {
		next := n.queue[0]
		n.queue = n.queue[1:]
		s.start(i, next)
	}
	s.changed(i)
}

func (s *sim) crash(i int) {
	n := &s.nodes[i]
	n.dead = true
	// Requests it held fail; their origins see it after DetectFail. Running
	// ones are found from the event queue lazily: done() ignores them, so
	// count them here by re-routing what is queued and the running slots'
	// requests through a scan.
	for _, id := range n.queue {
		s.failOver(id, i)
	}
	n.queue = nil
	for _, e := range s.q {
		if e.kind == evDone && e.a == i {
			s.failOver(e.b, i)
		}
	}
	n.running = 0
}

// changed is called on every load change of node i.
func (s *sim) changed(i int) {
	if s.cfg.Policy != AllToAll {
		return
	}
	n := &s.nodes[i]
	if n.pushDue {
		return
	}
	if due := n.lastPush + s.cfg.MinPush.Seconds(); due > s.now {
		n.pushDue = true
		s.schedule(due, evPush, i, 0, nil)
		return
	}
	s.recordPush(i)
}

// pushDue handles a coalesced push on change, or the periodic refresh,
// which only sends if nothing went out for Refresh (as gossip's pushLoop).
func (s *sim) pushDue(i int, refresh bool) {
	n := &s.nodes[i]
	if !refresh {
		n.pushDue = false
		s.recordPush(i)
		return
	}
	if n.dead {
		return
	}
	if s.now-n.lastPush >= s.cfg.Refresh.Seconds()*0.999 {
		s.recordPush(i)
	}
	s.schedule(n.lastPush+s.cfg.Refresh.Seconds(), evPush, i, 1, nil)
}

// recordPush sends node i's load to every live peer (counted, delivered
// lazily by heardPush).
func (s *sim) recordPush(i int) {
	n := &s.nodes[i]
	if n.dead {
		return
	}
	if len(n.pushes) == pushHist {
		copy(n.pushes, n.pushes[1:])
		n.pushes = n.pushes[:pushHist-1]
	}
	n.pushes = append(n.pushes, s.load(i))
	n.lastPush = s.now
	if !s.draining {
		s.msgs += int64(len(s.nodes) - 1)
	}
}

// gossip is one epidemic round of node i.
func (s *sim) gossip(i int) {
	n := &s.nodes[i]
	if n.dead {
		return
	}
	for range s.cfg.Fanout {
		j := s.randomPeer(i)
		s.msgs++
		if s.rng.Float64() < s.cfg.LossRate {
			continue
		}
		m := s.newMessage()
		m.entries = append(m.entries, s.load(i))
		m.entries = s.freshest(n, m.entries, s.cfg.Piggyback)
		s.schedule(s.now+s.delay(), evMsg, 0, j, m)
	}
	s.schedule(s.now+s.cfg.Interval.Seconds(), evGossip, i, 0, nil)
}

// freshest appends up to k of the loads n heard most recently that are
// still fresh.
func (s *sim) freshest(n *node, out []report, k int) []report {
	v := n.view
	for c := 0; c < len(v) && k > 0; c++ {
		e := v[(n.viewPos-1-c+2*len(v))%len(v)]
		if s.now-e.at > s.maxAge() {
			continue
		}
		out = append(out, e)
		k--
	}
	return out
}

func (s *sim) receive(j int, m *message) {
	n := &s.nodes[j]
	if !n.dead {
		for _, e := range m.entries {
			if int(e.node) == j || s.now-e.at > s.maxAge() {
				continue
			}
			e.received = s.now
			if len(n.view) < s.cfg.ViewSize {
				n.view = append(n.view, e)
				n.viewPos = len(n.view) % s.cfg.ViewSize
				continue
			}
			n.view[n.viewPos] = e
			n.viewPos = (n.viewPos + 1) % len(n.view)
		}
	}
	m.entries = m.entries[:0]
	s.free = append(s.free, m)
}

func (s *sim) maxAge() float64 {
	if s.cfg.MaxAge > 0 {
		return s.cfg.MaxAge.Seconds()
	}
	return s.cfg.StaleAfter.Seconds()
}

func (s *sim) newMessage() *message {
	if k := len(s.free); k > 0 {
		m := s.free[k-1]
		s.free = s.free[:k-1]
		return m
	}
	return &message{entries: make([]report, 0, s.cfg.Piggyback+1)}
}

// sample adds one imbalance sample: the coefficient of variation of work
// per slot over live nodes.
func (s *sim) sample() {
	var sum, sq float64
	live := 0
	for i := range s.nodes {
		n := &s.nodes[i]
		if n.dead {
			continue
		}
		w := float64(len(n.queue)+n.running) / float64(s.cfg.Slots)
		sum += w
		sq += w * w
		live++
	}
	if live > 0 && sum > 0 {
		mean := sum / float64(live)
		s.cvSum += math.Sqrt(max(sq/float64(live)-mean*mean, 0)) / mean
		s.cvN++
	}
	s.schedule(s.now+0.1, evSample, 0, 0, nil)
}
