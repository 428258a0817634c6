package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/peer"
)

// Headers the forwarder uses between nodes.
const (
	// HeaderForwarded marks a request that another node already routed; the
	// receiver serves it locally and never forwards it again.
	HeaderForwarded = "X-Shoal-Forwarded-By"
	// HeaderForwardAuth proves HeaderForwarded came from a cluster member:
	// an HMAC under the cluster secret over the sender, target, method,
	// path, body digest, time and a one-time ID (see Sign).
	HeaderForwardAuth = "X-Shoal-Forward-Auth"
	// HeaderRoute tells the client how its request was routed.
	HeaderRoute = "X-Shoal-Route"
	// HeaderUsage carries the tokens a forwarded request's answer used
	// (prompt plus completion) from the node that ran it back to the node
	// that admitted it, which settles token-per-minute limits with it: a
	// header on a plain answer, a trailer on a stream. Clients never see it.
	HeaderUsage = "X-Shoal-Usage"
)

// ErrRetryable wraps a forward failure that happened before any byte
// reached the client, so the request may go to another node.
var ErrRetryable = errors.New("forward failed before responding")

// ForwarderConfig configures a Forwarder.
type ForwarderConfig struct {
	// Self is this node's name, sent in HeaderForwarded.
	Self string
	// Secret returns the key that signs forwarded requests
	// (HeaderForwardAuth), so a client cannot claim a request was already
	// routed to skip rate limits. Nil: not known yet (a cluster that has not
	// agreed on one); requests go unsigned and the receiver admits them as
	// new ones.
	Secret func() []byte
	// DialTimeout caps connecting to a peer (default 1s); a hop whose
	// header timeout is shorter connects within a quarter of it.
	DialTimeout time.Duration
	// MinHeaderTimeout is the floor of a hop's response-header timeout
	// (default 1s); see headerTimeout.
	MinHeaderTimeout time.Duration
	// MaxConnsPerHost bounds pooled connections per peer (default 256).
	MaxConnsPerHost int
	// PeerDial, when set, dials a peer's peer plane (peer.Client.Dial:
	// mutual TLS under the cluster key, or a member-checked plain
	// connection): requests to a target with a PeerAddr go there, unsigned,
	// since the plane authenticates the caller, and never touch the
	// target's client HTTP port. Connections are pooled, so a hop costs a
	// handshake only when the pool has no idle one.
	PeerDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Forwarder sends requests to peer nodes over pooled keep-alive HTTP/1.1
// connections (on the peer plane when it has a PeerDial) and streams their
// answers back.
type Forwarder struct {
	self   string
	secret func() []byte
	client *http.Client
	// peer carries forwards over the peer plane; nil without PeerDial.
	peer      *http.Client
	dialMax   time.Duration
	minHeader time.Duration
	// bufs holds the buffers answers are copied through, so a forward
	// does not allocate 32 KiB.
	bufs sync.Pool

	mu sync.Mutex
	// service is the smoothed time to a peer's response header per model
	// and kind (stream or not), from this node's successful forwards.
	service map[serviceKey]time.Duration
}

type serviceKey struct {
	model  string
	stream bool
}

// maxServiceKeys bounds Forwarder.service; model names come from the
// cluster's candidates, never from a client alone.
const maxServiceKeys = 4096

// hopKey carries a hop's dial timeout to the transport's dialer.
type hopKey struct{}

// NewForwarder returns a forwarder.
func NewForwarder(cfg ForwarderConfig) *Forwarder {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = time.Second
	}
	if cfg.MinHeaderTimeout == 0 {
		cfg.MinHeaderTimeout = time.Second
	}
	if cfg.Secret == nil {
		cfg.Secret = func() []byte { return nil }
	}
	if cfg.MaxConnsPerHost == 0 {
		cfg.MaxConnsPerHost = 256
	}
	// A hop's dial timeout bounds connecting and, on the peer plane, the
	// TLS handshake.
	hopDial := func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := cfg.DialTimeout
			if hop, ok := ctx.Value(hopKey{}).(time.Duration); ok && hop > 0 {
				d = min(d, hop)
			}
			ctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			return dial(ctx, network, addr)
		}
	}
	transport := func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
		return &http.Client{Transport: &http.Transport{
			DialContext:           hopDial(dial),
			MaxIdleConns:          cfg.MaxConnsPerHost * 4,
			MaxIdleConnsPerHost:   cfg.MaxConnsPerHost,
			MaxConnsPerHost:       cfg.MaxConnsPerHost,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 0, // per hop, from the target's expected service time (headerTimeout)
			DisableCompression:    true,
		}}
	}
	f := &Forwarder{self: cfg.Self, secret: cfg.Secret, client: transport((&net.Dialer{KeepAlive: 30 * time.Second}).DialContext),
		dialMax: cfg.DialTimeout, minHeader: cfg.MinHeaderTimeout, service: map[serviceKey]time.Duration{}}
	f.bufs.New = func() any {
		b := make([]byte, 32<<10)
		return &b
	}
	if cfg.PeerDial != nil {
		f.peer = transport(cfg.PeerDial)
	}
	return f
}

