package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// countingServer is an httptest server that counts the connections it
// accepts.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func directClient(t *testing.T, srvURL string) (*http.Client, *directTransport) {
	t.Helper()
	addr, host, ok := directAddr(Config{URL: srvURL})
	require.True(t, ok, "a plain-HTTP URL goes direct")
	tr := newDirectTransport(directConfig{addr: addr, host: host, maxIdle: 4, other: &http.Transport{}})
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}, tr
}

func post(ctx context.Context, c *http.Client, url, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func (t *directTransport) idleCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.idle)
}

// The request arrives as sent, answers of every framing (length, chunked,
// after an informational 103) are read whole, and one connection carries
// them all.
func TestDirectTransportReusesOneConnection(t *testing.T) {
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/hints" {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		}
		if r.URL.Path == "/chunked" {
			fmt.Fprintf(w, "%s:", r.Header.Get("X-Test"))
			w.(http.Flusher).Flush() // no Content-Length: chunked
			fmt.Fprintf(w, "%s", b)
			return
		}
		fmt.Fprintf(w, "%s:%s", r.Header.Get("X-Test"), b)
	})
	c, tr := directClient(t, srv.URL)
	for i := range 20 {
		path := []string{"/plain", "/chunked", "/hints"}[i%3]
		req, err := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(fmt.Sprint("body", i)))
		require.NoError(t, err)
		req.Header.Set("X-Test", "h")
		resp, err := c.Do(req)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, fmt.Sprint("h:body", i), string(b), path)
	}
	require.EqualValues(t, 1, conns.Load())
	require.Equal(t, 1, tr.idleCount())
}

// A server that says Connection: close, or an answer left unread past what
// Close may drain, never leaves its connection in the pool, so the next
// request cannot read the previous one's bytes.
func TestDirectTransportDropsConnectionsItCannotReuse(t *testing.T) {
	big := strings.Repeat("x", 64<<10)
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/close":
			w.Header().Set("Connection", "close")
			fmt.Fprint(w, "bye")
		case "/big":
			fmt.Fprint(w, big)
		default:
			fmt.Fprint(w, "ok")
		}
	})
	c, tr := directClient(t, srv.URL)
	ctx := context.Background()

	_, body, err := post(ctx, c, srv.URL+"/close", "")
	require.NoError(t, err)
	require.Equal(t, "bye", body)
	require.Zero(t, tr.idleCount(), "Connection: close is honoured")

	req, err := http.NewRequest(http.MethodPost, srv.URL+"/big", nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	_, err = io.ReadFull(resp.Body, make([]byte, 10))
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Zero(t, tr.idleCount(), "a body left mostly unread closes its connection")

	// A JSON decoder stops at the end of its value: the few bytes after it
	// are read on Close and the connection is kept.
	req, err = http.NewRequest(http.MethodPost, srv.URL+"/", nil)
	require.NoError(t, err)
	resp, err = c.Do(req)
	require.NoError(t, err)
	_, err = io.ReadFull(resp.Body, make([]byte, 1))
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, 1, tr.idleCount(), "a short rest is drained")

	_, body, err = post(ctx, c, srv.URL+"/", "")
	require.NoError(t, err)
	require.Equal(t, "ok", body)
	require.EqualValues(t, 3, conns.Load())
	require.Equal(t, 1, tr.idleCount())
}

// A kept-alive connection the server closed while it sat in the pool fails
// on its next use; the request goes again on a fresh one and succeeds.
func TestDirectTransportRetriesAConnectionTheServerClosed(t *testing.T) {
	var served atomic.Int64
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %s", b)
	})
	c, tr := directClient(t, srv.URL)
	ctx := context.Background()
	_, _, err := post(ctx, c, srv.URL, "one")
	require.NoError(t, err)
	require.Equal(t, 1, tr.idleCount())
	srv.CloseClientConnections()

	_, body, err := post(ctx, c, srv.URL, "two")
	require.NoError(t, err)
	require.Equal(t, "got two", body, "the retry sends the whole body again")
	require.EqualValues(t, 2, conns.Load())
	require.EqualValues(t, 2, served.Load(), "the server saw each request once")
}

