package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
)

// goHeadersTooLarge is what net/http writes itself, before any handler
// runs, when a request's header exceeds http.Server.MaxHeaderBytes.
var goHeadersTooLarge = []byte("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large")

// Listener wraps ln so that net/http's own plain-text answer to request
// headers over maxHeaderBytes (the server's MaxHeaderBytes) goes out as an
// OpenAI-style JSON 431, like every other answer of the node.
func Listener(ln net.Listener, node string, maxHeaderBytes int) net.Listener {
	var e Error
	e.Status, e.Type, e.Code = http.StatusRequestHeaderFieldsTooLarge, "invalid_request_error", "headers_too_large"
	e.Message = fmt.Sprintf("request headers are larger than the node's limit of %d bytes", maxHeaderBytes)
	body, _ := json.Marshal(e.body())
	body = append(body, '\n')
	return &listener{Listener: ln, resp: func() []byte {
		// The header was never parsed, so the client's X-Request-ID is
		// unknown: the answer carries a fresh one, as for any request
		// without its own.
		return fmt.Appendf(nil, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"+
			"Connection: close\r\nX-Request-ID: %s\r\nX-Shoal-Node: %s\r\n\r\n%s", len(body), newRequestID(), node, body)
	}}
}

type listener struct {
	net.Listener
	resp func() []byte
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, resp: l.resp}, nil
}

type conn struct {
	net.Conn
	resp func() []byte
}

func (c *conn) Write(p []byte) (int, error) {
	if bytes.Equal(p, goHeadersTooLarge) {
		if _, err := c.Conn.Write(c.resp()); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// CloseWrite lets net/http half-close the connection after its error
// answer, as it does on the bare TCP connection.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