// headerTimeout bounds the wait for target's response header, so a peer
// that accepts and hangs gives the request back in time for its one retry
// elsewhere. From the target's expected service time (this node's smoothed
// time to header for the model, scaled by the target's queue per slot):
// four times that, at least MinHeaderTimeout. With no history yet, half
// the time left, so the retry still fits. Never past the deadline.
func (f *Forwarder) headerTimeout(ctx context.Context, target Candidate, stream bool) time.Duration {
	left := time.Duration(1<<63 - 1)
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	f.mu.Lock()
	svc, known := f.service[serviceKey{target.Model, stream}]
	f.mu.Unlock()
	var d time.Duration
	if known {
		queued := float64(target.QueueDepth+target.Running) / float64(max(target.Slots, 1))
		d = max(time.Duration(4*float64(svc)*(1+queued)), f.minHeader)
	} else {
		d = max(left/2, f.minHeader)
	}
	return min(d, left)
}

// observe folds one time-to-header into the model's smoothed service time.
func (f *Forwarder) observe(target Candidate, stream bool, took time.Duration) {
	k := serviceKey{target.Model, stream}
	f.mu.Lock()
	defer f.mu.Unlock()
	prev, ok := f.service[k]
	switch {
	case ok:
		f.service[k] = prev + (took-prev)/5
	case len(f.service) < maxServiceKeys:
		f.service[k] = took
	}
}

// passHeaders are copied from the client's request to the peer.
var passHeaders = []string{"Content-Type", "Accept", "Accept-Encoding", "Authorization", "X-Request-ID",
	"X-Shoal-Priority", "Cache-Control", "X-Forwarded-For"}

// hopHeaders are never copied back to the client.
var hopHeaders = map[string]bool{"Connection": true, "Keep-Alive": true, "Transfer-Encoding": true, "Te": true, "Trailer": true, "Upgrade": true, "Content-Length": true}

// Reply is what the forwarding node learns of a peer's answer besides the
// bytes it copied to the client.
type Reply struct {
	// Tokens is the peer's HeaderUsage, or -1 when it sent none (an answer
	// cut short).
	Tokens int
}

// Forward sends body to target's path and copies the answer to w. If it
// fails before writing anything to w, the error wraps ErrRetryable and the
// caller may try another node. A 502 or 503 from the peer counts as such a
// failure: the peer could not run the request.
func (f *Forwarder) Forward(ctx context.Context, w http.ResponseWriter, r *http.Request, body []byte, target Candidate, route string) (Reply, error) {
	if f.peer != nil && target.PeerAddr != "" {
		reply, err := f.forward(ctx, w, r, body, target, route, true)
		if !errors.Is(err, errNoPeerRoute) {
			return reply, err
		}
		// A node of an older version serves no requests on its plane
		// (rolling upgrade): its HTTP port takes them, signed.
	}
	return f.forward(ctx, w, r, body, target, route, false)
}

// errNoPeerRoute: the target's peer plane has no inference endpoints.
var errNoPeerRoute = errors.New("peer plane serves no forwarded requests")