// The request's context bounds the exchange: its deadline ends a slow
// answer as a timeout, a cancel ends it at once, and neither connection
// is reused.
func TestDirectTransportHonoursTheContext(t *testing.T) {
	release := make(chan struct{})
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(release) })
	c, tr := directClient(t, srv.URL)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, _, err := post(ctx, c, srv.URL, "slow")
	require.Error(t, err)
	// Classified from the error alone: a transport that ignored the
	// deadline and failed some other way would not read as a timeout.
	require.Equal(t, errTimeout, classify(context.Background(), err), "got %v", err)

	ctx, cancel = context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := post(ctx, c, srv.URL, "cancelled")
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		require.True(t, errors.Is(err, context.Canceled), "got %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("a cancelled request did not return")
	}
	require.Zero(t, tr.idleCount())
}

// Only the run's own URL goes direct: a redirect to another server is
// followed through the other transport, to that server.
func TestDirectTransportSendsOtherHostsElsewhere(t *testing.T) {
	other, otherConns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "other")
	})
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/moved", http.StatusTemporaryRedirect)
	})
	c, tr := directClient(t, srv.URL)
	_, body, err := post(context.Background(), c, srv.URL, "x")
	require.NoError(t, err)
	require.Equal(t, "other", body)
	require.EqualValues(t, 1, conns.Load())
	require.EqualValues(t, 1, otherConns.Load())
	require.Equal(t, 1, tr.idleCount(), "the other server's connection is not in the direct pool")
}

// Streams, TLS and proxied URLs stay on net/http's transport.
func TestDirectAddrOnlyForPlainHTTP(t *testing.T) {
	addr, host, ok := directAddr(Config{URL: "http://localhost"})
	require.True(t, ok)
	require.Equal(t, "localhost:80", addr)
	require.Equal(t, "localhost", host)
	addr, host, ok = directAddr(Config{URL: "http://[::1]:8080/base"})
	require.True(t, ok)
	require.Equal(t, "[::1]:8080", addr)
	require.Equal(t, "[::1]:8080", host)
	for _, cfg := range []Config{
		{URL: "https://localhost:8443"},
		{URL: "http://localhost:8080", Stream: true},
		{URL: "localhost:8080"},
	} {
		_, _, ok := directAddr(cfg)
		require.False(t, ok, "%+v", cfg)
	}
}

// BenchmarkTransport sends chat-sized requests through each transport to
// the same in-process server, so the difference between the two is the
// client's cost per request.
func BenchmarkTransport(b *testing.B) {
	answer := `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}` + "\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, answer)
	}))
	defer srv.Close()
	cfg, err := Config{URL: srv.URL, Model: "m", Requests: 1}.withDefaults()
	if err != nil {
		b.Fatal(err)
	}
	addr, host, _ := directAddr(cfg)
	netHTTP := &http.Transport{MaxIdleConnsPerHost: 64}
	defer netHTTP.CloseIdleConnections()
	direct := newDirectTransport(directConfig{addr: addr, host: host, maxIdle: 64, other: netHTTP})
	defer direct.CloseIdleConnections()
	for _, tc := range []struct {
		name string
		rt   http.RoundTripper
	}{{"net-http", netHTTP}, {"direct", direct}} {
		b.Run(tc.name, func(b *testing.B) {
			r := &runner{cfg: cfg, client: &http.Client{Transport: tc.rt}, picker: newPicker(nil, 0, 1)}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					p, _ := r.picker.next()
					var res result
					r.send(context.Background(), &res, p)
					if !res.ok() {
						b.Errorf("request failed: %s", res.errKind)
						return
					}
				}
			})
		})
	}
}
