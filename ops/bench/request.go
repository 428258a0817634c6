package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/shoal-dev/shoal/internal/sse"
)

// Error kinds that have no HTTP status; HTTP failures are keyed by their
// status code ("429", "503").
const (
	errTimeout     = "timeout"
	errConnection  = "connection"
	errStream      = "stream_error"
	errBadResponse = "bad_response"
	errDropped     = "dropped"
)

// result is one request's outcome.
type result struct {
	scheduled time.Time // when the load model wanted it sent
	sent      time.Time // when it was actually handed to the transport
	end       time.Time
	status    int    // HTTP status; 0 when none arrived
	errKind   string // empty on success
	ttft      time.Duration
	itl       []time.Duration
	outTokens int
	cache     string
	node      string
	// refusal describes a 429: which limit, and when to retry.
	refusal *Refusal
}

func (r *result) ok() bool { return r.errKind == "" }

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// Request bodies as typed structs: the load generator builds one per request, and marshalling
// a struct costs a fraction of a map[string]any (the map was 9% of the client's CPU in an
// open loop).
type (
	streamOptions struct {
		IncludeUsage bool `json:"include_usage"`
	}
	chatBody struct {
		Model         string         `json:"model"`
		Messages      []Message      `json:"messages"`
		MaxTokens     int            `json:"max_tokens"`
		Temperature   float64        `json:"temperature"`
		Stream        bool           `json:"stream"`
		StreamOptions *streamOptions `json:"stream_options,omitempty"`
	}
	completionBody struct {
		Model         string         `json:"model"`
		Prompt        string         `json:"prompt"`
		MaxTokens     int            `json:"max_tokens"`
		Temperature   float64        `json:"temperature"`
		Stream        bool           `json:"stream"`
		StreamOptions *streamOptions `json:"stream_options,omitempty"`
	}
	inferBody struct {
		Model      string      `json:"model"`
		Input      string      `json:"input"`
		Stream     bool        `json:"stream"`
		Parameters inferParams `json:"parameters"`
	}
	inferParams struct {
		MaxTokens   int     `json:"max_tokens"`
		Temperature float64 `json:"temperature"`
	}
)

// body builds the JSON request for endpoint e.
func body(e Endpoint, model string, p Prompt, maxTokens int, stream bool) ([]byte, error) {
	var opts *streamOptions
	if stream {
		opts = &streamOptions{IncludeUsage: true}
	}
	switch e {
	case EndpointChat:
		return json.Marshal(chatBody{Model: model, Messages: p.messages(), MaxTokens: maxTokens, Stream: stream, StreamOptions: opts})
	case EndpointCompletions:
		return json.Marshal(completionBody{Model: model, Prompt: p.text(), MaxTokens: maxTokens, Stream: stream, StreamOptions: opts})
	default:
		return json.Marshal(inferBody{Model: model, Input: p.text(), Stream: stream, Parameters: inferParams{MaxTokens: maxTokens}})
	}
}

