package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/scheduler/internal/upcall"
)

// Errors that mark a call that failed on the upstream's side. Both make
// IsBackendFailure report true; neither carries an HTTP status, because the
// upstream never gave a usable one.
var (
	// ErrUnavailable marks a call that got no complete answer: the
	// connection was refused or reset, or the upstream did not answer (or,
	// when streaming, went silent) within the configured timeout.
	ErrUnavailable = errors.New("unavailable")
	// ErrBadResponse marks an answer that does not follow the OpenAI
	// protocol: malformed JSON, a missing or duplicate choice, a stream that
	// ends before [DONE], or a body over the size bound.
	ErrBadResponse = errors.New("bad response")
)

// UpstreamError is an error the upstream answered with: a non-2xx status,
// or an error object inside a 200 body or an event stream. It implements
// HTTPStatus so the node answers the client with the same class of status
// (4xx as is, 429 with Retry-After, 5xx as 502).
type UpstreamError struct {
	// Status is the upstream's HTTP status. For an error reported inside a
	// stream or a 200 body it is the error's numeric code when that is an
	// HTTP error status, else 500.
	Status int
	// Message is the upstream's error message, cut to a bounded length.
	Message string
	// Type is the upstream's error type (e.g. "invalid_request_error"),
	// empty when it gave none.
	Type string
	// RetryAfter is how long the upstream asked clients to wait (its
	// Retry-After header, bounded to upcall.MaxRetryAfter); zero when it said
	// nothing usable.
	RetryAfter time.Duration
}

// Error says what the upstream answered. It deliberately leaves out the
// upstream's address: the node shows this message to clients.
func (e *UpstreamError) Error() string {
	if e.Type != "" {
		return fmt.Sprintf("upstream answered %d (%s): %s", e.Status, e.Type, e.Message)
	}
	return fmt.Sprintf("upstream answered %d: %s", e.Status, e.Message)
}

// HTTPStatus is the upstream's status; it satisfies httpapi.UpstreamStatus.
func (e *UpstreamError) HTTPStatus() int { return e.Status }

// RetryAfterHint is the upstream's Retry-After, so a node passes on an
// overloaded server's own estimate rather than a guess of its own.
func (e *UpstreamError) RetryAfterHint() time.Duration { return e.RetryAfter }

// IsBackendFailure reports whether err is the upstream's fault and should
// count against its circuit breaker: a network error, a timeout, a malformed
// answer, or a 5xx status. A 4xx is the request's fault and does not count;
// nor does a task's own cancellation or deadline, which this package returns
// as the bare context error.
func IsBackendFailure(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrBadResponse) {
		return true
	}
	var ue *UpstreamError
	return errors.As(err, &ue) && ue.Status >= 500
}

// maxErrorMessage bounds UpstreamError.Message; an upstream can put a whole
// HTML page in an error body.
const maxErrorMessage = 1024

// decodeError reads an upstream error body. Servers disagree on its shape,
// so it accepts OpenAI's and llama.cpp's {"error": {"message", "type",
// "code"}}, vLLM's older top-level {"message", "type", "code"}, TGI's
// {"error": "text", "error_type": "..."}, and anything else as plain text.
// status 0 means the error came inside a stream or 200 body: the status is
// then taken from the error's code, or 500.
func decodeError(status int, body []byte) *UpstreamError {
	e := &UpstreamError{Status: status}
	var env struct {
		Error     json.RawMessage `json:"error"`
		ErrorType string          `json:"error_type"`
		Message   string          `json:"message"`
		Type      string          `json:"type"`
		Code      json.RawMessage `json:"code"`
	}
	var code json.RawMessage
	if json.Unmarshal(body, &env) == nil {
		var obj struct {
			Message string          `json:"message"`
			Type    string          `json:"type"`
			Code    json.RawMessage `json:"code"`
		}
		var text string
		switch {
		case json.Unmarshal(env.Error, &obj) == nil && (obj.Message != "" || obj.Type != ""):
			e.Message, e.Type, code = obj.Message, obj.Type, obj.Code
		case json.Unmarshal(env.Error, &text) == nil && text != "":
			e.Message, e.Type = text, env.ErrorType
		case env.Message != "":
			e.Message, e.Type, code = env.Message, env.Type, env.Code
		}
	}
	if e.Status == 0 {
		e.Status = statusFromCode(code)
	}
	if e.Message == "" {
		e.Message = strings.TrimSpace(string(body))
	}
	if e.Message == "" {
		e.Message = http.StatusText(e.Status)
	}
	if e.Message == "" {
		e.Message = "status " + strconv.Itoa(e.Status)
	}
	e.Message = upcall.Clip(e.Message, maxErrorMessage)
	e.Type = upcall.Clip(e.Type, 128)
	return e
}

// statusFromCode reads an error code (a number or a numeric string) as an
// HTTP error status; anything else is 500, the upstream's failure.
func statusFromCode(code json.RawMessage) int {
	var n int
	if json.Unmarshal(code, &n) != nil {
		var s string
		if json.Unmarshal(code, &s) != nil {
			return http.StatusInternalServerError
		}
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			return http.StatusInternalServerError
		}
	}
	if n < 400 || n > 599 {
		return http.StatusInternalServerError
	}
	return n
}
