package kserve

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
)

// translator is the ResponseWriter the pipeline answers a /v1/infer
// request into. It turns that answer into the v2 call's: a whole JSON
// answer or error at the end (finish), and an event stream event by event
// as the pipeline flushes it, so tokens reach the client as they come.
type translator struct {
	dst      http.ResponseWriter
	r        *http.Request
	header   http.Header
	model    string
	req      *TextRequest
	endpoint string

	status int
	stream bool
	buf    bytes.Buffer
}

func (t *translator) Header() http.Header { return t.header }

func (t *translator) WriteHeader(code int) {
	if t.status != 0 {
		return
	}
	t.status = code
	if code != http.StatusOK || !strings.HasPrefix(t.header.Get("Content-Type"), "text/event-stream") {
		return
	}
	t.stream = true
	t.copyHeader()
	h := t.dst.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	t.dst.WriteHeader(http.StatusOK)
}

func (t *translator) Write(p []byte) (int, error) {
	if t.status == 0 {
		t.WriteHeader(http.StatusOK)
	}
	t.buf.Write(p)
	if t.stream {
		if err := t.pump(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush passes the events written so far on to the client.
func (t *translator) Flush() {
	if !t.stream {
		return
	}
	_ = t.pump()
	_ = http.NewResponseController(t.dst).Flush()
}

// Unwrap lets http.ResponseController reach the client's connection for
// what the translator does not do itself (write deadlines).
func (t *translator) Unwrap() http.ResponseWriter { return t.dst }

// copyHeader passes the pipeline's headers (request ID, route, cache,
// rate-limit, Retry-After) to the client, but not those of the /v1 body.
func (t *translator) copyHeader() {
	dst := t.dst.Header()
	for k, vs := range t.header {
		switch k {
		case "Content-Type", "Content-Length", "Content-Encoding", "Vary", "Trailer":
			continue
		}
		dst[k] = vs
	}
}

// v1Answer is the /v1/infer answer, and every event of its stream.
type v1Answer struct {
	ID      string `json:"id"`
	Outputs []struct {
		Text         string `json:"text"`
		FinishReason string `json:"finish_reason"`
	} `json:"outputs"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
	// Stream events.
	Text         *string         `json:"text"`
	FinishReason *string         `json:"finish_reason"`
	Error        json.RawMessage `json:"error"`
}

// errorMessage reads the message of an OpenAI-shaped error.
func errorMessage(raw json.RawMessage, fallback string) string {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Message != "" {
		return e.Message
	}
	var s string
	if json.Unmarshal(raw, &s) == nil && s != "" {
		return s
	}
	return fallback
}

// pump translates the complete events in the buffer.
func (t *translator) pump() error {
	for {
		data := t.buf.Bytes()
		i := bytes.Index(data, []byte("\n\n"))
		if i < 0 {
			return nil
		}
		ev := string(data[:i])
		t.buf.Next(i + 2)
		payload, ok := strings.CutPrefix(ev, "data: ")
		if !ok || payload == "[DONE]" {
			continue
		}
		var a v1Answer
		if err := json.Unmarshal([]byte(payload), &a); err != nil {
			continue
		}
		var out any
		switch {
		case len(a.Error) > 0:
			out = errorBody{Error: errorMessage(a.Error, "the request failed")}
		case a.Text != nil && (*a.Text != "" || a.FinishReason != nil):
			g := generateAnswer{ModelName: t.model, ModelVersion: Version, ID: t.req.ID, TextOutput: *a.Text}
			if a.FinishReason != nil {
				g.FinishReason = *a.FinishReason
			}
			out = g
		default:
			// The usage event: the stream's end is its last text event.
			continue
		}
		b, _ := json.Marshal(out)
		if _, err := t.dst.Write(append(append([]byte("data: "), b...), '\n', '\n')); err != nil {
			return err
		}
	}
}

type generateAnswer struct {
	ModelName    string `json:"model_name"`
	ModelVersion string `json:"model_version"`
	ID           string `json:"id,omitempty"`
	TextOutput   string `json:"text_output"`
	FinishReason string `json:"finish_reason,omitempty"`
}

type outputTensor struct {
	Name     string   `json:"name"`
	Datatype string   `json:"datatype"`
	Shape    []int64  `json:"shape"`
	Data     []string `json:"data"`
}

type inferAnswer struct {
	ModelName    string         `json:"model_name"`
	ModelVersion string         `json:"model_version"`
	ID           string         `json:"id"`
	Parameters   map[string]any `json:"parameters,omitempty"`
	Outputs      []outputTensor `json:"outputs"`
}

// finish writes the v2 answer of a call that was not streamed.
func (t *translator) finish() {
	if t.stream {
		_ = t.pump()
		return
	}
	t.copyHeader()
	status := t.status
	if status == 0 {
		writeError(t.dst, t.r, &Error{Status: http.StatusInternalServerError, Message: "the node gave no answer"})
		return
	}
	var a v1Answer
	if err := json.Unmarshal(t.buf.Bytes(), &a); err != nil {
		writeError(t.dst, t.r, &Error{Status: http.StatusBadGateway, Message: "the node's answer was not JSON"})
		return
	}
	if status != http.StatusOK || len(a.Error) > 0 {
		if status == http.StatusOK {
			status = http.StatusInternalServerError
		}
		writeJSON(t.dst, t.r, status, errorBody{Error: errorMessage(a.Error, http.StatusText(status))})
		return
	}
	if len(a.Outputs) != len(t.req.Prompts) {
		writeError(t.dst, t.r, &Error{Status: http.StatusBadGateway, Message: "the node answered a different number of outputs"})
		return
	}
	if t.endpoint != EndpointInfer {
		writeJSON(t.dst, t.r, http.StatusOK, generateAnswer{ModelName: t.model, ModelVersion: Version, ID: t.req.ID,
			TextOutput: a.Outputs[0].Text, FinishReason: a.Outputs[0].FinishReason})
		return
	}
	texts := make([]string, len(a.Outputs))
	for i, o := range a.Outputs {
		texts[i] = o.Text
	}
	id := t.req.ID
	if id == "" {
		id = a.ID
	}
	ans := inferAnswer{ModelName: t.model, ModelVersion: Version, ID: id,
		Outputs: []outputTensor{{Name: TextOutput, Datatype: "BYTES", Shape: t.req.Shape, Data: texts}}}
	if a.Usage != nil {
		ans.Parameters = map[string]any{"prompt_tokens": a.Usage.PromptTokens, "completion_tokens": a.Usage.CompletionTokens, "total_tokens": a.Usage.TotalTokens}
	}
	writeJSON(t.dst, t.r, http.StatusOK, ans)
}
