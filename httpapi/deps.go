package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/respcache"
	"github.com/shoal-dev/shoal/router"
	"github.com/shoal-dev/shoal/scheduler"
)

// The API's collaborators. Each is called concurrently from request
// goroutines; none may keep the *http.Request or ResponseWriter past the
// call.

// Limiter admits requests entering the cluster here.
type Limiter interface {
	// Admit applies authentication and rate limits, sets the X-RateLimit
	// headers on w, records its token charge in req.Charged, and returns
	// the error to answer with (an *Error chooses the answer), if any.
	Admit(ctx context.Context, w http.ResponseWriter, r *http.Request, req *Request) error
	// SettleTokens corrects req's up-front charge to the tokens its answer
	// used (0 when nothing was delivered).
	SettleTokens(ctx context.Context, req *Request, used int)
}

// Cache is the response cache (*respcache.Cache).
type Cache interface {
	// Key returns in's key and the stamp it was computed under.
	Key(in respcache.KeyInput) (key string, stamp uint64, ok bool)
	// KeyStamp changes whenever Key may give another key for an input of
	// model it was given before (a purge, a setting).
	KeyStamp(model string) uint64
	Lookup(ctx context.Context, model, key string) ([]scheduler.Result, bool)
	Store(model, key string, results []scheduler.Result)
	Coalesce(ctx context.Context, model, key string, store bool, compute respcache.Compute) ([]scheduler.Result, error)
}

// Scoper partitions the response cache by who asks.
type Scoper interface {
	// CacheScope names the partition r's answer is cached in ("" for the
	// whole cluster), so a hit never tells one client what a client of
	// another partition asked. req carries the API key's hash when the
	// Limiter has computed it.
	CacheScope(r *http.Request, req *Request) string
}

// Cluster is what the API reads of the cluster's membership.
type Cluster interface {
	// Candidates are the nodes that may serve model now.
	Candidates(model string) []router.Candidate
	// ServedAnywhere says whether any member serves model, healthy or not.
	ServedAnywhere(model string) bool
	// Models lists every model the cluster serves.
	Models() []string
	// TrustedForward says whether r, with this body, really comes from a
	// peer that routed it (a signature over method, path, body and time).
	TrustedForward(r *http.Request, body []byte) bool
}

// Picker chooses a node among candidates for a request, never one in
// exclude, and says why (*router.Router).
type Picker interface {
	Route(req router.Request, cands []router.Candidate, exclude map[string]bool) (router.Candidate, string, error)
}

// Prefixes records the prompt prefixes this node serves, so its load report
// can tell other routers (*router.PrefixIndex).
type Prefixes interface {
	Record(model string, hashes []uint64)
}

// Forwarder sends a request to a peer and copies its answer to w
// (*router.Forwarder).
type Forwarder interface {
	Forward(ctx context.Context, w http.ResponseWriter, r *http.Request, body []byte, target router.Candidate, route string) (router.Reply, error)
}

// Scheduler runs requests on this node's models (*scheduler.Scheduler).
type Scheduler interface {
	Submit(ctx context.Context, r *scheduler.Request) (*scheduler.Task, error)
}

// Runner is a Scheduler that can run a task on the caller's goroutine
// when it would start at once anyway (*scheduler.Scheduler): one hand-off
// less for a request that waits for its whole answer.
type Runner interface {
	Run(ctx context.Context, r *scheduler.Request) (*scheduler.Task, error)
}

// Breakers guard this node's backends (*breaker.Set).
type Breakers interface {
	// Admit says whether model may run here now; done gets the outcome.
	Admit(model string) (done func(error), ok bool)
}

// RetryBudget bounds retries to a share of requests (*breaker.RetryBudget).
type RetryBudget interface {
	Request()
	Take() bool
}

// Metrics observes the request path.
type Metrics interface {
	InFlight(delta int)
	ObserveRequest(model, endpoint string, status int, took time.Duration)
	ObserveTokens(model string, prompt, completion int, took time.Duration)
	Retry(reason string)
	RouteDecision(took time.Duration)
	Routed(node, how string)
	// RouteReason counts why a node was picked (least-expected, prefix,
	// local, retry, or the configured policy).
	RouteReason(reason string)
	ForwardError(node string)
}

// Config is the API's settings and collaborators.
type Config struct {
	// Node is this node's name, in answers and logs.
	Node string
	// MaxBodyBytes bounds a request body after decompression.
	MaxBodyBytes int64
	// RequestTimeout is the longest a request may take; X-Shoal-Timeout
	// may only shorten it.
	RequestTimeout time.Duration
	// CacheLookupTimeout bounds a cache lookup; a slow cache is a miss.
	// Zero leaves the bound to the Cache, for one that bounds its own
	// lookups (the node's: dcache gives every shared-cache get the same
	// lookup_timeout, and a local get does not wait), which saves a
	// context and its timer per lookup.
	CacheLookupTimeout time.Duration
	// CacheBound, with CacheLookupTimeout zero, is the longest the Cache
	// itself lets a lookup run. A request whose deadline comes sooner (a
	// short X-Shoal-Timeout) has its lookup bounded by its deadline.
	CacheBound time.Duration

	Limiter   Limiter
	Cache     Cache
	Scoper    Scoper
	Cluster   Cluster
	Picker    Picker
	Prefixes  Prefixes
	Forwarder Forwarder
	Scheduler Scheduler
	Breakers  Breakers
	Retries   RetryBudget
	Metrics   Metrics
	Logger    *slog.Logger
}