func (f *Forwarder) forward(ctx context.Context, w http.ResponseWriter, r *http.Request, body []byte, target Candidate, route string, viaPeer bool) (Reply, error) {
	reply := Reply{Tokens: -1}
	client, addr := f.client, target.HTTPAddr
	if viaPeer {
		client, addr = f.peer, target.PeerAddr
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+addr+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return reply, fmt.Errorf("forward to %s: %w", target.Node, err)
	}
	for _, h := range passHeaders {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	if id := w.Header().Get("X-Request-ID"); id != "" {
		req.Header.Set("X-Request-ID", id)
	}
	if dl, ok := ctx.Deadline(); ok {
		req.Header.Set("X-Shoal-Timeout", time.Until(dl).Round(time.Millisecond).String())
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil && req.Header.Get("X-Forwarded-For") == "" {
		req.Header.Set("X-Forwarded-For", host)
	}
	switch secret := f.secret(); {
	case viaPeer:
		// The peer plane authenticated this node already (TLS under the
		// key, or a member's address); the target trusts the call for it.
		req.Header.Set(peer.HeaderFrom, f.self)
		req.Header.Set(HeaderForwarded, f.self)
	case len(secret) > 0:
		Sign(secret, req.Header, Forwarded{From: f.self, To: target.Node, Method: r.Method, URI: r.URL.RequestURI(),
			Body: body, RequestID: req.Header.Get("X-Request-ID")})
	default:
		req.Header.Set(HeaderForwarded, f.self)
	}
	stream := streamRequested(body)
	hop := f.headerTimeout(ctx, target, stream)
	hopCtx, cancelHop := context.WithCancelCause(context.WithValue(ctx, hopKey{}, max(hop/4, 100*time.Millisecond)))
	defer cancelHop(nil)
	req = req.WithContext(hopCtx)
	errHop := fmt.Errorf("no response header within %s", hop.Round(time.Millisecond))
	timer := time.AfterFunc(hop, func() { cancelHop(errHop) })
	sent := time.Now()
	resp, err := client.Do(req)
	if !timer.Stop() && err == nil {
		// The timer fired as the header arrived: the body is cancelled.
		resp.Body.Close()
		err = errHop
	}
	if err != nil {
		if ctx.Err() != nil {
			return reply, fmt.Errorf("forward to %s: %w", target.Node, ctx.Err())
		}
		if cause := context.Cause(hopCtx); cause != nil {
			err = cause
		}
		return reply, fmt.Errorf("forward to %s: %w: %w", target.Node, ErrRetryable, err)
	}
	defer resp.Body.Close()
	if viaPeer && resp.StatusCode == http.StatusNotFound && resp.Header.Get("X-Shoal-Node") == "" {
		// Every answer of the node's request path names the node; a 404
		// without it is the plane's own: no such endpoint there.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return reply, fmt.Errorf("forward to %s: %w", target.Node, errNoPeerRoute)
	}
	if resp.StatusCode < 500 {
		f.observe(target, stream, time.Since(sent))
	}
	if resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusServiceUnavailable ||
		(viaPeer && resp.Header.Get(peer.HeaderRefused) != "") {
		// A peer plane that does not know this node yet (gossip still
		// spreading the join) refuses it: another node may not.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return reply, fmt.Errorf("forward to %s: %w: status %d", target.Node, ErrRetryable, resp.StatusCode)
	}
	dst := w.Header()
	for k, vs := range resp.Header {
		if hopHeaders[k] || k == HeaderUsage {
			continue
		}
		dst[k] = vs
	}
	dst.Set(HeaderRoute, route)
	w.WriteHeader(resp.StatusCode)
	stream = strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	rc := http.NewResponseController(w)
	bp := f.bufs.Get().(*[]byte)
	defer f.bufs.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return reply, fmt.Errorf("forward to %s: client write: %w", target.Node, werr)
			}
			if stream {
				_ = rc.Flush()
			}
		}
		if rerr == io.EOF {
			// Trailers are read once the body is; a plain answer has it
			// in its header.
			v := resp.Trailer.Get(HeaderUsage)
			if v == "" {
				v = resp.Header.Get(HeaderUsage)
			}
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				reply.Tokens = n
			}
			return reply, nil
		}
		if rerr != nil {
			return reply, fmt.Errorf("forward to %s: read answer: %w", target.Node, rerr)
		}
	}
}

// streamRequested reports whether a request body asks for a stream, whose
// header comes at the first token rather than with the whole answer.
func streamRequested(body []byte) bool {
	i := bytes.Index(body, []byte(`"stream"`))
	if i < 0 {
		return false
	}
	rest := bytes.TrimLeft(body[i+len(`"stream"`):], " \t\r\n:")
	return bytes.HasPrefix(rest, []byte("true"))
}

// Close releases pooled connections.
func (f *Forwarder) Close() {
	f.client.CloseIdleConnections()
	if f.peer != nil {
		f.peer.CloseIdleConnections()
	}
}
