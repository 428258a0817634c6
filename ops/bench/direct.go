package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// directTransport sends plain-HTTP/1.1 requests on the calling goroutine
// over a pool of kept-alive connections: the request is written and the
// response read with net/http's own wire code (Request.Write,
// ReadResponse), but without http.Transport's two goroutines per
// connection. Each request through http.Transport hands off to its write
// loop and back from its read loop, and on a box the load generator shares
// with the server it measures, the CPU those wake-ups take (about a fifth
// of the client's at 5,000 req/s) is taken from the server. Only a run
// that needs nothing more is sent this way (see directAddr): no TLS, no
// proxy, no streams.
type directTransport struct {
	addr   string
	host   string
	other  roundTripCloser
	dialer net.Dialer
	max    int // idle connections kept

	mu   sync.Mutex
	idle []*directConn // most recently used last
}

// directConfig is a directTransport's configuration.
type directConfig struct {
	// addr is dialled for requests to host, the URL's host as written.
	addr, host string
	// maxIdle bounds the connections kept between requests.
	maxIdle int
	// other carries every request for another scheme or host (a redirect
	// elsewhere): only the run's own URL goes direct.
	other roundTripCloser
}

type directConn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func newDirectTransport(cfg directConfig) *directTransport {
	return &directTransport{addr: cfg.addr, host: cfg.host, other: cfg.other, max: cfg.maxIdle,
		dialer: net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}}
}

// RoundTrip sends req and returns its response; the response's body hands
// the connection back to the pool once read to its end and closed.
func (t *directTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" || req.URL.Host != t.host {
		return t.other.RoundTrip(req)
	}
	ctx := req.Context()
	dc, reused, err := t.get(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := t.exchange(ctx, dc, req)
	if err != nil && reused && staleConn(err) && req.GetBody != nil && ctx.Err() == nil {
		// A kept-alive connection the server closed meanwhile fails on
		// first use, before any answer; one fresh connection is tried, as
		// http.Transport does.
		if body, gerr := req.GetBody(); gerr == nil {
			retry := *req
			retry.Body = body
			if dc, err = t.dial(ctx); err != nil {
				return nil, err
			}
			resp, err = t.exchange(ctx, dc, &retry)
		}
	}
	return resp, err
}

// staleConn reports whether err is how a connection the server had closed
// fails: the write or the first read finds it gone.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// exchange writes req on dc and reads the response header; the body is read
// by the caller through directBody.
func (t *directTransport) exchange(ctx context.Context, dc *directConn, req *http.Request) (*http.Response, error) {
	deadline, _ := ctx.Deadline() // zero: none
	if err := dc.c.SetDeadline(deadline); err != nil {
		dc.c.Close()
		return nil, err
	}
	// A context cancelled before its deadline ends the exchange too.
	stop := context.AfterFunc(ctx, func() { _ = dc.c.SetDeadline(time.Unix(1, 0)) })
	err := req.Write(dc.bw)
	if err == nil {
		err = dc.bw.Flush()
	}
	if err != nil {
		return nil, t.fail(ctx, dc, stop, err)
	}
	resp, err := http.ReadResponse(dc.br, req)
	// Informational answers (103 Early Hints, a 100 Continue nobody asked
	// for) come before the real one, as http.Transport reads them.
	for i := 0; err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols; i++ {
		if i == 5 {
			err = fmt.Errorf("more than %d informational answers", i)
			break
		}
		resp, err = http.ReadResponse(dc.br, req)
	}
	if err != nil {
		return nil, t.fail(ctx, dc, stop, err)
	}
	resp.Body = &directBody{t: t, dc: dc, body: resp.Body, stop: stop, keep: !resp.Close}
	return resp, nil
}

func (t *directTransport) fail(ctx context.Context, dc *directConn, stop func() bool, err error) error {
	stop()
	dc.c.Close()
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}

// get takes the most recently used idle connection, or dials one.
func (t *directTransport) get(ctx context.Context) (*directConn, bool, error) {
	t.mu.Lock()
	if n := len(t.idle); n > 0 {
		dc := t.idle[n-1]
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		t.mu.Unlock()
		return dc, true, nil
	}
	t.mu.Unlock()
	dc, err := t.dial(ctx)
	return dc, false, err
}

func (t *directTransport) dial(ctx context.Context) (*directConn, error) {
	c, err := t.dialer.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	return &directConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 4<<10)}, nil
}

func (t *directTransport) put(dc *directConn) {
	t.mu.Lock()
	if len(t.idle) < t.max {
		t.idle = append(t.idle, dc)
		dc = nil
	}
	t.mu.Unlock()
	if dc != nil {
		dc.c.Close()
	}
}

// CloseIdleConnections closes the pooled connections, and other's.
func (t *directTransport) CloseIdleConnections() {
	t.other.CloseIdleConnections()
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, dc := range idle {
		dc.c.Close()
	}
}

// directBody returns its connection to the pool when the body was read to
// its end and the server keeps the connection; otherwise it closes it, so
// no unread bytes are ever taken for the next response.
type directBody struct {
	t    *directTransport
	dc   *directConn
	body io.ReadCloser
	stop func() bool
	keep bool
	eof  bool
	done bool
}

func (b *directBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, errors.New("read on closed body")
	}
	n, err := b.body.Read(p)
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	return n, err
}

func (b *directBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	if !b.eof {
		// A JSON decoder stops at the end of its value, before the body
		// says EOF; what is left of a small body is read here, bounded by
		// the request's deadline, and a larger rest closes the connection.
		if _, err := io.CopyN(io.Discard, b.body, 4<<10); errors.Is(err, io.EOF) {
			b.eof = true
		}
	}
	// stop reports false when the context already ended the exchange and
	// moved the deadline: such a connection is not reused.
	if b.stop() && b.eof && b.keep && b.dc.br.Buffered() == 0 {
		b.t.put(b.dc)
		return nil
	}
	return b.dc.c.Close()
}
