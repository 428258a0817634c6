package peer

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// ErrUnreachable wraps a call that got no answer (dial, handshake or
// connection failure): the request may or may not have reached the peer.
var ErrUnreachable = errors.New("peer unreachable")

// ClientConfig configures a Client.
type ClientConfig struct {
	// Self is this node's name, sent in HeaderFrom.
	Self string
	// TLS is the cluster's mutual-TLS configuration, nil without a key; it
	// must match the servers'.
	TLS *tls.Config
	// DialTimeout bounds connecting and the TLS handshake (default 2s).
	DialTimeout time.Duration
	// Attempts is how many times a call that got no answer is tried
	// (default 3). Every peer call must be safe to repeat.
	Attempts int
}

// Client calls other nodes' peer planes over pooled connections.
type Client struct {
	cfg    ClientConfig
	pooled *http.Client
	fresh  *http.Client
}

// NewClient returns a client.
func NewClient(cfg ClientConfig) *Client {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.Attempts == 0 {
		cfg.Attempts = 3
	}
	c := &Client{cfg: cfg}
	c.pooled = &http.Client{Transport: &http.Transport{
		DialContext:         c.Dial,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
	// A pooled connection may be dead without knowing it (the peer
	// restarted); the last attempt dials afresh.
	c.fresh = &http.Client{Transport: &http.Transport{DialContext: c.Dial, DisableKeepAlives: true, DisableCompression: true}}
	return c
}

// Dial opens a connection to a peer's Raft port and claims it for the
// peer plane: the header byte, then, with a key, the mutual-TLS handshake.
// Other HTTP clients (the request forwarder) pool connections made by it.
func (c *Client) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	conn, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte{Header}); err != nil {
		_ = conn.Close()
		return nil, err
	}
	if c.cfg.TLS != nil {
		tc := tls.Client(conn, c.cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("peer tls handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// Response is a peer's answer.
type Response struct {
	Status int
	Body   []byte
}

// Decode unmarshals the body.
func (r *Response) Decode(v any) error { return json.Unmarshal(r.Body, v) }

// ErrorMessage is the body's error message and code, if it is an ErrorBody.
func (r *Response) ErrorMessage() (msg, code string) {
	var e ErrorBody
	if json.Unmarshal(r.Body, &e) == nil && e.Error.Message != "" {
		return e.Error.Message, e.Error.Code
	}
	return fmt.Sprintf("peer answered %d", r.Status), ""
}

// Post sends body to path on the peer whose Raft address is addr. A call
// that got no answer is retried, the last time on a new connection; the
// error then wraps ErrUnreachable.
func (c *Client) Post(ctx context.Context, addr, path string, body []byte) (*Response, error) {
	var last error
	for attempt := 1; attempt <= c.cfg.Attempts; attempt++ {
		hc := c.pooled
		if attempt == c.cfg.Attempts {
			hc = c.fresh
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("peer call %s%s: %w", addr, path, err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(HeaderFrom, c.cfg.Self)
		resp, err := hc.Do(req)
		if err != nil {
			last = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		resp.Body.Close()
		if err != nil {
			last = err
			continue
		}
		return &Response{Status: resp.StatusCode, Body: data}, nil
	}
	return nil, fmt.Errorf("peer call %s%s: %w: %w", addr, path, ErrUnreachable, last)
}

// Close releases pooled connections.
func (c *Client) Close() {
	c.pooled.CloseIdleConnections()
}