// send performs one request and classifies its outcome. The caller sets
// scheduled; send fills the rest.
func (r *runner) send(ctx context.Context, res *result, p Prompt) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	defer func() { res.end = time.Now() }()
	b, err := body(r.cfg.Endpoint, r.cfg.Model, p, r.cfg.MaxTokens, r.cfg.Stream)
	if err != nil {
		res.errKind = errBadResponse
		return
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.cfg.URL+r.cfg.Endpoint.path(), bytes.NewReader(b))
	if err != nil {
		res.errKind = errConnection
		return
	}
	for k, vs := range r.cfg.Headers {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Content-Type", "application/json")
	if r.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+r.cfg.APIKey)
	}
	if r.cfg.Stream {
		req.Header.Set("Accept", "text/event-stream")
	}
	res.sent = time.Now()
	resp, err := r.client.Do(req)
	if err != nil {
		res.errKind = classify(ctx, err)
		return
	}
	defer resp.Body.Close()
	res.status = resp.StatusCode
	res.cache = resp.Header.Get("X-Shoal-Cache")
	res.node = resp.Header.Get("X-Shoal-Node")
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		res.errKind = strconv.Itoa(resp.StatusCode)
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode == http.StatusTooManyRequests {
			res.refusal = readRefusal(resp.Header, data)
		}
		return
	}
	if r.cfg.Stream {
		r.readStream(ctx, resp.Body, res)
		return
	}
	var out struct {
		Usage *usage `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		res.errKind = classifyRead(ctx, err)
		return
	}
	if out.Usage != nil {
		res.outTokens = out.Usage.CompletionTokens
	}
}

// Refusal is what a server said when it answered 429: the error's code and
// message (shoal names the limit: "client", "endpoint", "key", "tenant", or
// a full queue) and the rate-limit headers.
type Refusal struct {
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// Limit is X-RateLimit-Limit; RetryAfter is Retry-After, as sent.
	Limit      string `json:"limit,omitempty"`
	RetryAfter string `json:"retry_after,omitempty"`
}

func readRefusal(h http.Header, body []byte) *Refusal {
	var e struct {
		Error struct {
			Message string `json:"message"`
			Code    any    `json:"code"`
		} `json:"error"`
	}
	r := &Refusal{Limit: h.Get("X-RateLimit-Limit"), RetryAfter: h.Get("Retry-After")}
	if json.Unmarshal(body, &e) == nil {
		r.Message = e.Error.Message
		if e.Error.Code != nil {
			r.Code = fmt.Sprint(e.Error.Code)
		}
	}
	return r
}

// streamChunk covers the chunk shapes of all three endpoints.
type streamChunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		Text string `json:"text"`
	} `json:"choices"`
	Text  string          `json:"text"`
	Usage *usage          `json:"usage"`
	Error json.RawMessage `json:"error"`
}

// readStream consumes an SSE body, timing each chunk that carries text.
func (r *runner) readStream(ctx context.Context, body io.Reader, res *result) {
	var last time.Time
	chunks, usageTokens := 0, -1
	done := false
	err := readSSE(body, func(data []byte) (bool, error) {
		now := time.Now()
		if bytes.Equal(data, []byte("[DONE]")) {
			done = true
			return true, nil
		}
		var c streamChunk
		if err := json.Unmarshal(data, &c); err != nil {
			return true, fmt.Errorf("decode chunk: %w", err)
		}
		if len(c.Error) > 0 && !bytes.Equal(c.Error, []byte("null")) {
			return true, errStreamFailed
		}
		if c.Usage != nil {
			usageTokens = c.Usage.CompletionTokens
		}
		text := c.Text
		for _, ch := range c.Choices {
			text += ch.Delta.Content + ch.Text
		}
		if text == "" {
			return false, nil
		}
		chunks++
		if last.IsZero() {
			res.ttft = now.Sub(res.scheduled)
		} else {
			res.itl = append(res.itl, now.Sub(last))
		}
		last = now
		return false, nil
	})
	switch {
	case errors.Is(err, errStreamFailed):
		res.errKind = errStream
	case err != nil:
		res.errKind = classifyRead(ctx, err)
	case !done:
		// The server closed the stream without [DONE]: the answer may be
		// cut short, so it does not count as a success.
		res.errKind = errStream
	}
	res.outTokens = chunks
	if usageTokens >= 0 {
		res.outTokens = usageTokens
	}
}

var errStreamFailed = errors.New("server sent an error event")

// maxSSELine bounds one SSE line and event.
const maxSSELine = 1 << 20

// readSSE calls fn with the data of each server-sent event (package sse's
// framing) until fn asks to stop, the body ends, or a line is malformed.
func readSSE(body io.Reader, fn func(data []byte) (stop bool, err error)) error {
	rd := sse.NewReader(body, maxSSELine)
	for {
		ev, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if stop, err := fn(ev.Data); err != nil || stop {
			return err
		}
	}
}

// classify names a transport error.
func classify(ctx context.Context, err error) string {
	var ne net.Error
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return errTimeout
	}
	return errConnection
}

// classifyRead names an error while reading a body.
func classifyRead(ctx context.Context, err error) string {
	if ctx.Err() != nil {
		return errTimeout
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	if errors.As(err, &se) || errors.As(err, &te) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errBadResponse
	}
	return errConnection
}
