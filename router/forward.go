package router

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Headers the forwarder uses between nodes.
const (
	// HeaderForwarded marks a request that another node already routed; the
	// receiver serves it locally and never forwards it again.
	HeaderForwarded = "X-Shoal-Forwarded-By"
	// HeaderForwardAuth proves HeaderForwarded came from a cluster member:
	// an HMAC of the sender and request ID under the cluster secret.
	HeaderForwardAuth = "X-Shoal-Forward-Auth"
	// HeaderRoute tells the client how its request was routed.
	HeaderRoute = "X-Shoal-Route"
	// HeaderUsage carries the tokens a forwarded request's answer used
	// (prompt plus completion) from the node that ran it back to the node
	// that admitted it, which settles token-per-minute limits with it: a
	// header on a plain answer, a trailer on a stream. Clients never see it.
	HeaderUsage = "X-Shoal-Usage"
)

// ForwardMAC is the HeaderForwardAuth value for a request forwarded by
// node with the given request ID.
func ForwardMAC(secret []byte, node, requestID string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(node))
	m.Write([]byte{0})
	m.Write([]byte(requestID))
	return hex.EncodeToString(m.Sum(nil))
}

// VerifyForward reports whether a request's forwarding headers were made by
// a node holding secret.
func VerifyForward(secret []byte, h http.Header) bool {
	node, mac := h.Get(HeaderForwarded), h.Get(HeaderForwardAuth)
	if node == "" || mac == "" {
		return false
	}
	want := ForwardMAC(secret, node, h.Get("X-Request-ID"))
	return hmac.Equal([]byte(mac), []byte(want))
}

// ErrRetryable wraps a forward failure that happened before any byte
// reached the client, so the request may go to another node.
var ErrRetryable = errors.New("forward failed before responding")

// ForwarderConfig configures a Forwarder.
type ForwarderConfig struct {
	// Self is this node's name, sent in HeaderForwarded.
	Self string
	// Secret signs forwarded requests (HeaderForwardAuth), so a client
	// cannot claim a request was already routed to skip rate limits.
	Secret []byte
	// DialTimeout bounds connecting to a peer (default 2s).
	DialTimeout time.Duration
	// MaxConnsPerHost bounds pooled connections per peer (default 256).
	MaxConnsPerHost int
}

// Forwarder sends requests to peer nodes over pooled keep-alive HTTP/1.1
// connections and streams their answers back.
type Forwarder struct {
	self   string
	secret []byte
	client *http.Client
}

// NewForwarder returns a forwarder.
func NewForwarder(cfg ForwarderConfig) *Forwarder {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.MaxConnsPerHost == 0 {
		cfg.MaxConnsPerHost = 256
	}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          cfg.MaxConnsPerHost * 4,
		MaxIdleConnsPerHost:   cfg.MaxConnsPerHost,
		MaxConnsPerHost:       cfg.MaxConnsPerHost,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // the request deadline bounds the wait; a long generation may send headers late
		DisableCompression:    true,
	}
	return &Forwarder{self: cfg.Self, secret: cfg.Secret, client: &http.Client{Transport: tr}}
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
	reply := Reply{Tokens: -1}
	url := "http://" + target.HTTPAddr + r.URL.RequestURI()
	req, err := http.NewRequestWithContext(ctx, r.Method, url, bytes.NewReader(body))
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
	req.Header.Set(HeaderForwarded, f.self)
	req.Header.Set(HeaderForwardAuth, ForwardMAC(f.secret, f.self, req.Header.Get("X-Request-ID")))
	resp, err := f.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return reply, fmt.Errorf("forward to %s: %w", target.Node, ctx.Err())
		}
		return reply, fmt.Errorf("forward to %s: %w: %w", target.Node, ErrRetryable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusServiceUnavailable {
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
	stream := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
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

// Close releases pooled connections.
func (f *Forwarder) Close() {
	f.client.CloseIdleConnections()
}
