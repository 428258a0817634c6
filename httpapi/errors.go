package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/shoal-dev/shoal/scheduler"
)

// Error is an error with its HTTP answer, in OpenAI's error shape.
type Error struct {
	Status     int
	Type       string
	Code       string
	Param      string
	Message    string
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Message }

func badRequest(code, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: code, Message: msg}
}

func badParam(param, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "invalid_parameter", Param: param, Message: msg}
}

// errorBody is OpenAI's error envelope.
type errorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	} `json:"error"`
}

func (e *Error) body() errorBody {
	var b errorBody
	b.Error.Message, b.Error.Type, b.Error.Code = e.Message, e.Type, e.Code
	if e.Param != "" {
		p := e.Param
		b.Error.Param = &p
	}
	return b
}

// UpstreamStatus is implemented by backend errors that carry an HTTP status
// from an upstream server, so it reaches the client unchanged in meaning.
type UpstreamStatus interface {
	HTTPStatus() int
}

// retryAfterHinter is implemented by upstream errors that carry the
// upstream's own Retry-After; it replaces the node's one-second default.
type retryAfterHinter interface {
	RetryAfterHint() time.Duration
}

// toError maps every error of the request path to its HTTP answer, in
// one place.
func toError(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	var us UpstreamStatus
	switch {
	case errors.Is(err, scheduler.ErrUnknownModel):
		return &Error{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "model_not_found", Param: "model", Message: err.Error()}
	case errors.Is(err, scheduler.ErrPromptTooLong):
		return &Error{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "context_length_exceeded", Message: err.Error()}
	case errors.Is(err, scheduler.ErrQueueFull):
		return &Error{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "queue_full", Message: "the model's queue is full; retry later", RetryAfter: time.Second}
	case errors.Is(err, scheduler.ErrDraining):
		return &Error{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "draining", Message: "the node is shutting down; retry on another node", RetryAfter: time.Second}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusGatewayTimeout, Type: "timeout_error", Code: "deadline_exceeded", Message: "the request deadline passed before it finished"}
	case errors.Is(err, context.Canceled):
		// The client went away; the status is for logs and metrics only.
		return &Error{Status: 499, Type: "client_closed_request", Code: "canceled", Message: "the client closed the request"}
	case errors.As(err, &us):
		st := us.HTTPStatus()
		e := &Error{Status: st, Type: "upstream_error", Code: "upstream_" + strconv.Itoa(st), Message: err.Error()}
		switch {
		case st == http.StatusTooManyRequests:
			e.RetryAfter = time.Second
		case st >= 500:
			e.Status, e.RetryAfter = http.StatusBadGateway, time.Second
		}
		var hint retryAfterHinter
		if e.RetryAfter > 0 && errors.As(err, &hint) && hint.RetryAfterHint() > 0 {
			e.RetryAfter = hint.RetryAfterHint()
		}
		return e
	}
	// What remains is a backend failure (an unreachable or broken upstream,
	// a backend that dropped the task): the details stay in the node's log.
	return &Error{Status: http.StatusBadGateway, Type: "server_error", Code: "backend_error", Message: "the model backend failed; retry shortly", RetryAfter: time.Second}
}

func writeError(w http.ResponseWriter, r *http.Request, err *Error) {
	if err.RetryAfter > 0 {
		secs := int((err.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	status := err.Status
	if status == 499 {
		status = http.StatusBadRequest
	}
	writeJSON(w, r, status, err.body())
}

// errBreakerOpen answers a request for a model whose breaker on this node
// is open (or half-open with its probe in flight); the routing node retries
// it elsewhere.
var errBreakerOpen = errors.New("circuit breaker open")

// IsBackendFailure says whether err counts against the backend: client
// cancellations, deadlines, full queues and upstream 4xx do not.
func IsBackendFailure(err error) bool {
	if err == nil {
		return false
	}
	var ae *Error
	var us UpstreamStatus
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, scheduler.ErrQueueFull), errors.Is(err, scheduler.ErrDraining),
		errors.Is(err, scheduler.ErrUnknownModel), errors.Is(err, errBreakerOpen), errors.As(err, &ae),
		errors.Is(err, scheduler.ErrPromptTooLong):
		return false
	case errors.As(err, &us):
		return us.HTTPStatus() >= 500
	}
	return true
}
