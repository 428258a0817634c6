// Package bench drives load at a shoal node (or any OpenAI-compatible
// server) and measures what LLM-serving users compare: requests per second,
// latency percentiles from an HDR histogram, time to first token and
// inter-token latency for streams, errors by status, cache hit ratio and the
// share each node served. It measures; printing and plotting are separate
// functions so other tools (shoal tune) can reuse Run.
package bench

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Endpoint selects the API a run exercises.
type Endpoint string

// The endpoints bench can drive.
const (
	EndpointChat        Endpoint = "chat"
	EndpointCompletions Endpoint = "completions"
	EndpointInfer       Endpoint = "infer"
)

// path is the endpoint's URL path on a node.
func (e Endpoint) path() string {
	switch e {
	case EndpointCompletions:
		return "/v1/completions"
	case EndpointInfer:
		return "/v1/infer"
	default:
		return "/v1/chat/completions"
	}
}

// ParseEndpoint accepts chat, completions or infer (and the API paths).
func ParseEndpoint(s string) (Endpoint, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "chat", "/v1/chat/completions", "chat/completions":
		return EndpointChat, nil
	case "completions", "completion", "/v1/completions":
		return EndpointCompletions, nil
	case "infer", "/v1/infer":
		return EndpointInfer, nil
	}
	return "", fmt.Errorf("%w: %q (want chat, completions or infer)", ErrBadEndpoint, s)
}

// Errors reported by Run and the parsers.
var (
	// ErrBadConfig wraps every invalid Config field.
	ErrBadConfig = errors.New("invalid bench config")
	// ErrBadEndpoint is an endpoint name bench does not know.
	ErrBadEndpoint = errors.New("unknown endpoint")
	// ErrNoModel means the server listed no model and none was named.
	ErrNoModel = errors.New("no model to benchmark")
	// ErrBadPrompts is a malformed prompts file.
	ErrBadPrompts = errors.New("invalid prompts file")
)

// Config describes one benchmark run. Zero values take the documented
// defaults.
type Config struct {
	// URL is the node's base URL, e.g. http://localhost:8080.
	URL string
	// Model to request; empty means the first model of GET /v1/models.
	Model string
	// Endpoint is the API to drive (default chat).
	Endpoint Endpoint
	// Stream asks for server-sent events and measures TTFT and
	// inter-token latency.
	Stream bool

	// Requests is the number of measured requests. With Duration also set,
	// the run stops at whichever comes first. Default 1000 when Duration
	// is zero.
	Requests int
	// Duration bounds the measured phase.
	Duration time.Duration
	// Concurrency is the number of closed-loop workers, each sending its
	// next request when the previous one ends (default 10). Ignored when
	// Rate is set.
	Concurrency int
	// Rate, when positive, switches to an open loop: requests are sent at
	// this constant rate per second whatever the server does, and latency
	// is measured from each request's scheduled send time, so a slow
	// server cannot hide its latency by slowing the client down
	// (coordinated omission).
	Rate float64
	// MaxInFlight caps outstanding open-loop requests; a send due while
	// the cap is reached is dropped and counted. Default: enough for Rate
	// requests lasting the full Timeout, between 100 and 10000.
	MaxInFlight int
	// Warmup runs the same load for this long before measuring and
	// discards its results (connections, caches and batch sizes settle).
	Warmup time.Duration

	// Prompts to send, in order; empty means generated prompts that are
	// unique to this run.
	Prompts []Prompt
	// RepeatRatio is the share (0..1) of requests that reuse a prompt sent
	// earlier in the run, to exercise the response cache.
	RepeatRatio float64
	// MaxTokens per request (default 16).
	MaxTokens int
	// Seed makes prompt selection repeatable (0 picks one).
	Seed uint64

	// APIKey is sent as a bearer token.
	APIKey string
	// Headers are added to every request.
	Headers http.Header
	// Timeout bounds each request, streaming included (default 30s).
	Timeout time.Duration

	// Client overrides the pooled HTTP client bench builds.
	Client *http.Client
	// Progress, when set, is called about four times a second while the
	// run goes on, and once at the end of each phase.
	Progress func(Progress)
	// Logger receives debug logs; nil discards them.
	Logger *slog.Logger
}

// Progress is a snapshot of a running benchmark.
type Progress struct {
	// Warmup is true during the warm-up phase.
	Warmup bool
	// Done counts finished (and dropped) requests of the phase.
	Done int64
	// Errors counts failed and dropped ones.
	Errors int64
	// Total is the phase's request budget (0 when only Duration bounds it).
	Total int64
	// Elapsed is time since the phase started.
	Elapsed time.Duration
	// Duration is the phase's time budget (0 when unbounded).
	Duration time.Duration
}

// Mode names the load model of a run.
func (c Config) Mode() string {
	if c.Rate > 0 {
		return "open"
	}
	return "closed"
}

// withDefaults validates c and fills the defaults.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrBadConfig, fmt.Sprintf(format, args...)))
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("url must be http(s)://host[:port], got %q", c.URL)
	}
	c.URL = strings.TrimRight(c.URL, "/")
	if c.Endpoint == "" {
		c.Endpoint = EndpointChat
	}
	if _, err := ParseEndpoint(string(c.Endpoint)); err != nil {
		bad("endpoint: %v", err)
	}
	if c.Requests < 0 {
		bad("requests must not be negative, got %d", c.Requests)
	}
	if c.Duration < 0 || c.Warmup < 0 {
		bad("duration and warmup must not be negative")
	}
	if c.Requests == 0 && c.Duration == 0 {
		c.Requests = 1000
	}
	if c.Concurrency < 0 || c.Concurrency > 100_000 {
		bad("concurrency must be between 1 and 100000, got %d", c.Concurrency)
	}
	if c.Concurrency == 0 {
		c.Concurrency = 10
	}
	if c.Rate < 0 || c.Rate > 1_000_000 {
		bad("rate must be between 0 and 1000000 per second, got %g", c.Rate)
	}
	if c.RepeatRatio < 0 || c.RepeatRatio > 1 {
		bad("repeat-ratio must be between 0 and 1, got %g", c.RepeatRatio)
	}
	if c.MaxTokens < 0 {
		bad("max-tokens must not be negative, got %d", c.MaxTokens)
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = 16
	}
	if c.Timeout < 0 {
		bad("timeout must not be negative, got %s", c.Timeout)
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.MaxInFlight < 0 {
		bad("max-in-flight must not be negative, got %d", c.MaxInFlight)
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = min(max(100, int(c.Rate*c.Timeout.Seconds())), 10_000)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, errors.Join(errs...)
}

// conns is how many keep-alive connections the pool should hold.
func (c Config) conns() int {
	if c.Rate > 0 {
		return min(c.MaxInFlight, 1000)
	}
	return c.Concurrency
}
